package ondemand

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// finish makes a job terminal: SUCCESS when jerr is nil, CANCELLED for
// ReasonCancelled, ERROR otherwise. It then applies what the job's end
// means for its task and for the jobs that depend on it.
func (c *change) finish(id string, result []byte, jerr *JobError) {
	j := c.job(id)
	if j == nil || j.State.Terminal() {
		return
	}
	switch {
	case jerr == nil:
		j.State = StateSuccess
	case jerr.Reason == ReasonCancelled:
		j.State = StateCancelled
	default:
		j.State = StateError
	}
	j.Result = result
	j.Error = jerr
	j.DoneAt = c.now
	message := "succeeded"
	if jerr != nil {
		message = jerr.Error()
	}
	c.event(j, EventDone, message)
	m := c.m
	c.then(func() {
		e := m.jobs[id]
		m.stopTimers(e)
		if e.assignment != nil {
			e.assignment.end(fmt.Errorf("%w: job %s is %s", ErrAssignmentEnded, id, j.State))
			e.assignment = nil
		}
		m.metrics.jobDone(j)
		m.logger.Info("job done", "job", id, "role", j.Role, "state", j.State, "reason", reasonOf(jerr))
	})

	switch j.Role {
	case RoleStart:
		c.startDone(j)
	case RoleWatch:
		c.watchDone(j)
	case RoleStop:
		c.stopDone(j)
	case RoleJob:
		if j.TaskID != "" {
			// A job that ended before its runner was launched needs no
			// launch: cancel a start job that has not begun.
			if t := c.task(j.TaskID); t != nil {
				if start := c.job(t.StartJobID); start != nil && start.State == StateQueued {
					c.finish(start.ID, nil, &JobError{Reason: ReasonCancelled, Message: fmt.Sprintf("job %s ended before its runner was launched", j.ID)})
				}
			}
		}
	}

	for _, depID := range m.dependents[id] {
		d := c.job(depID)
		if d == nil || d.State.Terminal() || j.State == StateSuccess {
			continue
		}
		for _, dep := range d.DependsOn {
			if dep.JobID == id && !dep.AllowFailure {
				c.finish(depID, nil, dependencyError(d, j))
				break
			}
		}
	}
}

func reasonOf(jerr *JobError) Reason {
	if jerr == nil {
		return ""
	}
	return jerr.Reason
}

// dependencyError describes why job d cannot run after its dependency
// failed. An on-demand job whose start job failed reports the launch
// failure itself.
func dependencyError(d, failed *Job) *JobError {
	failure := "ended " + string(failed.State)
	if failed.Error != nil {
		failure = failed.Error.Message
	}
	if d.Role == RoleJob && failed.Role == RoleStart && d.TaskID == failed.TaskID {
		switch reasonOf(failed.Error) {
		case ReasonDependencyFailed, ReasonCancelled:
			return &JobError{Reason: failed.Error.Reason, Message: failure}
		default:
			return &JobError{Reason: ReasonLaunchFailed, Message: "launch failed: " + failure}
		}
	}
	return &JobError{Reason: ReasonDependencyFailed, Message: fmt.Sprintf("dependency %s (%s) ended %s: %s", failed.ID, failed.Kind, failed.State, failure)}
}

func (c *change) startDone(start *Job) {
	t := c.task(start.TaskID)
	if t == nil {
		return
	}
	if len(start.Result) > 0 {
		t.LauncherState = start.Result
	}
	if start.State != StateSuccess {
		return
	}
	t.State = TaskStarted
	t.StartedAt = c.now
	if main := c.job(t.JobID); main != nil && !main.State.Terminal() {
		c.event(main, EventLaunched, fmt.Sprintf("runner %s launched with profile %s", t.RunnerID, t.Profile))
	}
}

func (c *change) watchDone(watch *Job) {
	t := c.task(watch.TaskID)
	if t == nil || watch.State != StateSuccess {
		return
	}
	exit, ok := decodeWatchResult(watch.Result)
	if !ok {
		return
	}
	t.ExitCode = intPtr(exit.Code)
	main := c.job(t.JobID)
	if main == nil || main.State != StateQueued {
		return
	}
	// A runner that took the job before (and rejected it or lost it
	// unacknowledged) did connect, so its exit is a lost runner.
	reason, when := ReasonExitedBeforeConnect, "before connecting"
	if main.Attempt > 0 {
		reason, when = ReasonRunnerLost, "without completing its job"
	}
	msg := fmt.Sprintf("runner %s exited with code %d %s", t.RunnerID, exit.Code, when)
	if exit.Reason != "" {
		msg += " (" + exit.Reason + ")"
	}
	if tail := c.m.jobs[watch.ID].tail; len(tail) > 0 {
		msg += "; last output: " + strings.Join(tail, " | ")
	}
	c.finish(main.ID, nil, &JobError{Reason: reason, Message: msg, ExitCode: intPtr(exit.Code)})
}

func (c *change) stopDone(stop *Job) {
	t := c.task(stop.TaskID)
	if t == nil {
		return
	}
	t.StoppedAt = c.now
	main := c.job(t.JobID)
	if stop.State == StateSuccess {
		t.State = TaskStopped
		c.event(main, EventTaskStopped, fmt.Sprintf("task %s of runner %s stopped", t.ID, t.RunnerID))
	} else {
		t.State = TaskStopFailed
		msg := fmt.Sprintf("task %s of runner %s may be left behind: stop failed: %s", t.ID, t.RunnerID, stop.Error.Message)
		c.event(main, EventTaskStopFailed, msg)
		c.then(func() { c.m.metrics.orphansLeft.Add(context.Background(), 1) })
		c.m.logger.Error("task stop failed; the platform resource may be orphaned", "task", t.ID, "runner", t.RunnerID, "error", stop.Error.Message)
	}
	// The stop ends the task, so its watch has nothing left to see.
	c.cancel(t.WatchJobID, "task stopped")
}

// cancel cancels a job: at once when no runner has it, else by asking the
// runner, with Config.CancelGrace before it is forced.
func (c *change) cancel(id, reason string) {
	j := c.job(id)
	if j == nil || j.State.Terminal() {
		return
	}
	m := c.m
	switch j.State {
	case StateQueued, StateWaiting:
		c.finish(id, nil, &JobError{Reason: ReasonCancelled, Message: reason})
	case StateRunning:
		if j.CancelRequested {
			return
		}
		j.CancelRequested = true
		c.event(j, EventCancelRequested, reason)
		attempt := j.Attempt
		c.then(func() {
			e := m.jobs[id]
			if e.assignment != nil {
				e.assignment.requestCancel(reason)
			}
			m.setTimer(e, timerCancelGrace, m.cfg.CancelGrace, attempt)
		})
	}
	if j.Role == RoleJob && j.TaskID != "" {
		if t := c.task(j.TaskID); t != nil {
			if start := c.job(t.StartJobID); start != nil && start.State == StateQueued {
				c.finish(start.ID, nil, &JobError{Reason: ReasonCancelled, Message: "job cancelled before its runner was launched"})
			}
		}
	}
}

// requeue puts a WAITING or RUNNING job back in the queue, unless the
// assignment it refers to is no longer current.
func (c *change) requeue(id string, attempt int, message string) {
	j := c.job(id)
	if j == nil || j.Attempt != attempt || (j.State != StateWaiting && j.State != StateRunning) {
		return
	}
	j.State = StateQueued
	j.RunnerID = ""
	c.event(j, EventRequeued, message)
	m := c.m
	var deadline time.Time
	if j.Role == RoleJob && j.TaskID != "" {
		if t := c.task(j.TaskID); t != nil {
			deadline = t.StartupDeadline
		}
	}
	c.then(func() {
		e := m.jobs[id]
		m.stopTimers(e)
		if e.assignment != nil {
			e.assignment.end(fmt.Errorf("%w: %s", ErrAssignmentEnded, message))
			e.assignment = nil
		}
		// A held job waits for its runner until the original startup
		// deadline, not a fresh period.
		if !deadline.IsZero() {
			m.setTimer(e, timerStartup, max(deadline.Sub(m.now()), 0), 0)
		}
		m.logger.Warn("job queued again", "job", id, "reason", message)
	})
}
