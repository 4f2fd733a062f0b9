package storetest

import (
	"fmt"
	"time"

	"github.com/odrkit/odrkit/ondemand"
)

// fixedTime has nanoseconds, so a store that truncates times fails.
var fixedTime = time.Date(2025, time.March, 4, 5, 6, 7, 123456789, time.UTC)

func intPtr(v int) *int { return &v }

// fullJob returns a job with every field set.
func fullJob(id string) *ondemand.Job {
	return &ondemand.Job{
		ID:      id,
		Kind:    "build",
		Payload: []byte{0x00, 0x01, 0xff, '{'},
		Target: ondemand.Target{
			RunnerID: "runner-1",
			Labels:   map[string]string{"zone": "eu-west", "arch": "arm64"},
		},
		DependsOn: []ondemand.Dependency{
			{JobID: "dep-1"},
			{JobID: "dep-2", AllowFailure: true},
		},
		MaxDuration:     90 * time.Second,
		Role:            ondemand.RoleJob,
		Profile:         "docker-small",
		TaskID:          "task-1",
		State:           ondemand.StateError,
		RunnerID:        "odr-1",
		Attempt:         3,
		CancelRequested: true,
		Result:          []byte("result bytes"),
		Error: &ondemand.JobError{
			Reason:   ondemand.ReasonJobFailed,
			Message:  "exit status 0 but the runner reported failure",
			ExitCode: intPtr(0),
		},
		QueuedAt:   fixedTime,
		AssignedAt: fixedTime.Add(time.Second),
		AckedAt:    fixedTime.Add(2 * time.Second),
		// A wall-clock time carries a monotonic reading and the local
		// zone; a store keeps the instant, not those.
		DoneAt: time.Now(),
	}
}

// fullTask returns a task with every field set.
func fullTask(id string) *ondemand.Task {
	return &ondemand.Task{
		ID:              id,
		RunnerID:        "odr-" + id,
		Profile:         "docker-small",
		JobID:           "job-" + id,
		StartJobID:      "start-" + id,
		WatchJobID:      "watch-" + id,
		StopJobID:       "stop-" + id,
		State:           ondemand.TaskStopFailed,
		LauncherState:   []byte(`{"container":"abc"}`),
		StartupDeadline: fixedTime.Add(time.Minute),
		ExitCode:        intPtr(0),
		CreatedAt:       fixedTime,
		StartedAt:       fixedTime.Add(time.Second),
		StoppedAt:       time.Now(),
	}
}

// fullEvent returns an event with every field set.
func fullEvent(jobID string, seq int64) ondemand.Event {
	return ondemand.Event{
		Seq:     seq,
		JobID:   jobID,
		Time:    fixedTime.Add(time.Duration(seq) * time.Millisecond),
		Type:    ondemand.EventOutput,
		Stream:  "stderr",
		Line:    fmt.Sprintf("line %d", seq),
		State:   ondemand.StateRunning,
		Message: "output",
	}
}

// normalJob returns a copy of j in the form two equal jobs share after a
// store round trip: times in UTC without a monotonic reading, and empty
// slices and maps as nil. Pointers stay as they are, because a nil Error or
// ExitCode means something other than a zero one.
func normalJob(j *ondemand.Job) *ondemand.Job {
	if j == nil {
		return nil
	}
	c := j.Clone()
	c.Payload = nilIfEmpty(c.Payload)
	c.Result = nilIfEmpty(c.Result)
	if len(c.Target.Labels) == 0 {
		c.Target.Labels = nil
	}
	if len(c.DependsOn) == 0 {
		c.DependsOn = nil
	}
	c.QueuedAt = c.QueuedAt.UTC()
	c.AssignedAt = c.AssignedAt.UTC()
	c.AckedAt = c.AckedAt.UTC()
	c.DoneAt = c.DoneAt.UTC()
	return c
}

// normalTask is normalJob for tasks.
func normalTask(t *ondemand.Task) *ondemand.Task {
	if t == nil {
		return nil
	}
	c := t.Clone()
	c.LauncherState = nilIfEmpty(c.LauncherState)
	c.StartupDeadline = c.StartupDeadline.UTC()
	c.CreatedAt = c.CreatedAt.UTC()
	c.StartedAt = c.StartedAt.UTC()
	c.StoppedAt = c.StoppedAt.UTC()
	return c
}

// normalEvent is normalJob for events.
func normalEvent(e ondemand.Event) ondemand.Event {
	e.Time = e.Time.UTC()
	return e
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}
