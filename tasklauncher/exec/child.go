package exec

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/odrkit/odrkit/tasklauncher"
)

const (
	// outputDrainTimeout is how long WatchTask keeps following the output
	// after the runner exited while processes it left behind in its
	// process group still run and may still write.
	outputDrainTimeout = 2 * time.Second

	// reapPollInterval is how often a child is checked for exit when no
	// SIGCHLD arrives, which only matters when the host changed how
	// SIGCHLD is handled.
	reapPollInterval = time.Second
)

// child is a runner process that this launcher started and tracks.
type child struct {
	key        childKey
	taskID     string
	runnerID   string
	process    *os.Process
	stdoutPath string
	stderrPath string

	mu sync.Mutex
	// exited is set once the process is reaped, with its exit in exit.
	exited bool
	exit   tasklauncher.TaskExit
	// done is set once the process is reaped and no process of its group
	// runs any more, or outputDrainTimeout after the exit.
	done bool
	// changed is closed and replaced whenever exited or done change, to
	// wake WatchTask calls.
	changed chan struct{}
	// reaped is closed once the process is reaped.
	reaped chan struct{}
}

// broadcast wakes the WatchTask calls that wait for a change. The caller
// holds c.mu.
func (c *child) broadcast() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *child) isReaped() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exited
}

// status returns whether c is done, its exit, and a channel that is closed
// on the next change.
func (c *child) status() (bool, tasklauncher.TaskExit, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done, c.exit, c.changed
}

// abort kills a child whose goroutine was never started, reaps it and
// removes its output files.
func (c *child) abort() {
	// The group ID is the PID, which stays reserved until the Wait below.
	_ = syscall.Kill(-c.process.Pid, syscall.SIGKILL)
	_, _ = c.process.Wait()
	_ = removeOutputFiles(&taskState{StdoutPath: c.stdoutPath, StderrPath: c.stderrPath})
}

// waitChild reaps c and records its exit. Then it waits until no process of
// c's group runs, for at most outputDrainTimeout, because those processes
// can still write to c's output files, and marks c done. It returns early
// when the launcher closes, leaving c unreaped.
func (l *Launcher) waitChild(c *child) {
	defer l.wg.Done()

	exit, ok := l.reap(c)
	if !ok {
		return
	}
	c.mu.Lock()
	c.exited = true
	c.exit = exit
	close(c.reaped)
	c.broadcast()
	c.mu.Unlock()
	l.logger.Info("task exited", "task_id", c.taskID, "runner_id", c.runnerID, "pid", c.key.pid, "exit_code", exit.Code, "reason", exit.Reason)

	st := &taskState{PID: c.key.pid, PGID: c.key.pid, StartTime: c.key.startTime, BootID: l.bootID}
	drained, err := l.awaitGroupGone(context.Background(), st, outputDrainTimeout)
	if errors.Is(err, ErrClosed) {
		return
	}
	if !drained {
		l.logger.Warn("task exited but a process it left behind in its process group still runs and may keep its output open; stopped following its output",
			"task_id", c.taskID, "runner_id", c.runnerID, "pid", c.key.pid, "timeout", outputDrainTimeout)
	}

	c.mu.Lock()
	c.done = true
	c.broadcast()
	c.mu.Unlock()
}

// reap waits for c to exit and reaps it. It returns false when the launcher
// closes first.
//
// It does not block in wait4(2), which nothing could interrupt on Close.
// Instead it polls with WNOHANG after every SIGCHLD. The signal is
// registered before the first poll, so an exit between a poll and the wait
// for the signal is not missed.
func (l *Launcher) reap(c *child) (tasklauncher.TaskExit, bool) {
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	defer signal.Stop(sigchld)
	ticker := time.NewTicker(reapPollInterval)
	defer ticker.Stop()

	pid := c.key.pid
	for {
		var status syscall.WaitStatus
		got, err := syscall.Wait4(pid, &status, syscall.WNOHANG, nil)
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case err != nil:
			// ECHILD: another part of the host process reaped it.
			_ = c.process.Release()
			return tasklauncher.TaskExit{Code: -1, Reason: fmt.Sprintf("exit code unknown: process %d was reaped outside the launcher: %v", pid, err)}, true
		case got == pid:
			// The os.Process never saw the exit; Release frees its handle.
			_ = c.process.Release()
			return exitFromStatus(status), true
		}
		select {
		case <-sigchld:
		case <-ticker.C:
		case <-l.closing:
			return tasklauncher.TaskExit{}, false
		}
	}
}

func exitFromStatus(status syscall.WaitStatus) tasklauncher.TaskExit {
	switch {
	case status.Exited():
		return tasklauncher.TaskExit{Code: status.ExitStatus()}
	case status.Signaled():
		reason := "killed by signal: " + status.Signal().String()
		if status.CoreDump() {
			reason += " (core dumped)"
		}
		return tasklauncher.TaskExit{Code: -1, Reason: reason}
	default:
		return tasklauncher.TaskExit{Code: -1, Reason: fmt.Sprintf("exit code unknown: unexpected wait status %#x", uint32(status))}
	}
}
