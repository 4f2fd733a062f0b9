// Package tasklauncher defines the interface between odrkit and the platforms
// that run on-demand runners: a local process, a Docker container, a
// Kubernetes pod, and any platform a user writes a plugin for.
//
// A launcher has two required operations. StartTask creates the platform
// resource that runs one runner and returns an opaque state. odrkit stores
// that state as bytes and passes it back to StopTask, which removes the
// resource. Optional capabilities are separate small interfaces that a
// launcher implements when its platform supports them: [Watcher] streams a
// task's own output and reports its exit code, and [Lister] finds tasks by
// their labels so that resources left behind by a crash can be reclaimed.
//
// A [Registry] maps plugin names, as written in runner profiles, to each
// plugin's configuration schema and constructor.
package tasklauncher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// Launcher creates and removes the platform resource that runs one
// on-demand runner.
//
// Implementations must be safe for concurrent use: odrkit starts, watches
// and stops many tasks at once.
type Launcher interface {
	// StartTask creates the resource described by info and returns a state
	// that identifies it. The state is stored by odrkit as opaque bytes and
	// may be handed to StopTask by a later host process, so it must not
	// depend on memory of this process.
	//
	// When StartTask fails after creating part of the resource, it returns
	// a state for what exists together with the error, so that StopTask can
	// remove it; otherwise it returns a nil state.
	StartTask(ctx context.Context, info *LaunchInfo) ([]byte, error)

	// StopTask removes the resource that state identifies. It is
	// idempotent: stopping a task that was already stopped, that exited by
	// itself or whose resource is gone returns nil. An empty state is a
	// task that never started, and stopping it returns nil.
	StopTask(ctx context.Context, state []byte) error

	// Close releases what the launcher holds, such as client connections
	// and the goroutines that reap local processes. It does not stop the
	// tasks the launcher started.
	Close() error
}

// Watcher is implemented by launchers that can observe a running task.
type Watcher interface {
	// WatchTask streams the task's own output lines to output, in order,
	// from the task's start, and returns when the task has exited. It
	// returns the task's exit code. It returns early with ctx's error when
	// ctx is done.
	//
	// output is called from one goroutine at a time.
	WatchTask(ctx context.Context, state []byte, output func(OutputLine)) (TaskExit, error)
}

// Lister is implemented by launchers that can find their tasks by label.
type Lister interface {
	// ListTasks returns every task on the platform whose labels include
	// all of the given labels (key and value equal). Each result carries a
	// state that StopTask accepts.
	ListTasks(ctx context.Context, labels map[string]string) ([]TaskInfo, error)
}

// Stream names the output stream an output line came from.
type Stream string

// Output streams a task can write to.
const (
	Stdout Stream = "stdout"
	Stderr Stream = "stderr"
)

// OutputLine is one line of a task's own output, without its line ending.
type OutputLine struct {
	Stream Stream
	Line   string
}

// TaskExit describes how a task ended.
type TaskExit struct {
	// Code is the exit code of the task's main process, or -1 when the
	// process was ended by a signal.
	Code int
	// Reason is the platform's description of the exit, such as
	// "killed by signal: terminated" or "OOMKilled"; empty when there is
	// nothing to add to the code.
	Reason string
}

// TaskInfo describes a task found by [Lister.ListTasks].
type TaskInfo struct {
	// State identifies the task to StopTask.
	State []byte
	// Labels are the labels the task carries on its platform.
	Labels map[string]string
	// Running reports whether the task is still running.
	Running bool
}

// ErrTaskNotFound is returned by WatchTask when the state names a task that
// does not exist on the platform.
var ErrTaskNotFound = errors.New("task not found")

// LaunchInfo describes the runner a launcher starts.
type LaunchInfo struct {
	// TaskID identifies the task record in odrkit.
	TaskID string
	// RunnerID is the ID the runner presents when it connects.
	RunnerID string
	// Image is the OCI image reference of the runner. Launchers that run
	// no images, such as local processes, ignore it.
	Image string
	// Entrypoint overrides the image's entrypoint when not empty.
	Entrypoint []string
	// Arguments are passed to the entrypoint.
	Arguments []string
	// Env is the runner's environment. It contains the runner's token,
	// so launchers must not log its values.
	Env map[string]string
	// Labels are attached to the platform resource so that [Lister] can
	// find it later.
	Labels map[string]string
}

// String returns a description of the launch with environment values
// redacted, so that a LaunchInfo can be logged without leaking its token.
// The methods that print a LaunchInfo have value receivers, so that a
// LaunchInfo value is redacted as well as a pointer to one.
func (i LaunchInfo) String() string {
	return fmt.Sprintf("task %s runner %s image %q entrypoint %q arguments %q env keys [%s] labels %v",
		i.TaskID, i.RunnerID, i.Image, i.Entrypoint, i.Arguments, strings.Join(i.envKeys(), " "), i.Labels)
}

// redactedValue replaces environment values in printed LaunchInfo values.
const redactedValue = "REDACTED"

// GoString implements fmt.GoStringer for the %#v verb. Environment values
// are redacted, as in String.
func (i LaunchInfo) GoString() string {
	env := make([]string, 0, len(i.Env))
	for _, k := range i.envKeys() {
		env = append(env, fmt.Sprintf("%q: %q", k, redactedValue))
	}
	return fmt.Sprintf("tasklauncher.LaunchInfo{TaskID: %q, RunnerID: %q, Image: %q, Entrypoint: %#v, Arguments: %#v, Env: map[string]string{%s}, Labels: %#v}",
		i.TaskID, i.RunnerID, i.Image, i.Entrypoint, i.Arguments, strings.Join(env, ", "), i.Labels)
}

// LogValue implements slog.LogValuer. It logs the environment's keys, never
// its values.
func (i LaunchInfo) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("task_id", i.TaskID),
		slog.String("runner_id", i.RunnerID),
		slog.String("image", i.Image),
		slog.Any("entrypoint", i.Entrypoint),
		slog.Any("arguments", i.Arguments),
		slog.Any("env_keys", i.envKeys()),
		slog.Any("labels", i.Labels),
	)
}

// envKeys returns the keys of Env, sorted.
func (i LaunchInfo) envKeys() []string {
	keys := make([]string, 0, len(i.Env))
	for k := range i.Env {
		keys = append(keys, k)
	}
	return sortedCopy(keys)
}
