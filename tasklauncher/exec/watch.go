package exec

import (
	"context"
	"fmt"
	"time"

	"github.com/odrkit/odrkit/tasklauncher"
)

const (
	// watchBatchLines is the maximum number of lines WatchTask copies out of
	// a task's buffer under its lock at a time.
	watchBatchLines = 256

	// foreignPollInterval is how often WatchTask checks whether a runner
	// that is not a child of this launcher still runs.
	foreignPollInterval = 250 * time.Millisecond
)

// WatchTask sends the runner's output lines to output, from the oldest line
// still buffered, then follows new lines, and returns the runner's exit
// once it has exited and its output was sent.
//
// For a runner that this launcher did not start, such as one started before
// the host restarted, WatchTask sends no output. It waits until the process
// exits and returns exit code -1 with a reason that starts with "exit code
// unknown", because only the parent can read the exit status. When no such
// process exists, the error wraps [tasklauncher.ErrTaskNotFound].
func (l *Launcher) WatchTask(ctx context.Context, state []byte, output func(tasklauncher.OutputLine)) (tasklauncher.TaskExit, error) {
	st, err := decodeState(state)
	if err != nil {
		return tasklauncher.TaskExit{}, fmt.Errorf("watch task: %w", err)
	}
	if st == nil {
		return tasklauncher.TaskExit{}, fmt.Errorf("watch task: the state is empty, so the task never started: %w", tasklauncher.ErrTaskNotFound)
	}
	c, err := l.lookupChild(st)
	if err != nil {
		return tasklauncher.TaskExit{}, fmt.Errorf("watch task %s (pid %d): %w", st.TaskID, st.PID, err)
	}
	if c != nil {
		exit, err := l.followChild(ctx, c, output)
		if err != nil {
			return tasklauncher.TaskExit{}, fmt.Errorf("watch task %s (pid %d): %w", st.TaskID, st.PID, err)
		}
		return exit, nil
	}
	return l.watchForeign(ctx, st)
}

// followChild sends c's buffered and new output to output and returns c's
// exit once c is done.
func (l *Launcher) followChild(ctx context.Context, c *child, output func(tasklauncher.OutputLine)) (tasklauncher.TaskExit, error) {
	var next int64
	batch := make([]tasklauncher.OutputLine, 0, watchBatchLines)
	for {
		if err := ctx.Err(); err != nil {
			return tasklauncher.TaskExit{}, err
		}

		c.mu.Lock()
		var dropped int64
		if first := c.out.first(); next < first {
			dropped = first - next
			next = first
		}
		batch = c.out.appendFrom(batch[:0], next, watchBatchLines)
		next += int64(len(batch))
		done := c.done && next == c.out.total
		exit := c.exit
		changed := c.changed
		c.mu.Unlock()

		if dropped > 0 {
			l.logger.Warn("output lines were dropped from the task's buffer before they were watched",
				"task_id", c.taskID, "runner_id", c.runnerID, "pid", c.key.pid, "dropped_lines", dropped, "max_output_lines", l.maxLines)
		}
		for _, line := range batch {
			output(line)
		}
		if len(batch) > 0 {
			continue
		}
		if done {
			return exit, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return tasklauncher.TaskExit{}, ctx.Err()
		case <-l.closing:
			return tasklauncher.TaskExit{}, ErrClosed
		}
	}
}

// watchForeign waits until a runner that this launcher did not start exits.
func (l *Launcher) watchForeign(ctx context.Context, st *taskState) (tasklauncher.TaskExit, error) {
	if !l.leaderExists(st) {
		return tasklauncher.TaskExit{}, fmt.Errorf("watch task %s: no process with pid %d and start time %d: %w", st.TaskID, st.PID, st.StartTime, tasklauncher.ErrTaskNotFound)
	}
	ticker := time.NewTicker(foreignPollInterval)
	defer ticker.Stop()
	for l.leaderLive(st) {
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return tasklauncher.TaskExit{}, fmt.Errorf("watch task %s (pid %d): %w", st.TaskID, st.PID, ctx.Err())
		case <-l.closing:
			return tasklauncher.TaskExit{}, fmt.Errorf("watch task %s (pid %d): %w", st.TaskID, st.PID, ErrClosed)
		}
	}
	return tasklauncher.TaskExit{
		Code:   -1,
		Reason: fmt.Sprintf("exit code unknown: process %d was not started by this host process, so its exit status cannot be read", st.PID),
	}, nil
}
