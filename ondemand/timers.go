package ondemand

import (
	"fmt"
	"time"
)

type timerKind int

const (
	timerAck timerKind = iota
	timerHeartbeat
	timerMaxDuration
	timerCancelGrace
	timerStartup
	timerKinds // the number of kinds
)

// setTimer arms a timer of the job, replacing one of the same kind. The
// timer does nothing if, when it fires, the job has moved past the
// assignment attempt it was armed for. Called with m.mu held.
func (m *Manager) setTimer(e *entry, kind timerKind, d time.Duration, attempt int) {
	if m.closed {
		return
	}
	if t := e.timers[kind]; t != nil {
		t.Stop()
	}
	id := e.job.ID
	e.timers[kind] = time.AfterFunc(d, func() { m.fire(id, kind, attempt) })
}

func (m *Manager) stopTimer(e *entry, kind timerKind) {
	if t := e.timers[kind]; t != nil {
		t.Stop()
		e.timers[kind] = nil
	}
}

func (m *Manager) stopTimers(e *entry) {
	for kind, t := range e.timers {
		if t != nil {
			t.Stop()
			e.timers[kind] = nil
		}
	}
}

func (m *Manager) fire(id string, kind timerKind, attempt int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.jobs[id]
	if m.closed || e == nil || e.job.State.Terminal() {
		return
	}
	j := e.job
	c := m.newChange()
	current := j.Attempt == attempt
	switch kind {
	case timerAck:
		if current && j.State == StateWaiting {
			c.requeue(id, attempt, fmt.Sprintf("runner %s did not acknowledge the job within %s", j.RunnerID, m.cfg.AckTimeout))
		}
	case timerHeartbeat:
		if current && j.State == StateRunning {
			c.finish(id, nil, &JobError{Reason: ReasonRunnerLost, Message: fmt.Sprintf("runner lost: no heartbeat from runner %s for %s", j.RunnerID, m.cfg.HeartbeatTimeout)})
		}
	case timerMaxDuration:
		if current && j.State == StateRunning {
			c.finish(id, nil, &JobError{Reason: ReasonDeadlineExceeded, Message: fmt.Sprintf("job ran longer than its maximum duration of %s", j.MaxDuration)})
		}
	case timerCancelGrace:
		if current && (j.State == StateRunning || j.State == StateWaiting) {
			c.finish(id, nil, &JobError{Reason: ReasonCancelled, Message: fmt.Sprintf("cancelled by request; runner %s did not end the job within %s, so it was cancelled without it", j.RunnerID, m.cfg.CancelGrace)})
		}
	case timerStartup:
		if j.State == StateQueued {
			t := m.tasks[j.TaskID]
			c.finish(id, nil, &JobError{Reason: ReasonStartupTimeout, Message: fmt.Sprintf("runner %s did not connect within the startup timeout of %s (profile %s)", t.RunnerID, m.startupTimeout(t.Profile), t.Profile)})
			if start := c.job(t.StartJobID); start != nil {
				c.cancel(start.ID, "startup timeout passed while the runner was being launched")
			}
		}
	}
	c.commitOrLog(fmt.Sprintf("timer of job %s", id))
}
