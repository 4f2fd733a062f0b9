package exec

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// stopPollInterval is how often StopTask checks whether the process group
// is gone.
const stopPollInterval = 20 * time.Millisecond

// StopTask stops the runner that state names. It sends SIGTERM to the
// runner's process group and waits up to Config.StopGrace for the group to
// exit. If any member still runs, it sends SIGKILL to the group. It returns
// once no member runs and, for a child of this launcher, once the runner is
// reaped.
//
// Once the runner is stopped, or had already exited, StopTask removes its
// output files. A file that is already gone is not an error.
//
// It signals nothing when the state is empty, the runner has already
// exited, or its PID now belongs to another process (the start time
// differs). When ctx is done first, it returns ctx's error, the runner may
// still be running, and its output files are kept.
func (l *Launcher) StopTask(ctx context.Context, state []byte) error {
	st, err := decodeState(state)
	if err != nil {
		return fmt.Errorf("stop task: %w", err)
	}
	if st == nil {
		return nil
	}
	c, err := l.lookupChild(st)
	if err != nil {
		return fmt.Errorf("stop task %s (pid %d): %w", st.TaskID, st.PID, err)
	}

	if !l.leaderLive(st) {
		// NOTE: processes that the runner left behind in its group are not
		// signalled when the runner exited by itself.
		if c != nil {
			if err := l.awaitReaped(ctx, c); err != nil {
				return fmt.Errorf("stop task %s (pid %d): %w", st.TaskID, st.PID, err)
			}
			l.forget(c)
		}
		return l.removeOutput(st)
	}

	log := l.logger.With("task_id", st.TaskID, "runner_id", st.RunnerID, "pid", st.PID)
	log.Info("stopping task", "stop_grace", l.stopGrace)
	if err := signalGroup(st.PGID, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop task %s: %w", st.TaskID, err)
	}
	// A stopped process handles SIGTERM only once it continues.
	if err := signalGroup(st.PGID, syscall.SIGCONT); err != nil {
		return fmt.Errorf("stop task %s: %w", st.TaskID, err)
	}
	exited, err := l.awaitGroupGone(ctx, st, l.stopGrace)
	if err != nil {
		return fmt.Errorf("stop task %s (pid %d) after SIGTERM: %w", st.TaskID, st.PID, err)
	}
	if !exited {
		log.Warn("task still running after the stop grace period; sending SIGKILL", "stop_grace", l.stopGrace)
		if err := signalGroup(st.PGID, syscall.SIGKILL); err != nil {
			return fmt.Errorf("stop task %s: %w", st.TaskID, err)
		}
		if _, err := l.awaitGroupGone(ctx, st, -1); err != nil {
			return fmt.Errorf("stop task %s (pid %d) after SIGKILL: %w", st.TaskID, st.PID, err)
		}
	}
	if c != nil {
		if err := l.awaitReaped(ctx, c); err != nil {
			return fmt.Errorf("stop task %s (pid %d): %w", st.TaskID, st.PID, err)
		}
		l.forget(c)
	}
	log.Info("stopped task")
	return l.removeOutput(st)
}

// removeOutput removes the output files of a stopped task.
func (l *Launcher) removeOutput(st *taskState) error {
	if err := removeOutputFiles(st); err != nil {
		return fmt.Errorf("stop task %s (pid %d): %w; check the permissions of the output directory", st.TaskID, st.PID, err)
	}
	return nil
}

// signalGroup sends sig to process group pgid. A group that no longer exists
// is not an error.
func signalGroup(pgid int, sig syscall.Signal) error {
	if pgid <= 1 {
		// kill(2) with 0 or -1 would reach the host's own group or every
		// process. decodeState rejects such states; this guards the call.
		return fmt.Errorf("refusing to send %v to process group %d", sig, pgid)
	}
	err := syscall.Kill(-pgid, sig)
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("send %v to process group %d: %w", sig, pgid, err)
	}
	return nil
}

// awaitGroupGone polls until no process of the task's group runs. It gives
// up after limit, when limit is not negative, and then returns false.
func (l *Launcher) awaitGroupGone(ctx context.Context, st *taskState, limit time.Duration) (bool, error) {
	var deadline <-chan time.Time
	if limit >= 0 {
		timer := time.NewTimer(limit)
		defer timer.Stop()
		deadline = timer.C
	}
	ticker := time.NewTicker(stopPollInterval)
	defer ticker.Stop()
	for l.groupLive(st) {
		select {
		case <-ticker.C:
		case <-deadline:
			return !l.groupLive(st), nil
		case <-ctx.Done():
			return false, ctx.Err()
		case <-l.closing:
			return false, ErrClosed
		}
	}
	return true, nil
}

// awaitReaped waits until the launcher has reaped c.
func (l *Launcher) awaitReaped(ctx context.Context, c *child) error {
	select {
	case <-c.reaped:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-l.closing:
		return ErrClosed
	}
}
