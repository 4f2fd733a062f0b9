package exec

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/odrkit/odrkit/tasklauncher"
)

const (
	// watchBatchLines is the maximum number of lines WatchTask reads from
	// one stream before it turns to the other one.
	watchBatchLines = 256

	// outputPollInterval is how often WatchTask checks the output files for
	// new data and a runner that is not a child of this launcher for its
	// exit.
	outputPollInterval = 100 * time.Millisecond
)

// WatchTask sends the runner's output lines to output, from the start of
// its output files, then follows new lines, and returns the runner's exit
// once it has exited and its output was sent.
//
// For a runner that this launcher did not start, such as one started before
// the host restarted, WatchTask sends the output in the same way. It
// returns exit code -1 with a reason that starts with "exit code unknown",
// because only the parent can read the exit status. The error wraps
// [tasklauncher.ErrTaskNotFound] when neither the process nor its output
// files exist, as after StopTask.
//
// A state from ListTasks names output files only when the runner's stdout
// and stderr are files in this launcher's output directory. For other
// states without them, WatchTask sends no output and only waits for the
// exit.
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

	readers, err := l.openOutput(st)
	if err != nil {
		return tasklauncher.TaskExit{}, fmt.Errorf("watch task %s (pid %d): %w", st.TaskID, st.PID, err)
	}
	defer func() {
		for _, r := range readers {
			r.close()
		}
	}()
	// The files are opened before the process is checked. StopTask removes
	// them only after the process is gone, so a concurrent StopTask either
	// leaves open files to read or leads to ErrTaskNotFound.
	exists := c != nil || l.leaderExists(st)
	if !exists && len(readers) == 0 {
		return tasklauncher.TaskExit{}, fmt.Errorf("watch task %s: no process with pid %d and start time %d, and no output files: %w", st.TaskID, st.PID, st.StartTime, tasklauncher.ErrTaskNotFound)
	}

	var finished func() (bool, tasklauncher.TaskExit, <-chan struct{})
	if c != nil {
		finished = c.status
	} else {
		finished = l.foreignStatus(st)
	}
	exit, err := l.follow(ctx, readers, output, finished)
	if err != nil {
		return tasklauncher.TaskExit{}, fmt.Errorf("watch task %s (pid %d): %w", st.TaskID, st.PID, err)
	}
	return exit, nil
}

// openOutput opens the output files that st names. It skips a file that
// does not exist, and logs a warning for it while the process still exists,
// because then something other than StopTask removed it.
func (l *Launcher) openOutput(st *taskState) ([]*lineReader, error) {
	var readers []*lineReader
	for _, file := range []struct {
		path   string
		stream tasklauncher.Stream
	}{
		{st.StdoutPath, tasklauncher.Stdout},
		{st.StderrPath, tasklauncher.Stderr},
	} {
		if file.path == "" {
			continue
		}
		f, err := os.Open(file.path)
		if errors.Is(err, fs.ErrNotExist) {
			if l.leaderExists(st) {
				l.logger.Warn("output file of a running task is missing; watching without it",
					"task_id", st.TaskID, "pid", st.PID, "stream", file.stream, "path", file.path)
			}
			continue
		}
		if err != nil {
			for _, r := range readers {
				r.close()
			}
			return nil, fmt.Errorf("open %s file: %w", file.stream, err)
		}
		readers = append(readers, newLineReader(f, file.stream))
	}
	return readers, nil
}

// foreignStatus returns the status function of follow for a runner that
// this launcher did not start. The runner is done once its process has
// exited and no process of its group runs, or outputDrainTimeout after the
// exit.
func (l *Launcher) foreignStatus(st *taskState) func() (bool, tasklauncher.TaskExit, <-chan struct{}) {
	exit := tasklauncher.TaskExit{
		Code:   -1,
		Reason: fmt.Sprintf("exit code unknown: process %d was not started by this host process, so its exit status cannot be read", st.PID),
	}
	var exitSeen time.Time
	done := false
	return func() (bool, tasklauncher.TaskExit, <-chan struct{}) {
		if done {
			return true, exit, nil
		}
		if exitSeen.IsZero() {
			if l.leaderLive(st) {
				return false, exit, nil
			}
			exitSeen = time.Now()
		}
		switch {
		case !l.groupLive(st):
			done = true
		case time.Since(exitSeen) >= outputDrainTimeout:
			l.logger.Warn("task exited but a process it left behind in its process group still runs and may keep its output open; stopped following its output",
				"task_id", st.TaskID, "runner_id", st.RunnerID, "pid", st.PID, "timeout", outputDrainTimeout)
			done = true
		}
		return done, exit, nil
	}
}

// follow sends the lines of readers to output until status reports the
// runner done and the files are read to their end, and returns the exit
// that status reports. status also returns a channel that is closed when
// its result changes, or nil when only polling finds the change.
func (l *Launcher) follow(ctx context.Context, readers []*lineReader, output func(tasklauncher.OutputLine), status func() (bool, tasklauncher.TaskExit, <-chan struct{})) (tasklauncher.TaskExit, error) {
	ticker := time.NewTicker(outputPollInterval)
	defer ticker.Stop()
	for {
		if err := ctx.Err(); err != nil {
			return tasklauncher.TaskExit{}, err
		}
		// The status is taken before the files are read. Once it reports
		// done, the runner wrote its last line before this read, so a read
		// that finds no new line has reached the end of its output.
		done, exit, changed := status()

		sent := 0
		for _, r := range readers {
			for range watchBatchLines {
				line, ok, err := r.next()
				if err != nil {
					return tasklauncher.TaskExit{}, err
				}
				if !ok {
					break
				}
				output(tasklauncher.OutputLine{Stream: r.stream, Line: line})
				sent++
			}
		}
		if sent > 0 {
			continue
		}
		if done {
			for _, r := range readers {
				if line, ok := r.rest(); ok {
					output(tasklauncher.OutputLine{Stream: r.stream, Line: line})
				}
			}
			return exit, nil
		}

		select {
		case <-changed:
		case <-ticker.C:
		case <-ctx.Done():
			return tasklauncher.TaskExit{}, ctx.Err()
		case <-l.closing:
			return tasklauncher.TaskExit{}, ErrClosed
		}
	}
}
