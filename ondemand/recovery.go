package ondemand

import (
	"context"
	"fmt"
	"time"

	"github.com/odrkit/odrkit/tasklauncher"
)

// recover resumes the jobs a previous host process left unfinished, after
// load has rebuilt the indexes from the store:
//
//   - a job sent to a runner but not acknowledged is queued again;
//   - a launch job that was running in the previous process's embedded
//     launcher runner runs again (StopTask is idempotent, and a start job
//     that runs again first removes what its earlier attempt created);
//   - any other running job keeps its state, and fails as runner lost
//     unless its runner reports within the heartbeat timeout, because its
//     stream ended with the previous process;
//   - held jobs wait for their runner until their stored startup deadline.
func (m *Manager) recover() {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.newChange()
	for id, e := range m.jobs {
		j := e.job
		switch j.State {
		case StateWaiting:
			c.requeue(id, j.Attempt, "host restarted before the runner acknowledged the job")
		case StateRunning:
			if j.Role != RoleJob && j.RunnerID == m.embeddedID {
				c.requeue(id, j.Attempt, "host restarted while the launch job ran; running it again")
				continue
			}
			c.then(func() { m.resumeRunningTimers(e) })
		case StateQueued:
			if t := m.tasks[j.TaskID]; j.Role == RoleJob && t != nil && !t.StartupDeadline.IsZero() {
				c.then(func() { m.setTimer(e, timerStartup, max(t.StartupDeadline.Sub(m.now()), 0), 0) })
			}
		}
	}
	c.commitOrLog("recover jobs after restart")
}

// resumeRunningTimers arms the timers of a job that was running when the
// previous host process stopped. Called with m.mu held.
func (m *Manager) resumeRunningTimers(e *entry) {
	j := e.job
	m.setTimer(e, timerHeartbeat, m.cfg.HeartbeatTimeout, j.Attempt)
	if j.MaxDuration > 0 {
		m.setTimer(e, timerMaxDuration, max(j.AckedAt.Add(j.MaxDuration).Sub(m.now()), 0), j.Attempt)
	}
	if j.CancelRequested {
		m.setTimer(e, timerCancelGrace, m.cfg.CancelGrace, j.Attempt)
	}
}

// runReconciler removes orphaned tasks at start and then every
// Config.ReconcileInterval until ctx ends.
func (m *Manager) runReconciler(ctx context.Context) {
	for {
		m.Reconcile(ctx)
		select {
		case <-ctx.Done():
			return
		case <-time.After(m.cfg.ReconcileInterval):
		}
	}
}

// Reconcile stops the platform resources that this host launched (label
// odrkit.host) and that no unfinished task owns: what a crash left behind.
// It queries the launcher of every profile that launches from the embedded
// launcher runner and can list tasks. It returns the number of resources it
// stopped. Errors are logged; the next run tries again.
func (m *Manager) Reconcile(ctx context.Context) int {
	if m.cfg.Profiles == nil || m.launchExec == nil {
		return 0
	}
	stopped := 0
	for _, p := range m.cfg.Profiles.All() {
		if p.TargetRunner != nil {
			continue
		}
		l, err := m.launchExec.launcher(p.Plugin, m.profileConfigs[p.Name])
		if err != nil {
			m.logger.Error("reconcile: create launcher", "profile", p.Name, "error", err)
			continue
		}
		lister, ok := l.(tasklauncher.Lister)
		if !ok {
			continue
		}
		found, err := lister.ListTasks(ctx, map[string]string{LabelHost: m.cfg.HostID, LabelProfile: p.Name})
		if ctx.Err() != nil {
			// The Manager is closing; the next start reconciles again.
			return stopped
		}
		if err != nil {
			m.logger.Error("reconcile: list tasks", "profile", p.Name, "error", err)
			continue
		}
		for _, info := range found {
			taskID := info.Labels[LabelTask]
			if m.ownsTask(taskID) {
				continue
			}
			if err := l.StopTask(ctx, info.State); err != nil {
				if ctx.Err() != nil {
					return stopped
				}
				m.logger.Error("reconcile: stop orphaned task", "profile", p.Name, "task", taskID, "error", err)
				continue
			}
			stopped++
			m.metrics.orphansStopped.Add(ctx, 1)
			m.logger.Warn("stopped orphaned task", "profile", p.Name, "task", taskID, "runner", info.Labels[LabelRunner])
		}
	}
	return stopped
}

// ownsTask reports whether an unfinished task record owns the task ID.
func (m *Manager) ownsTask(taskID string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.tasks[taskID]
	if t == nil {
		return false
	}
	switch t.State {
	case TaskPending, TaskStarted:
		return true
	}
	return false
}

// adoptEarlierAttempt returns the state of a resource that an earlier
// attempt of the task's start job created, so that the runner launched then
// keeps its job. It returns nil when the launcher cannot list tasks or
// there is no such resource. Resources beyond the first are stopped.
func adoptEarlierAttempt(ctx context.Context, l tasklauncher.Launcher, taskID string) ([]byte, error) {
	lister, ok := l.(tasklauncher.Lister)
	if !ok {
		return nil, nil
	}
	found, err := lister.ListTasks(ctx, map[string]string{LabelTask: taskID})
	if err != nil {
		return nil, fmt.Errorf("look for the resource of an earlier launch: %w", err)
	}
	var adopted []byte
	for _, info := range found {
		if adopted == nil && info.Running {
			adopted = info.State
			continue
		}
		if err := l.StopTask(ctx, info.State); err != nil {
			return nil, fmt.Errorf("stop a surplus resource of an earlier launch: %w", err)
		}
	}
	return adopted, nil
}
