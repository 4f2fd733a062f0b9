package exec

import (
	"bufio"
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
	// maxLineBytes is the length at which an output line without a line
	// ending is split, which bounds a task's buffer to about
	// MaxOutputLines*64 KiB.
	maxLineBytes = 64 << 10

	// outputDrainTimeout is how long the launcher keeps reading output after
	// the runner exited. A process that the runner left behind can keep the
	// pipes open, and WatchTask must not wait for it forever.
	outputDrainTimeout = 2 * time.Second

	// reapPollInterval is how often a child is checked for exit when no
	// SIGCHLD arrives, which only matters when the host changed how
	// SIGCHLD is handled.
	reapPollInterval = time.Second
)

// child is a runner process that this launcher started and tracks.
type child struct {
	key      childKey
	taskID   string
	runnerID string
	process  *os.Process
	stdout   *os.File
	stderr   *os.File

	mu  sync.Mutex
	out *outputBuffer
	// streams is the number of output pipes not yet at EOF.
	streams int
	// exited is set once the process is reaped, with its exit in exit.
	exited bool
	exit   tasklauncher.TaskExit
	// done is set once the process is reaped and its output is read.
	done bool
	// changed is closed and replaced whenever output, exited or done
	// change, to wake WatchTask calls.
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

func (c *child) appendLine(line tasklauncher.OutputLine) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out.append(line)
	c.broadcast()
}

func (c *child) isReaped() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exited
}

// stopReading makes the output readers return soon, through a read deadline
// in the past.
func (c *child) stopReading() {
	now := time.Now()
	// The readers close the files. A deadline on a closed file fails, which
	// is fine because that reader has returned.
	_ = c.stdout.SetReadDeadline(now)
	_ = c.stderr.SetReadDeadline(now)
}

// abort kills a child whose goroutines were never started, reaps it and
// closes its pipes.
func (c *child) abort() {
	// The group ID is the PID, which stays reserved until the Wait below.
	_ = syscall.Kill(-c.process.Pid, syscall.SIGKILL)
	_, _ = c.process.Wait()
	c.stdout.Close()
	c.stderr.Close()
}

// readOutput reads one output stream of c line by line into its buffer
// until EOF, a read error or a read deadline set by stopReading.
func (l *Launcher) readOutput(c *child, f *os.File, stream tasklauncher.Stream) {
	defer l.wg.Done()
	defer func() {
		f.Close()
		c.mu.Lock()
		c.streams--
		c.broadcast()
		c.mu.Unlock()
	}()

	r := bufio.NewReaderSize(f, maxLineBytes)
	for {
		b, err := r.ReadSlice('\n')
		if len(b) > 0 {
			c.appendLine(tasklauncher.OutputLine{Stream: stream, Line: trimLineEnding(b)})
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			return
		}
	}
}

func trimLineEnding(b []byte) string {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
	}
	return string(b)
}

// waitChild reaps c, records its exit, and then waits for its output to be
// read. It returns early when the launcher closes, leaving c unreaped.
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

	timer := time.NewTimer(outputDrainTimeout)
	defer timer.Stop()
	for {
		c.mu.Lock()
		outputClosed := c.streams == 0
		changed := c.changed
		c.mu.Unlock()
		if outputClosed {
			break
		}
		select {
		case <-changed:
		case <-timer.C:
			l.logger.Warn("task exited but a process it left behind keeps its output open; stopped reading its output",
				"task_id", c.taskID, "runner_id", c.runnerID, "pid", c.key.pid, "timeout", outputDrainTimeout)
			c.stopReading()
		case <-l.closing:
			return
		}
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

// outputBuffer is a ring buffer of the last lines of a task's output.
// Lines are numbered from 0 in the order they were appended.
type outputBuffer struct {
	lines []tasklauncher.OutputLine
	max   int
	// head is the position in lines of the oldest kept line once lines is
	// full.
	head int
	// total is the number of lines ever appended.
	total int64
}

func newOutputBuffer(maxLines int) *outputBuffer {
	return &outputBuffer{max: maxLines}
}

func (b *outputBuffer) append(line tasklauncher.OutputLine) {
	b.total++
	if len(b.lines) < b.max {
		b.lines = append(b.lines, line)
		return
	}
	b.lines[b.head] = line
	b.head = (b.head + 1) % b.max
}

// first returns the number of the oldest kept line, which equals the number
// of lines dropped.
func (b *outputBuffer) first() int64 {
	return b.total - int64(len(b.lines))
}

// appendFrom appends to dst up to limit kept lines, starting at line number
// next, which must be at least first().
func (b *outputBuffer) appendFrom(dst []tasklauncher.OutputLine, next int64, limit int) []tasklauncher.OutputLine {
	for i := next; i < b.total && len(dst) < limit; i++ {
		offset := int(i - b.first())
		dst = append(dst, b.lines[(b.head+offset)%len(b.lines)])
	}
	return dst
}
