package ondemand

import (
	"container/list"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// ErrClosed is returned by Manager methods called after Close.
var ErrClosed = errors.New("manager is closed")

// ErrStoreFailed is wrapped by the errors of all changes after a store
// write failed. The Manager must be closed and created again, which reloads
// its state from the store.
var ErrStoreFailed = errors.New("store write failed")

// ErrInvalidJob is wrapped by Submit errors about the job spec. The message
// names the field and the fix.
var ErrInvalidJob = errors.New("invalid job")

// ErrUnknownProfile is wrapped by Submit when the job names a profile that
// does not exist, or names none and there is no default profile.
var ErrUnknownProfile = errors.New("unknown runner profile")

// Manager queues jobs, launches an on-demand runner for each job through
// its profile's launcher, hands each job to its runner, and stops the
// runner's task when the job ends. It is the host's entry point; its
// methods are safe for concurrent use.
type Manager struct {
	cfg        Config
	logger     *slog.Logger
	store      Store
	committer  *committer
	metrics    *metrics
	signer     *tokenSigner
	launchExec *LaunchExecutor
	now        func() time.Time
	embeddedID string

	closing        chan struct{}
	stopEmbedded   context.CancelFunc
	embeddedActive sync.WaitGroup
	background     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	// storeErr is set when a store write failed; every later change is
	// rejected with it.
	storeErr error
	jobs     map[string]*entry
	tasks    map[string]*Task
	byRunID  map[string]string // runner ID -> task ID
	// dependents maps a job ID to the IDs of jobs that depend on it.
	dependents map[string][]string
	queue      dispatchQueue
	waiters    waiterSet
	// profileConfigs holds each profile's plugin config encoded as JSON
	// once, as start, watch and stop jobs carry it.
	profileConfigs map[string]json.RawMessage
	// watchable caches, per profile, whether its tasks get a watch job.
	watchable map[string]bool
	// revoked maps a runner ID to the time its tokens were revoked.
	revoked map[string]time.Time
	// queuedCount counts jobs in state QUEUED.
	queuedCount int
	// activeTasks counts, per profile, the tasks whose start job has been
	// assigned and that are not stopped: the runners max_concurrent bounds.
	activeTasks map[string]int
}

// entry is the Manager's in-memory state of one job.
type entry struct {
	job *Job
	// lastSeq is the Seq of the job's last event; durableSeq is the Seq of
	// its last event the store has committed.
	lastSeq    int64
	durableSeq int64
	// changed is closed and replaced whenever the job gets a new event.
	changed chan struct{}
	// elem is the job's place in the dispatch queue, nil when not queued.
	elem *list.Element
	// assignment is the job's current assignment while WAITING or RUNNING.
	assignment *Assignment
	timers     [timerKinds]*time.Timer
	// tail keeps the last output lines, reported when a task exits before
	// its runner connects.
	tail []string
}

const tailLines = 10

// New creates a Manager, loads the jobs in cfg.Store and starts the
// embedded launcher runner. Call Close to stop it.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("ondemand: invalid config: %w", err)
	}
	signer, err := newTokenSigner(cfg.TokenKey, cfg.TokenVerifyKeys, time.Now)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:         cfg,
		logger:      cfg.Logger.With("component", "ondemand"),
		store:       cfg.Store,
		signer:      signer,
		now:         time.Now,
		embeddedID:  "embedded-launcher@" + cfg.HostID,
		closing:     make(chan struct{}),
		jobs:        make(map[string]*entry),
		tasks:       make(map[string]*Task),
		byRunID:     make(map[string]string),
		dependents:  make(map[string][]string),
		queue:       newDispatchQueue(),
		waiters:     newWaiterSet(),
		activeTasks: make(map[string]int),
		revoked:     make(map[string]time.Time),
		watchable:   make(map[string]bool),
	}
	if m.metrics, err = newMetrics(cfg.MeterProvider, m); err != nil {
		return nil, fmt.Errorf("ondemand: create metrics: %w", err)
	}
	if cfg.Launchers != nil {
		m.launchExec = NewLaunchExecutor(cfg.Launchers, cfg.Logger)
	}
	if m.profileConfigs, err = encodeProfileConfigs(cfg.Profiles); err != nil {
		return nil, fmt.Errorf("ondemand: invalid config: %w", err)
	}
	m.committer = newCommitter(m)
	if err := m.load(ctx); err != nil {
		return nil, err
	}
	go m.committer.run()
	m.recover()
	embeddedCtx, stop := context.WithCancel(context.Background())
	m.stopEmbedded = stop
	if m.launchExec != nil {
		m.embeddedActive.Add(1)
		go func() {
			defer m.embeddedActive.Done()
			m.runEmbedded(embeddedCtx)
		}()
		m.background.Add(1)
		go func() {
			defer m.background.Done()
			m.runReconciler(embeddedCtx)
		}()
	}
	return m, nil
}

// load rebuilds the in-memory indexes from the store.
func (m *Manager) load(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	err := m.store.View(ctx, func(tx ReadTx) error {
		if err := tx.ForEachTask(func(t *Task) bool {
			m.tasks[t.ID] = t
			m.byRunID[t.RunnerID] = t.ID
			if t.active() {
				m.activeTasks[t.Profile]++
			}
			return true
		}); err != nil {
			return err
		}
		if err := tx.ForEachRevocation(func(r Revocation) bool {
			m.revoked[r.RunnerID] = r.RevokedAt
			return true
		}); err != nil {
			return err
		}
		return tx.ForEachJob(func(j *Job) bool {
			e := &entry{job: j, changed: make(chan struct{})}
			m.jobs[j.ID] = e
			if j.State == StateQueued {
				m.queuedCount++
			}
			for _, d := range j.DependsOn {
				m.dependents[d.JobID] = append(m.dependents[d.JobID], j.ID)
			}
			return true
		})
	})
	if err != nil {
		return fmt.Errorf("ondemand: load store: %w", err)
	}
	for id, e := range m.jobs {
		err := m.store.View(ctx, func(tx ReadTx) error {
			return tx.Events(id, 0, func(ev Event) bool {
				e.lastSeq, e.durableSeq = ev.Seq, ev.Seq
				return true
			})
		})
		if err != nil {
			return fmt.Errorf("ondemand: load events of job %s: %w", id, err)
		}
	}
	for _, e := range m.jobs {
		m.reindex(e)
	}
	return nil
}

// newID returns prefix followed by 20 hex digits: the time in nanoseconds,
// then random bits. IDs made later sort later, so a B+tree store such as
// bbolt appends new records to its last pages instead of touching pages
// across the whole tree.
func newID(prefix string) string {
	b := make([]byte, 10)
	binary.BigEndian.PutUint64(b, uint64(time.Now().UnixNano()))
	_, _ = rand.Read(b[6:])
	return prefix + hex.EncodeToString(b)
}

// JobSpec describes a job a host submits.
type JobSpec struct {
	// ID is the job's ID; Submit generates one when empty.
	ID string
	// Kind names the operation; runners pick their handler by it.
	Kind string
	// Payload is the operation's input, opaque to odrkit.
	Payload []byte
	// Profile is the runner profile an on-demand runner is launched with;
	// empty means the default profile. Must be empty when Target is set.
	Profile string
	// Target, when set, queues the job for static runners that match it
	// instead of launching a runner for it. &Target{} matches any runner.
	Target *Target
	// DependsOn lists jobs that must end before this one starts.
	DependsOn []Dependency
	// MaxDuration bounds how long the job may run once acknowledged; zero
	// means no bound.
	MaxDuration time.Duration
}

// Submit queues a job. Without Target it also queues the start, watch and
// stop jobs of a task that launches an on-demand runner for it. Submit
// returns once the jobs are stored.
func (m *Manager) Submit(ctx context.Context, spec JobSpec) (*Job, error) {
	if err := m.checkSpec(spec); err != nil {
		return nil, err
	}
	m.mu.Lock()
	locked := true
	defer func() {
		if locked {
			m.mu.Unlock()
		}
	}()
	if m.closed {
		return nil, ErrClosed
	}
	if spec.ID == "" {
		spec.ID = newID("job-")
	}
	if _, ok := m.jobs[spec.ID]; ok {
		return nil, fmt.Errorf("%w: ID %q is already used; submit with another ID or none", ErrInvalidJob, spec.ID)
	}
	for _, d := range spec.DependsOn {
		if _, ok := m.jobs[d.JobID]; !ok {
			return nil, fmt.Errorf("%w: dependency %q is not a known job ID; submit it first", ErrInvalidJob, d.JobID)
		}
	}

	c := m.newChange()
	var job *Job
	if spec.Target != nil {
		job = c.addJob(&Job{
			ID: spec.ID, Kind: spec.Kind, Payload: spec.Payload, Target: *spec.Target,
			DependsOn: spec.DependsOn, MaxDuration: spec.MaxDuration, Role: RoleJob,
		}, "queued for "+spec.Target.String())
	} else {
		p, err := m.profile(spec.Profile)
		if err != nil {
			return nil, err
		}
		job = m.addTask(c, spec, p)
	}
	if err := c.commit(); err != nil {
		return nil, fmt.Errorf("submit job %s: %w", spec.ID, err)
	}
	job = job.Clone()
	m.mu.Unlock()
	locked = false
	if err := c.wait(ctx); err != nil {
		return nil, fmt.Errorf("submit job %s: %w", spec.ID, err)
	}
	m.logger.Info("job submitted", "job", job.ID, "kind", job.Kind, "task", job.TaskID, "profile", job.Profile)
	return job, nil
}

func (m *Manager) checkSpec(spec JobSpec) error {
	var errs []string
	if strings.TrimSpace(spec.Kind) == "" {
		errs = append(errs, "Kind is empty; set the operation name runners register a handler for")
	}
	if spec.Target != nil && spec.Profile != "" {
		errs = append(errs, fmt.Sprintf("Profile %q and Target are both set; set Profile for an on-demand runner or Target for static runners", spec.Profile))
	}
	if spec.MaxDuration < 0 {
		errs = append(errs, fmt.Sprintf("MaxDuration is %s; set a positive duration or zero for no bound", spec.MaxDuration))
	}
	for i, d := range spec.DependsOn {
		if d.JobID == "" {
			errs = append(errs, fmt.Sprintf("DependsOn[%d].JobID is empty; set the ID of a submitted job", i))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidJob, strings.Join(errs, "; "))
	}
	return nil
}

// addJob stages a new QUEUED job with its first event.
func (c *change) addJob(j *Job, message string) *Job {
	j.State = StateQueued
	j.QueuedAt = c.now
	c.jobs[j.ID] = j
	c.event(j, EventQueued, message)
	return j
}

// Get returns a copy of the job with this ID, or an error wrapping
// ErrNotFound.
func (m *Manager) Get(ctx context.Context, id string) (*Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.jobs[id]
	if e == nil {
		return nil, notFound("job", id)
	}
	return e.job.Clone(), nil
}

// Task returns a copy of the task with this ID, or an error wrapping
// ErrNotFound.
func (m *Manager) Task(ctx context.Context, id string) (*Task, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.tasks[id]
	if t == nil {
		return nil, notFound("task", id)
	}
	return t.Clone(), nil
}

// ListJobs returns copies of the jobs with the given role, or of all jobs
// when role is empty, in no particular order.
func (m *Manager) ListJobs(ctx context.Context, role Role) []*Job {
	m.mu.Lock()
	defer m.mu.Unlock()
	var jobs []*Job
	for _, e := range m.jobs {
		if role == "" || e.job.Role == role {
			jobs = append(jobs, e.job.Clone())
		}
	}
	return jobs
}

// ListTasks returns copies of all tasks, in no particular order.
func (m *Manager) ListTasks(ctx context.Context) []*Task {
	m.mu.Lock()
	defer m.mu.Unlock()
	tasks := make([]*Task, 0, len(m.tasks))
	for _, t := range m.tasks {
		tasks = append(tasks, t.Clone())
	}
	return tasks
}

// Wait blocks until the job is terminal and returns it.
func (m *Manager) Wait(ctx context.Context, id string) (*Job, error) {
	for {
		m.mu.Lock()
		e := m.jobs[id]
		if e == nil {
			m.mu.Unlock()
			return nil, notFound("job", id)
		}
		job, changed := e.job.Clone(), e.changed
		m.mu.Unlock()
		if job.State.Terminal() {
			return job, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-m.closing:
			return nil, ErrClosed
		}
	}
}

// WaitTask blocks until the task is stopped (state STOPPED or
// STOP_FAILED) and returns it.
func (m *Manager) WaitTask(ctx context.Context, id string) (*Task, error) {
	for {
		m.mu.Lock()
		t := m.tasks[id]
		if t == nil {
			m.mu.Unlock()
			return nil, notFound("task", id)
		}
		task := t.Clone()
		changed := m.jobs[task.JobID].changed
		m.mu.Unlock()
		if task.State == TaskStopped || task.State == TaskStopFailed {
			return task, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-m.closing:
			return nil, ErrClosed
		}
	}
}

// Watch returns the job's events: first those already recorded, then new
// ones as they happen, until the job is terminal. It yields a non-nil
// error once and stops when ctx is done, the job is unknown or the
// Manager closes.
func (m *Manager) Watch(ctx context.Context, id string) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		var after int64
		for {
			m.mu.Lock()
			e := m.jobs[id]
			if e == nil {
				m.mu.Unlock()
				yield(Event{}, notFound("job", id))
				return
			}
			// Only stored events are visible, so a watcher never receives an
			// event that a crash could take back.
			last, durable, terminal, changed := e.lastSeq, e.durableSeq, e.job.State.Terminal(), e.changed
			storeErr := m.storeErr
			m.mu.Unlock()
			if storeErr != nil && after >= durable {
				yield(Event{}, storeErr)
				return
			}

			if after < durable {
				var events []Event
				err := m.store.View(ctx, func(tx ReadTx) error {
					return tx.Events(id, after, func(ev Event) bool {
						events = append(events, ev)
						return ev.Seq < durable
					})
				})
				if err != nil {
					yield(Event{}, fmt.Errorf("read events of job %s: %w", id, err))
					return
				}
				for _, ev := range events {
					if !yield(ev, nil) {
						return
					}
					after = ev.Seq
				}
				continue
			}
			if terminal && after >= last {
				return
			}
			select {
			case <-changed:
			case <-ctx.Done():
				yield(Event{}, ctx.Err())
				return
			case <-m.closing:
				yield(Event{}, ErrClosed)
				return
			}
		}
	}
}

// Cancel cancels a job. A queued job is cancelled at once. A job on a
// runner is asked to stop. If its runner has not ended it within
// Config.CancelGrace, the Manager marks it cancelled without the runner.
// Cancelling an on-demand job also cancels its start job when that has not
// begun, and its task is stopped either way. Cancelling a terminal job
// does nothing.
func (m *Manager) Cancel(ctx context.Context, id string) error {
	err := m.update(ctx, func(c *change) error {
		if m.closed {
			return ErrClosed
		}
		if m.jobs[id] == nil {
			return notFound("job", id)
		}
		c.cancel(id, "cancelled by request")
		return nil
	})
	if err != nil {
		return fmt.Errorf("cancel job %s: %w", id, err)
	}
	return nil
}

// Close stops the Manager: runners waiting for a job are released, timers
// stop and the embedded launcher runner ends. Tasks that are still
// running are not stopped; a Manager started later on the same durable
// store finds them. Close is idempotent.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.closing)
	for _, e := range m.jobs {
		for _, t := range e.timers {
			if t != nil {
				t.Stop()
			}
		}
	}
	m.mu.Unlock()

	m.stopEmbedded()
	m.embeddedActive.Wait()
	m.background.Wait()
	m.committer.close()
	_ = m.metrics.registration.Unregister()
	var err error
	if m.launchExec != nil {
		err = m.launchExec.Close()
	}
	m.logger.Info("manager closed")
	return err
}

// apply moves a stored change into memory. Called with m.mu held.
func (m *Manager) apply(c *change) {
	for id, j := range c.jobs {
		e := m.jobs[id]
		if e == nil {
			e = &entry{changed: make(chan struct{})}
			m.jobs[id] = e
			for _, d := range j.DependsOn {
				m.dependents[d.JobID] = append(m.dependents[d.JobID], id)
			}
		}
		if e.job != nil && e.job.State == StateQueued {
			m.queuedCount--
		}
		if j.State == StateQueued {
			m.queuedCount++
		}
		e.job = j
	}
	freed := false
	for id, t := range c.tasks {
		if old := m.tasks[id]; old != nil && old.active() {
			m.activeTasks[t.Profile]--
			// Only a profile with a limit can have start jobs waiting
			// for room.
			if !t.active() {
				if p, err := m.profile(t.Profile); err == nil && p.MaxConcurrent > 0 {
					freed = true
				}
			}
		}
		if t.active() {
			m.activeTasks[t.Profile]++
		}
		m.tasks[id] = t
		m.byRunID[t.RunnerID] = id
	}
	notify := make(map[string]bool)
	for _, ev := range c.events {
		e := m.jobs[ev.JobID]
		e.lastSeq = ev.Seq
		if ev.Type == EventOutput {
			e.tail = append(e.tail, ev.Line)
			if len(e.tail) > tailLines {
				e.tail = e.tail[len(e.tail)-tailLines:]
			}
		}
		notify[ev.JobID] = true
	}
	for id := range c.jobs {
		notify[id] = true
	}
	for id := range notify {
		e := m.jobs[id]
		close(e.changed)
		e.changed = make(chan struct{})
	}
	for id := range c.jobs {
		m.reindex(m.jobs[id])
	}
	// A stopped task makes room for a start job held back by its
	// profile's max_concurrent.
	if freed {
		m.dispatchWaiting()
	}
	// A finished job can make its dependents ready.
	for id, j := range c.jobs {
		if j.State.Terminal() {
			for _, dep := range m.dependents[id] {
				m.reindex(m.jobs[dep])
			}
		}
	}
}

// dependenciesDone reports whether every dependency of j is terminal.
func (m *Manager) dependenciesDone(j *Job) bool {
	for _, d := range j.DependsOn {
		if e := m.jobs[d.JobID]; e != nil && !e.job.State.Terminal() {
			return false
		}
	}
	return true
}
