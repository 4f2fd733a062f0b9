package ondemand

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/tasklauncher"
)

// Environment variables the start job sets for an on-demand runner. The
// runner library reads the same names.
const (
	EnvServerAddr     = "ODRKIT_SERVER_ADDR"
	EnvRunnerID       = "ODRKIT_RUNNER_ID"
	EnvRunnerToken    = "ODRKIT_RUNNER_TOKEN"
	EnvRunnerOnDemand = "ODRKIT_RUNNER_ONDEMAND"
)

// Labels put on every task's platform resource, so that resources can be
// found again by Lister.ListTasks.
const (
	LabelTask    = "odrkit.task"
	LabelRunner  = "odrkit.runner"
	LabelProfile = "odrkit.profile"
	LabelHost    = "odrkit.host"
)

// profile returns the named profile, or the default profile for "".
func (m *Manager) profile(name string) (*profile.Profile, error) {
	if m.cfg.Profiles == nil {
		return nil, fmt.Errorf("%w: the Manager has no profiles; set Config.Profiles, or submit with a Target for static runners", ErrUnknownProfile)
	}
	if name == "" {
		if p, ok := m.cfg.Profiles.Default(); ok {
			return p, nil
		}
		return nil, fmt.Errorf("%w: the job names no profile and no profile is the default; set JobSpec.Profile or mark a profile with default = true", ErrUnknownProfile)
	}
	if p, ok := m.cfg.Profiles.Get(name); ok {
		return p, nil
	}
	names := make([]string, 0)
	for _, p := range m.cfg.Profiles.All() {
		names = append(names, p.Name)
	}
	return nil, fmt.Errorf("%w: %q; known profiles: %s", ErrUnknownProfile, name, strings.Join(names, ", "))
}

func (m *Manager) startupTimeout(profileName string) time.Duration {
	if p, err := m.profile(profileName); err == nil && p.StartupTimeout > 0 {
		return p.StartupTimeout
	}
	return m.cfg.StartupTimeout
}

// launchTarget returns the target of the profile's start, watch and stop jobs.
func (m *Manager) launchTarget(p *profile.Profile) Target {
	if p.TargetRunner == nil {
		return Target{RunnerID: m.embeddedID}
	}
	return Target{RunnerID: p.TargetRunner.ID, Labels: maps.Clone(p.TargetRunner.Labels)}
}

// encodeProfileConfigs encodes each profile's plugin config as JSON, the
// form launch jobs carry it in.
func encodeProfileConfigs(profiles *profile.Set) (map[string]json.RawMessage, error) {
	configs := make(map[string]json.RawMessage)
	if profiles == nil {
		return configs, nil
	}
	for _, p := range profiles.All() {
		config, err := json.Marshal(p.Config)
		if err != nil {
			return nil, fmt.Errorf("profile %q: plugin config cannot be encoded as JSON for launcher runners: %w", p.Name, err)
		}
		configs[p.Name] = config
	}
	return configs, nil
}

// canWatch reports whether the profile's tasks get a watch job: always for
// a profile launched by a static runner, whose launcher the host cannot
// inspect, and for the embedded launcher runner only when the plugin
// implements tasklauncher.Watcher. Called with m.mu held.
func (m *Manager) canWatch(p *profile.Profile) bool {
	if p.TargetRunner != nil || m.launchExec == nil {
		return true
	}
	if known, ok := m.watchable[p.Name]; ok {
		return known
	}
	l, err := m.launchExec.launcher(p.Plugin, m.profileConfigs[p.Name])
	if err != nil {
		// Not cached: the next job tries to create the launcher again.
		return true
	}
	_, ok := l.(tasklauncher.Watcher)
	m.watchable[p.Name] = ok
	return ok
}

// addTask stages an on-demand job with the start, watch and stop jobs of
// the task that launches its runner.
func (m *Manager) addTask(c *change, spec JobSpec, p *profile.Profile) *Job {
	t := &Task{
		ID:        newID("task-"),
		RunnerID:  newID("odr-"),
		Profile:   p.Name,
		JobID:     spec.ID,
		State:     TaskPending,
		CreatedAt: c.now,
	}
	t.StartJobID = t.ID + "-start"
	if m.canWatch(p) {
		t.WatchJobID = t.ID + "-watch"
	}
	t.StopJobID = t.ID + "-stop"
	c.tasks[t.ID] = t
	launchTarget := m.launchTarget(p)

	common := func(id, kind string, role Role) *Job {
		return &Job{ID: id, Kind: kind, Role: role, Target: launchTarget, Profile: p.Name, TaskID: t.ID}
	}
	start := common(t.StartJobID, KindStartTask, RoleStart)
	start.DependsOn = spec.DependsOn
	c.addJob(start, fmt.Sprintf("launches runner %s for job %s on %s", t.RunnerID, spec.ID, launchTarget))

	job := c.addJob(&Job{
		ID: spec.ID, Kind: spec.Kind, Payload: spec.Payload, Role: RoleJob,
		Target:      Target{RunnerID: t.RunnerID},
		DependsOn:   []Dependency{{JobID: start.ID}},
		MaxDuration: spec.MaxDuration, Profile: p.Name, TaskID: t.ID,
	}, fmt.Sprintf("held for on-demand runner %s (profile %s)", t.RunnerID, p.Name))

	if t.WatchJobID != "" {
		watch := common(t.WatchJobID, KindWatchTask, RoleWatch)
		watch.DependsOn = []Dependency{{JobID: start.ID}}
		c.addJob(watch, "watches the task of runner "+t.RunnerID)
	}

	stop := common(t.StopJobID, KindStopTask, RoleStop)
	stop.DependsOn = []Dependency{{JobID: start.ID, AllowFailure: true}, {JobID: job.ID, AllowFailure: true}}
	c.addJob(stop, "stops the task of runner "+t.RunnerID)

	// A dependency that already failed fails the chain now.
	for _, d := range spec.DependsOn {
		if dj := m.jobs[d.JobID].job; dj.State.Terminal() && dj.State != StateSuccess && !d.AllowFailure {
			c.finish(start.ID, nil, dependencyError(start, dj))
			break
		}
	}
	return job
}

// assignmentPayload returns the payload a runner receives for a job. For
// start, watch and stop jobs it is built now, so the runner token is minted
// when the start job runs and is never stored.
func (m *Manager) assignmentPayload(c *change, j *Job) ([]byte, error) {
	if j.Role == RoleJob {
		return j.Payload, nil
	}
	t := c.task(j.TaskID)
	if t == nil {
		return nil, fmt.Errorf("task %s of job %s is missing", j.TaskID, j.ID)
	}
	p, err := m.profile(t.Profile)
	if err != nil {
		return nil, fmt.Errorf("profile of task %s: %w", t.ID, err)
	}
	lp := launchPayload{Plugin: p.Plugin, Config: m.profileConfigs[p.Name], RetryBackoff: m.cfg.RetryBackoff}
	switch j.Role {
	case RoleStart:
		info, err := m.launchInfo(c, t, p)
		if err != nil {
			return nil, err
		}
		lp.Info = info
		lp.Retries = p.LaunchRetries
		// An earlier attempt may have created the resource before the
		// host went away or lost the assignment.
		lp.Adopt = j.Attempt > 1
		if t.StartupDeadline.IsZero() {
			timeout := m.startupTimeout(p.Name)
			t.StartupDeadline = c.now.Add(timeout)
			main := c.job(t.JobID)
			c.event(main, EventLaunching, fmt.Sprintf("launching runner %s with profile %s; it has %s to connect", t.RunnerID, p.Name, timeout))
			c.then(func() {
				if e := m.jobs[t.JobID]; !e.job.State.Terminal() {
					m.setTimer(e, timerStartup, timeout, 0)
				}
			})
		}
	case RoleWatch:
		lp.State = t.LauncherState
	case RoleStop:
		lp.State = t.LauncherState
		lp.Retries = m.cfg.StopRetries
	}
	return json.Marshal(lp)
}

func (m *Manager) launchInfo(c *change, t *Task, p *profile.Profile) (*tasklauncher.LaunchInfo, error) {
	maxDuration := DefaultTokenJobDuration
	if main := c.job(t.JobID); main != nil && main.MaxDuration > 0 {
		maxDuration = main.MaxDuration
	}
	token, err := m.signer.sign(RunnerClaims{
		RunnerID: t.RunnerID,
		TaskID:   t.ID,
		OnDemand: true,
		Expires:  c.now.Add(m.startupTimeout(p.Name) + maxDuration),
	})
	if err != nil {
		return nil, err
	}
	env := map[string]string{EnvServerAddr: m.cfg.AdvertiseAddr}
	maps.Copy(env, m.cfg.RunnerEnv)
	maps.Copy(env, p.Env)
	if overrides := serverOverrides(p.Env); len(overrides) > 0 {
		// Allowed, for hosts behind a proxy, but logged, because the runner
		// then dials the address the profile sets. Values are not logged.
		m.logger.Info("profile env overrides the runner's server settings", "profile", p.Name, "task", t.ID, "keys", overrides)
	}
	env[EnvRunnerID] = t.RunnerID
	env[EnvRunnerToken] = token
	env[EnvRunnerOnDemand] = "1"
	image := p.OCIURL
	if image == "" {
		image = m.cfg.DefaultImage
	}
	return &tasklauncher.LaunchInfo{
		TaskID:   t.ID,
		RunnerID: t.RunnerID,
		Image:    image,
		Env:      env,
		Labels: map[string]string{
			LabelTask:    t.ID,
			LabelRunner:  t.RunnerID,
			LabelProfile: p.Name,
			LabelHost:    m.cfg.HostID,
		},
	}, nil
}

// serverOverrides returns the ODRKIT_SERVER_* keys of a profile's env.
func serverOverrides(env map[string]string) []string {
	var keys []string
	for k := range env {
		if strings.HasPrefix(strings.ToUpper(k), "ODRKIT_SERVER_") {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// IssueRunnerToken returns a token for a static runner with this ID and
// labels, valid for ttl.
func (m *Manager) IssueRunnerToken(runnerID string, labels map[string]string, ttl time.Duration) (string, error) {
	if runnerID == "" {
		return "", errors.New("issue runner token: runner ID is empty")
	}
	if ttl <= 0 {
		return "", fmt.Errorf("issue runner token for %s: lifetime %s is not positive", runnerID, ttl)
	}
	return m.signer.sign(RunnerClaims{RunnerID: runnerID, Labels: maps.Clone(labels), Expires: m.now().Add(ttl)})
}

// AuthenticateRunner verifies a runner token and returns its claims. The
// error wraps ErrInvalidToken (and ErrTokenRevoked for a revoked token) and
// never contains the token.
func (m *Manager) AuthenticateRunner(token string) (RunnerClaims, error) {
	claims, err := m.signer.verify(token)
	if err != nil {
		return claims, err
	}
	m.mu.Lock()
	revokedAt, revoked := m.revoked[claims.RunnerID]
	m.mu.Unlock()
	if revoked && !claims.IssuedAt.After(revokedAt) {
		return claims, fmt.Errorf("%w: the tokens of runner %s were revoked at %s", ErrTokenRevoked, claims.RunnerID, revokedAt.UTC().Format(time.RFC3339))
	}
	return claims, nil
}

// RevokeRunnerTokens makes every token issued for runnerID until now
// invalid, also across restarts: the revocation is stored. Streams already
// open are not closed. Tokens issued afterwards are valid.
func (m *Manager) RevokeRunnerTokens(ctx context.Context, runnerID string) error {
	if runnerID == "" {
		return errors.New("revoke runner tokens: runner ID is empty")
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	r := Revocation{RunnerID: runnerID, RevokedAt: m.now()}
	m.mu.Unlock()
	err := m.store.Update(ctx, func(tx Tx) error { return tx.PutRevocation(r) })
	if err != nil {
		return fmt.Errorf("revoke tokens of runner %s: %w", runnerID, err)
	}
	m.mu.Lock()
	if r.RevokedAt.After(m.revoked[runnerID]) {
		m.revoked[runnerID] = r.RevokedAt
	}
	m.mu.Unlock()
	m.logger.Info("runner tokens revoked", "runner", runnerID)
	return nil
}

// runEmbedded is the embedded launcher runner: it executes the start,
// watch and stop jobs of profiles without a target_runner inside the host.
func (m *Manager) runEmbedded(ctx context.Context) {
	session := RunnerSession{RunnerID: m.embeddedID, embedded: true}
	slots := make(chan struct{}, m.cfg.LaunchConcurrency)
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		a, err := m.NextAssignment(ctx, session)
		if err != nil {
			<-slots
			return
		}
		holdsSlot := a.Job.Role != RoleWatch
		if !holdsSlot {
			<-slots
		}
		m.embeddedActive.Add(1)
		go func() {
			defer m.embeddedActive.Done()
			if holdsSlot {
				defer func() { <-slots }()
			}
			m.executeEmbedded(ctx, a)
		}()
	}
}

func (m *Manager) executeEmbedded(ctx context.Context, a *Assignment) {
	logger := m.logger.With("job", a.Job.ID, "kind", a.Job.Kind)
	if err := a.Ack(ctx); err != nil {
		logger.Warn("embedded launcher runner could not acknowledge its job", "error", err)
		return
	}
	// The job's context ends when the job is cancelled, the assignment
	// ends or the Manager closes.
	jobCtx, cancel := context.WithCancel(ctx)
	relayDone := make(chan struct{})
	go func() {
		defer close(relayDone)
		select {
		case <-a.CancelRequested():
		case <-a.Ended():
		case <-jobCtx.Done():
		}
		cancel()
	}()
	defer func() {
		cancel()
		<-relayDone
	}()

	output := func(line tasklauncher.OutputLine) {
		if err := a.Output(ctx, []OutputLine{{Stream: string(line.Stream), Line: line.Line}}); err != nil {
			logger.Debug("task output dropped", "error", err)
		}
	}
	result, err := m.launchExec.Execute(jobCtx, a.Job.Kind, a.Job.Payload, output)
	var failure *JobError
	if err != nil {
		failure = &JobError{Message: err.Error()}
	}
	if err := a.Complete(ctx, result, failure); err != nil && !errors.Is(err, ErrClosed) {
		logger.Warn("embedded launcher runner could not complete its job", "error", err)
	}
}
