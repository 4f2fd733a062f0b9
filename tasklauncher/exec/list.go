package exec

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/odrkit/odrkit/tasklauncher"
)

// ListTasks returns the running runners whose labels include all of labels,
// from any host process. It finds them by the ODRKIT_TASK_LABELS variable in
// /proc/PID/environ and skips the processes it cannot read, such as those of
// other users. The states it returns carry no task or runner ID. They name
// the runner's output files when its stdout and stderr, as /proc/PID/fd
// shows them, are files in this launcher's output directory, so that
// StopTask removes them and WatchTask reads them.
//
// Only process group leaders count as runners: the processes a runner starts
// inherit its environment, but stay in its group.
func (l *Launcher) ListTasks(ctx context.Context, labels map[string]string) ([]tasklauncher.TaskInfo, error) {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("list tasks: %w", ErrClosed)
	}

	pids, err := processPIDs()
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	var tasks []tasklauncher.TaskInfo
	for _, pid := range pids {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("list tasks: %w", err)
		}
		info, ok := l.inspectProcess(pid)
		if !ok || !containsLabels(info.Labels, labels) {
			continue
		}
		tasks = append(tasks, info)
	}
	return tasks, nil
}

// inspectProcess returns the task that process pid runs, and false when it
// runs none or cannot be read.
func (l *Launcher) inspectProcess(pid int) (tasklauncher.TaskInfo, bool) {
	// Reading the stat first skips kernel threads, whose group is 0, and
	// most other processes without reading their environment.
	ps, err := readProcStat(pid)
	if err != nil || ps.pgrp != pid || !ps.live() {
		return tasklauncher.TaskInfo{}, false
	}
	value, ok, err := readEnviron(pid, LabelsEnv)
	if err != nil || !ok {
		return tasklauncher.TaskInfo{}, false
	}
	var taskLabels map[string]string
	if err := json.Unmarshal([]byte(value), &taskLabels); err != nil {
		l.logger.Debug("skipping process with invalid task labels", "pid", pid, "error", err)
		return tasklauncher.TaskInfo{}, false
	}
	if taskLabels == nil {
		taskLabels = map[string]string{}
	}
	st := taskState{
		PID:        pid,
		PGID:       pid,
		StartTime:  ps.startTime,
		BootID:     l.bootID,
		StdoutPath: l.outputFileOf(pid, 1, stdoutSuffix),
		StderrPath: l.outputFileOf(pid, 2, stderrSuffix),
	}
	return tasklauncher.TaskInfo{State: st.encode(), Labels: taskLabels, Running: true}, true
}

func containsLabels(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// outputFileOf returns the path of the file that descriptor fd of process
// pid refers to, when that is an output file in the launcher's output
// directory with the given suffix, and "" otherwise.
func (l *Launcher) outputFileOf(pid, fd int, suffix string) string {
	target, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/" + strconv.Itoa(fd))
	// A removed file shows as "PATH (deleted)", which fails the suffix
	// check.
	if err != nil || checkOutputPath(target, suffix) != nil {
		return ""
	}
	dir := filepath.Dir(target)
	if dir != l.outputDir && dir != l.outputDirResolved {
		return ""
	}
	return target
}
