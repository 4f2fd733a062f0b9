package ondemand

import (
	"fmt"
	"maps"
	"slices"
	"time"
)

// State is the state of a job.
type State string

// Job states. A job moves QUEUED -> WAITING -> RUNNING and ends in one of the
// three terminal states. A WAITING job whose runner rejects it or does not
// acknowledge it in time goes back to QUEUED.
const (
	// StateQueued: the job waits for a runner, or for its dependencies.
	StateQueued State = "QUEUED"
	// StateWaiting: the job was sent to a runner that has not acknowledged it yet.
	StateWaiting State = "WAITING"
	// StateRunning: the runner acknowledged the job and executes it.
	StateRunning State = "RUNNING"
	// StateSuccess: the job completed without error.
	StateSuccess State = "SUCCESS"
	// StateError: the job failed, and Job.Error holds the reason.
	StateError State = "ERROR"
	// StateCancelled: the job was cancelled.
	StateCancelled State = "CANCELLED"
)

// Terminal reports whether s is SUCCESS, ERROR or CANCELLED.
func (s State) Terminal() bool {
	return s == StateSuccess || s == StateError || s == StateCancelled
}

// Target selects the runners that may take a job. The zero Target matches
// any static runner.
type Target struct {
	// RunnerID, when set, restricts the job to the runner with this ID.
	RunnerID string `json:"runner_id,omitempty"`
	// Labels, when set, restricts the job to runners whose labels include
	// all of these.
	Labels map[string]string `json:"labels,omitempty"`
}

// Any reports whether the target matches any runner.
func (t Target) Any() bool { return t.RunnerID == "" && len(t.Labels) == 0 }

func (t Target) String() string {
	switch {
	case t.RunnerID != "":
		return "runner " + t.RunnerID
	case len(t.Labels) > 0:
		return fmt.Sprintf("runners labelled %v", t.Labels)
	}
	return "any runner"
}

// matches reports whether a runner with these labels may take a job with
// this target, ignoring RunnerID.
func labelsMatch(want, have map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

// Dependency makes a job wait until another job is terminal.
type Dependency struct {
	// JobID is the job waited for.
	JobID string `json:"job_id"`
	// AllowFailure lets the dependent job run when JobID ends in ERROR or
	// CANCELLED. Without it the dependent job fails with
	// ReasonDependencyFailed.
	AllowFailure bool `json:"allow_failure,omitempty"`
}

// Role is the part a job plays: a host job or one of its task operations.
type Role string

// Job roles.
const (
	// RoleJob is a job a host submitted.
	RoleJob Role = "job"
	// RoleStart runs Launcher.StartTask for a task.
	RoleStart Role = "start"
	// RoleWatch runs Launcher.WatchTask for a task.
	RoleWatch Role = "watch"
	// RoleStop runs Launcher.StopTask for a task.
	RoleStop Role = "stop"
)

// Job is a unit of work. The Manager returns copies: changing one changes
// nothing in the Manager.
type Job struct {
	ID        string       `json:"id"`
	Kind      string       `json:"kind"`
	Payload   []byte       `json:"payload,omitempty"`
	Target    Target       `json:"target"`
	DependsOn []Dependency `json:"depends_on,omitempty"`
	// MaxDuration bounds the time from the runner's acknowledgement to
	// completion; zero means no bound.
	MaxDuration time.Duration `json:"max_duration,omitempty"`

	// Role is RoleJob for jobs a host submitted and the task operation
	// for the jobs the Manager adds around an on-demand job.
	Role Role `json:"role"`
	// Profile is the runner profile of an on-demand job and of its task's
	// jobs.
	Profile string `json:"profile,omitempty"`
	// TaskID is the task that runs an on-demand job, or that a start,
	// watch or stop job belongs to.
	TaskID string `json:"task_id,omitempty"`

	State State `json:"state"`
	// RunnerID is the runner the job was last assigned to.
	RunnerID string `json:"runner_id,omitempty"`
	// Attempt counts assignments. Runner messages and timers carry the
	// attempt they belong to, so stale ones are ignored.
	Attempt int `json:"attempt"`
	// CancelRequested is set by Cancel while the runner winds the job down.
	CancelRequested bool `json:"cancel_requested,omitempty"`

	Result []byte    `json:"result,omitempty"`
	Error  *JobError `json:"error,omitempty"`

	QueuedAt   time.Time `json:"queued_at"`
	AssignedAt time.Time `json:"assigned_at,omitzero"`
	AckedAt    time.Time `json:"acked_at,omitzero"`
	DoneAt     time.Time `json:"done_at,omitzero"`
}

// Clone returns a deep copy of j.
func (j *Job) Clone() *Job {
	if j == nil {
		return nil
	}
	c := *j
	c.Payload = slices.Clone(j.Payload)
	c.Target.Labels = maps.Clone(j.Target.Labels)
	c.DependsOn = slices.Clone(j.DependsOn)
	c.Result = slices.Clone(j.Result)
	if j.Error != nil {
		e := *j.Error
		if j.Error.ExitCode != nil {
			code := *j.Error.ExitCode
			e.ExitCode = &code
		}
		c.Error = &e
	}
	return &c
}

// Reason is a stable code for why a job failed, for callers to branch on.
type Reason string

// Failure reasons.
const (
	// ReasonLaunchFailed: the launcher's StartTask failed.
	ReasonLaunchFailed Reason = "launch_failed"
	// ReasonStartupTimeout: the runner did not connect within the
	// profile's startup timeout.
	ReasonStartupTimeout Reason = "startup_timeout"
	// ReasonExitedBeforeConnect: the runner's task exited before the
	// runner connected.
	ReasonExitedBeforeConnect Reason = "exited_before_connect"
	// ReasonRunnerLost: the runner's stream broke or its heartbeats
	// stopped while it ran the job.
	ReasonRunnerLost Reason = "runner_lost"
	// ReasonCancelled: the job was cancelled.
	ReasonCancelled Reason = "cancelled"
	// ReasonDeadlineExceeded: the job ran longer than its MaxDuration.
	ReasonDeadlineExceeded Reason = "deadline_exceeded"
	// ReasonDependencyFailed: a dependency ended without success.
	ReasonDependencyFailed Reason = "dependency_failed"
	// ReasonJobFailed: the runner reported that the job failed.
	ReasonJobFailed Reason = "job_failed"
)

// JobError is the reason a job ended in ERROR or CANCELLED. It implements
// error, so callers can use errors.As to branch on Reason.
type JobError struct {
	Reason  Reason `json:"reason"`
	Message string `json:"message"`
	// ExitCode is the exit code of the job's process or of the runner's
	// task, when one is known.
	ExitCode *int `json:"exit_code,omitempty"`
}

// Error returns the reason and the message.
func (e *JobError) Error() string {
	if e.ExitCode != nil {
		return fmt.Sprintf("%s: %s (exit code %d)", e.Reason, e.Message, *e.ExitCode)
	}
	return fmt.Sprintf("%s: %s", e.Reason, e.Message)
}

func intPtr(v int) *int { return &v }

// EventType names what an Event records.
type EventType string

// Event types in a job's timeline.
const (
	EventQueued          EventType = "queued"
	EventLaunching       EventType = "launching"
	EventLaunched        EventType = "launched"
	EventAssigned        EventType = "assigned"
	EventRunning         EventType = "running"
	EventRequeued        EventType = "requeued"
	EventOutput          EventType = "output"
	EventCancelRequested EventType = "cancel_requested"
	EventDone            EventType = "done"
	EventTaskStopped     EventType = "task_stopped"
	EventTaskStopFailed  EventType = "task_stop_failed"
)

// Event is one entry of a job's timeline.
type Event struct {
	// Seq numbers a job's events from 1, without gaps.
	Seq   int64     `json:"seq"`
	JobID string    `json:"job_id"`
	Time  time.Time `json:"time"`
	Type  EventType `json:"type"`
	// Stream and Line are set for EventOutput.
	Stream string `json:"stream,omitempty"`
	Line   string `json:"line,omitempty"`
	// State is the job's state after the event.
	State State `json:"state"`
	// Message describes the event for people.
	Message string `json:"message,omitempty"`
}
