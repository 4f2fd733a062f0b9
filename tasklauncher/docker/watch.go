package docker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"syscall"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/odrkit/odrkit/tasklauncher"
)

// maxLineBytes is the length at which an output line without a line ending
// is split, as the exec launcher does.
const maxLineBytes = 64 << 10

// WatchTask sends the container's output lines to output, from the
// container's start, follows them until the container exits, and returns
// its exit code as the engine reports it.
//
// Lines of stdout and stderr keep their stream. Their order across the two
// streams is the order of the engine's log, which is the order in which
// the engine read them.
//
// Docker reports a process killed by a signal with the exit code 128 plus
// the signal number. The engine does not tell it apart from a process that
// exited with that code itself, so WatchTask returns the code with a reason
// that names the likely signal. A container killed for lack of memory has
// the reason "OOMKilled".
//
// When the container does not exist, the error wraps
// [tasklauncher.ErrTaskNotFound]. When the engine cannot return the logs,
// for example with a logging driver that keeps none, WatchTask logs a
// warning and only waits for the exit.
func (l *Launcher) WatchTask(ctx context.Context, state []byte, output func(tasklauncher.OutputLine)) (tasklauncher.TaskExit, error) {
	st, err := decodeState(state)
	if err != nil {
		return tasklauncher.TaskExit{}, fmt.Errorf("watch task: %w", err)
	}
	if st == nil {
		return tasklauncher.TaskExit{}, fmt.Errorf("watch task: the state is empty, so the task never started: %w", tasklauncher.ErrTaskNotFound)
	}
	if err := l.checkOpen(); err != nil {
		return tasklauncher.TaskExit{}, fmt.Errorf("watch task %s: %w", st.TaskID, err)
	}
	inspected, err := l.client.ContainerInspect(ctx, st.ContainerID, client.ContainerInspectOptions{})
	if err != nil {
		return tasklauncher.TaskExit{}, l.watchError(ctx, st, err)
	}

	if err := l.followLogs(ctx, st, inspected.Container.Config != nil && inspected.Container.Config.Tty, output); err != nil {
		return tasklauncher.TaskExit{}, err
	}

	wait := l.client.ContainerWait(ctx, st.ContainerID, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	var code int64
	select {
	case res := <-wait.Result:
		code = res.StatusCode
	case err := <-wait.Error:
		return tasklauncher.TaskExit{}, l.watchError(ctx, st, err)
	}
	exit := tasklauncher.TaskExit{Code: int(code)}

	// The exit state adds the reason. The container can be removed in
	// the meantime, and then the code alone is returned.
	inspected, err = l.client.ContainerInspect(ctx, st.ContainerID, client.ContainerInspectOptions{})
	if err == nil && inspected.Container.State != nil {
		exit.Reason = exitReason(inspected.Container.State, exit.Code)
	}
	l.logger.Info("task exited", "task_id", st.TaskID, "runner_id", st.RunnerID, "container_id", st.ContainerID, "exit_code", exit.Code, "reason", exit.Reason)
	return exit, nil
}

// followLogs sends the container's log lines to output until the log ends,
// which the engine does once the container has stopped.
func (l *Launcher) followLogs(ctx context.Context, st *taskState, tty bool, output func(tasklauncher.OutputLine)) error {
	logs, err := l.client.ContainerLogs(ctx, st.ContainerID, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Follow: true})
	if err != nil {
		if ctx.Err() != nil || cerrdefs.IsNotFound(err) {
			return l.watchError(ctx, st, err)
		}
		l.logger.Warn("cannot read the container's logs; watching for its exit only", "task_id", st.TaskID, "container_id", st.ContainerID, "error", err)
		return nil
	}
	defer logs.Close()

	stdout := &lineWriter{stream: tasklauncher.Stdout, output: output}
	stderr := &lineWriter{stream: tasklauncher.Stderr, output: output}
	// Both writers run on this goroutine, so output is called from one
	// goroutine at a time.
	if tty {
		_, err = io.Copy(stdout, logs)
	} else {
		_, err = stdcopy.StdCopy(stdout, stderr, logs)
	}
	stdout.flush()
	stderr.flush()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("watch task %s (container %s): %w", st.TaskID, st.ContainerID, ctx.Err())
		}
		l.logger.Warn("reading the container's logs failed; watching for its exit only", "task_id", st.TaskID, "container_id", st.ContainerID, "error", err)
	}
	return nil
}

// watchError wraps an error of an engine call made by WatchTask.
func (l *Launcher) watchError(ctx context.Context, st *taskState, err error) error {
	switch {
	case cerrdefs.IsNotFound(err):
		return fmt.Errorf("watch task %s: container %s does not exist: %w", st.TaskID, st.ContainerID, tasklauncher.ErrTaskNotFound)
	case ctx.Err() != nil:
		return fmt.Errorf("watch task %s (container %s): %w", st.TaskID, st.ContainerID, ctxErr(ctx, err))
	}
	return fmt.Errorf("watch task %s (container %s): %w", st.TaskID, st.ContainerID, l.engineError(err))
}

// exitReason describes an exit beyond its code, or returns "".
func exitReason(s *container.State, code int) string {
	switch {
	case s.OOMKilled:
		return "OOMKilled"
	case s.Error != "":
		return s.Error
	case code > 128 && code < 128+65:
		return fmt.Sprintf("exit code %d, which Docker reports for a process killed by signal: %v", code, syscall.Signal(code-128))
	}
	return ""
}

// lineWriter splits what is written to it into lines and sends each to
// output, without its line ending.
type lineWriter struct {
	stream tasklauncher.Stream
	output func(tasklauncher.OutputLine)
	buf    []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.buf = append(w.buf, p...)
			for len(w.buf) >= maxLineBytes {
				w.emit(w.buf[:maxLineBytes])
				w.buf = w.buf[maxLineBytes:]
			}
			break
		}
		w.buf = append(w.buf, p[:i]...)
		p = p[i+1:]
		line := w.buf
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		for len(line) > maxLineBytes {
			w.emit(line[:maxLineBytes])
			line = line[maxLineBytes:]
		}
		w.emit(line)
		w.buf = w.buf[:0]
	}
	return n, nil
}

// flush sends a last line that has no line ending.
func (w *lineWriter) flush() {
	if len(w.buf) > 0 {
		w.emit(w.buf)
		w.buf = nil
	}
}

func (w *lineWriter) emit(line []byte) {
	w.output(tasklauncher.OutputLine{Stream: w.stream, Line: string(line)})
}
