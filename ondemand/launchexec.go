package ondemand

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/odrkit/odrkit/tasklauncher"
)

// Job kinds of the built-in task operations. A static runner that executes
// start, watch and stop jobs registers a handler for each of them that
// calls LaunchExecutor.Execute.
const (
	KindStartTask = "odrkit.start_task"
	KindWatchTask = "odrkit.watch_task"
	KindStopTask  = "odrkit.stop_task"
)

// LaunchKinds returns the job kinds LaunchExecutor.Execute handles.
func LaunchKinds() []string { return []string{KindStartTask, KindWatchTask, KindStopTask} }

// launchPayload is the payload of start, watch and stop jobs.
type launchPayload struct {
	Plugin string                   `json:"plugin"`
	Config json.RawMessage          `json:"config"`
	Info   *tasklauncher.LaunchInfo `json:"info,omitempty"`
	State  []byte                   `json:"state,omitempty"`
	// Adopt makes a start job that runs again take over the resource an
	// earlier attempt of the same task created, if one exists, instead of
	// creating a second one.
	Adopt bool `json:"adopt,omitempty"`
	// Retries is how often a start job retries a transient StartTask
	// error, or a stop job a StopTask error.
	Retries int `json:"retries,omitempty"`
	// RetryBackoff is the wait before the first retry.
	RetryBackoff time.Duration `json:"retry_backoff,omitempty"`
}

// maxRetryBackoff caps the wait between retries.
const maxRetryBackoff = 30 * time.Second

// backoff returns the wait before retry number n, counted from 0.
func (p *launchPayload) backoff(n int) time.Duration {
	d := max(p.RetryBackoff, time.Millisecond)
	for range n {
		d *= 2
		if d >= maxRetryBackoff {
			return maxRetryBackoff
		}
	}
	return d
}

// sleep waits for d or until ctx ends, and reports whether the wait ended
// normally.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// watchResult is the result of a watch job.
type watchResult struct {
	// Watched is false when the launcher cannot watch tasks.
	Watched bool   `json:"watched"`
	Code    int    `json:"code"`
	Reason  string `json:"reason,omitempty"`
}

func decodeWatchResult(b []byte) (tasklauncher.TaskExit, bool) {
	var r watchResult
	if err := json.Unmarshal(b, &r); err != nil || !r.Watched {
		return tasklauncher.TaskExit{}, false
	}
	return tasklauncher.TaskExit{Code: r.Code, Reason: r.Reason}, true
}

// LaunchExecutor executes start, watch and stop jobs with the launchers of
// a registry. The Manager's embedded launcher runner uses one; a static
// runner that launches runners for a host uses another. It keeps one
// launcher per plugin and config, so that the launcher that started a task
// also watches and stops it.
type LaunchExecutor struct {
	registry *tasklauncher.Registry
	logger   *slog.Logger

	mu        sync.Mutex
	closed    bool
	launchers map[[32]byte]tasklauncher.Launcher
}

// NewLaunchExecutor returns an executor for the plugins in registry.
func NewLaunchExecutor(registry *tasklauncher.Registry, logger *slog.Logger) *LaunchExecutor {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &LaunchExecutor{registry: registry, logger: logger, launchers: make(map[[32]byte]tasklauncher.Launcher)}
}

// Execute runs one start, watch or stop job and returns its result: the
// launcher state for a start job, the task's exit for a watch job, nothing
// for a stop job. output receives the task's own output lines during a
// watch job.
func (x *LaunchExecutor) Execute(ctx context.Context, kind string, payload []byte, output func(tasklauncher.OutputLine)) ([]byte, error) {
	var p launchPayload
	if err := json.Unmarshal(payload, &p); err != nil {
		return nil, fmt.Errorf("decode %s payload: %w", kind, err)
	}
	l, err := x.launcher(p.Plugin, p.Config)
	if err != nil {
		return nil, err
	}
	switch kind {
	case KindStartTask:
		if p.Info == nil {
			return nil, fmt.Errorf("%s payload has no launch info", kind)
		}
		return x.start(ctx, l, &p, output)
	case KindWatchTask:
		w, ok := l.(tasklauncher.Watcher)
		if !ok || len(p.State) == 0 {
			return json.Marshal(watchResult{})
		}
		exit, err := w.WatchTask(ctx, p.State, output)
		if err != nil {
			return nil, fmt.Errorf("watch task: %w", err)
		}
		return json.Marshal(watchResult{Watched: true, Code: exit.Code, Reason: exit.Reason})
	case KindStopTask:
		if len(p.State) == 0 {
			return nil, nil
		}
		return nil, x.stop(ctx, l, &p, output)
	}
	return nil, fmt.Errorf("job kind %q is not a launch operation; expected one of %v", kind, LaunchKinds())
}

// start runs StartTask, retrying transient errors as the payload allows.
func (x *LaunchExecutor) start(ctx context.Context, l tasklauncher.Launcher, p *launchPayload, output func(tasklauncher.OutputLine)) ([]byte, error) {
	if p.Adopt {
		state, err := adoptEarlierAttempt(ctx, l, p.Info.TaskID)
		if err != nil || state != nil {
			return state, err
		}
	}
	for n := 0; ; n++ {
		state, err := l.StartTask(ctx, p.Info)
		if err == nil || !tasklauncher.IsTransient(err) || n >= p.Retries {
			return state, err
		}
		wait := p.backoff(n)
		x.logger.Warn("StartTask failed with a transient error; retrying", "task", p.Info.TaskID, "retry", n+1, "of", p.Retries, "in", wait, "error", err)
		output(tasklauncher.OutputLine{Stream: tasklauncher.Stderr, Line: fmt.Sprintf("launch failed with a transient error, retry %d of %d in %s: %v", n+1, p.Retries, wait, err)})
		if len(state) > 0 {
			if err := l.StopTask(ctx, state); err != nil {
				return nil, fmt.Errorf("stop the failed launch before retrying: %w", err)
			}
		}
		if !sleep(ctx, wait) {
			return nil, fmt.Errorf("launch retry cancelled: %w (last error: %w)", ctx.Err(), err)
		}
	}
}

// stop runs StopTask, retrying any error as the payload allows.
func (x *LaunchExecutor) stop(ctx context.Context, l tasklauncher.Launcher, p *launchPayload, output func(tasklauncher.OutputLine)) error {
	for n := 0; ; n++ {
		err := l.StopTask(ctx, p.State)
		if err == nil {
			return nil
		}
		if n >= p.Retries {
			return fmt.Errorf("stop failed after %d attempts: %w", n+1, err)
		}
		wait := p.backoff(n)
		x.logger.Warn("StopTask failed; retrying", "retry", n+1, "of", p.Retries, "in", wait, "error", err)
		output(tasklauncher.OutputLine{Stream: tasklauncher.Stderr, Line: fmt.Sprintf("stop failed, retry %d of %d in %s: %v", n+1, p.Retries, wait, err)})
		if !sleep(ctx, wait) {
			return fmt.Errorf("stop retry cancelled: %w (last error: %w)", ctx.Err(), err)
		}
	}
}

func (x *LaunchExecutor) launcher(plugin string, config json.RawMessage) (tasklauncher.Launcher, error) {
	key := sha256.Sum256(append([]byte(plugin+"\x00"), config...))
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return nil, errors.New("launch executor is closed")
	}
	if l, ok := x.launchers[key]; ok {
		return l, nil
	}
	p, ok := x.registry.Lookup(plugin)
	if !ok {
		return nil, fmt.Errorf("launcher plugin %q is not registered on this runner; registered: %v", plugin, x.registry.Names())
	}
	cfg := p.NewConfig()
	if len(config) > 0 && string(config) != "null" {
		if err := json.Unmarshal(config, cfg); err != nil {
			return nil, fmt.Errorf("decode config of launcher plugin %q: %w", plugin, err)
		}
	}
	l, err := x.registry.NewLauncher(plugin, cfg, tasklauncher.Options{Logger: x.logger})
	if err != nil {
		return nil, fmt.Errorf("create launcher %q: %w", plugin, err)
	}
	x.launchers[key] = l
	return l, nil
}

// Close closes every launcher the executor created.
func (x *LaunchExecutor) Close() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return nil
	}
	x.closed = true
	var errs []error
	for _, l := range x.launchers {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}
