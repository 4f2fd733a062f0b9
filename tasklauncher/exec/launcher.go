// Package exec is the local-process launcher: it runs each on-demand runner
// as a child process of the host, in a process group of its own.
//
// The launcher reads /proc, so it runs on Linux only.
//
// # Output
//
// The runner's stdout and stderr are files, OUTPUT_DIR/TASK.stdout and
// OUTPUT_DIR/TASK.stderr, which StartTask creates with mode 0600 and passes
// to the runner as its file descriptors 1 and 2. TASK is the task ID with
// bytes other than letters, digits, '-', '_' and '.' replaced by '_'. When
// a file of that name exists, StartTask adds a random suffix to the name.
// No pipe or goroutine of the host process sits between the runner and its
// output. So the runner keeps running and writing when the host process
// exits or crashes, and a later host process can still read its output.
//
// WatchTask streams both files from their start and follows them, checking
// for new output every 100 ms, until the runner has exited and the files
// are read to their end. Lines longer than 64 KiB are split into parts of
// 64 KiB. The order of lines within one stream is kept. Lines of stdout and
// stderr are interleaved in the order WatchTask read them, which can differ
// from the order the runner wrote them. After the runner exits, WatchTask
// follows the files for at most 2 more seconds while processes the runner
// left behind in its process group still run, and then returns.
//
// StopTask removes the two files once the runner is stopped, also when it
// had exited by itself. A host process that crashes leaves the files of
// its runners behind until a later host process stops those tasks, which
// odrkit's reconciliation after a restart does. The files have no size
// limit, so a runner that writes without end fills the file system of the
// output directory.
//
// # State
//
// The launcher state is JSON with the runner's PID, process group ID, start
// time, boot ID and the paths of its output files. A later host process
// compares the start time from /proc/PID/stat with the state before it
// signals anything, so it never signals an unrelated process that reuses
// the PID.
//
// # Labels
//
// StartTask passes the task's labels to the runner as a JSON object in the
// environment variable ODRKIT_TASK_LABELS. ListTasks finds runners by
// reading that variable from /proc/PID/environ, which works from any host
// process of the same user, also after a restart.
//
// # Close
//
// Close leaves the runners running, and they keep writing their output
// files. It stops the goroutines that wait for the runners' exit and
// returns. A runner that exits after Close stays a zombie until the host
// process exits, because nothing reaps it. A new Launcher can still watch
// and stop those runners from their state.
package exec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/odrkit/odrkit/tasklauncher"
)

// ErrClosed is returned by the Launcher's methods after Close.
var ErrClosed = errors.New("exec launcher is closed")

var (
	_ tasklauncher.Launcher = (*Launcher)(nil)
	_ tasklauncher.Watcher  = (*Launcher)(nil)
	_ tasklauncher.Lister   = (*Launcher)(nil)
)

// Launcher runs on-demand runners as local child processes. It is safe for
// concurrent use.
type Launcher struct {
	cfg       Config
	stopGrace time.Duration
	// outputDir is the absolute path of Config.OutputDir, and
	// outputDirResolved the same without symbolic links, as
	// /proc/PID/fd shows it.
	outputDir         string
	outputDirResolved string
	logger            *slog.Logger
	bootID            string

	mu       sync.Mutex
	closed   bool
	children map[childKey]*child
	// closing is closed by Close. It stops the goroutines in wg and ends
	// WatchTask calls.
	closing chan struct{}
	// wg counts the goroutines that wait for children, and StartTask calls
	// in progress.
	wg sync.WaitGroup
}

// childKey identifies a child: a PID together with its start time.
type childKey struct {
	pid       int
	startTime uint64
}

// New returns a launcher for cfg. It creates the output directory when it
// does not exist. A nil opts.Logger discards log records.
func New(cfg *Config, opts tasklauncher.Options) (*Launcher, error) {
	if cfg == nil {
		return nil, errors.New("exec launcher: config is nil; pass the config returned by the plugin's NewConfig")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("exec launcher config: %w", err)
	}
	grace, err := parseStopGrace(cfg.StopGrace)
	if err != nil {
		return nil, fmt.Errorf("exec launcher config: %w", err)
	}
	outputDir, err := prepareOutputDir(cfg.OutputDir)
	if err != nil {
		return nil, fmt.Errorf("exec launcher config: %w", err)
	}
	outputDirResolved, err := filepath.EvalSymlinks(outputDir)
	if err != nil {
		return nil, fmt.Errorf("exec launcher config: output_dir: %w", err)
	}

	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	c := *cfg
	c.Args = slices.Clone(cfg.Args)
	c.Env = maps.Clone(cfg.Env)
	c.OutputDir = outputDir
	return &Launcher{
		cfg:               c,
		stopGrace:         grace,
		outputDir:         outputDir,
		outputDirResolved: outputDirResolved,
		logger:            logger,
		bootID:            readBootID(),
		children:          make(map[childKey]*child),
		closing:           make(chan struct{}),
	}, nil
}

// StartTask starts the runner process for info and returns its state.
//
// The command is Config.Command, else info.Entrypoint[0], else the host's
// own executable. The arguments are Config.Args when set, else
// info.Entrypoint[1:] followed by info.Arguments. info.Image is ignored.
// The environment is the host's environment, then Config.Env, then
// info.Env, with later entries winning, and ODRKIT_TASK_LABELS.
//
// The runner's stdout and stderr go to new files in Config.OutputDir, named
// after info.TaskID, as the package documentation describes.
//
// When ctx is done before StartTask returns, the process is killed and
// reaped and its output files are removed before StartTask returns the
// error, so nothing is left behind.
func (l *Launcher) StartTask(ctx context.Context, info *tasklauncher.LaunchInfo) ([]byte, error) {
	if info == nil {
		return nil, errors.New("start task: launch info is nil")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start task %s: %w", info.TaskID, err)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, fmt.Errorf("start task %s: %w", info.TaskID, ErrClosed)
	}
	// Close waits for this call, so it cannot miss a child started here.
	l.wg.Add(1)
	l.mu.Unlock()
	defer l.wg.Done()

	cmd, err := l.command(info)
	if err != nil {
		return nil, fmt.Errorf("start task %s: %w", info.TaskID, err)
	}
	c, err := l.startChild(cmd, info)
	if err != nil {
		return nil, fmt.Errorf("start task %s: %w", info.TaskID, err)
	}

	if err := ctx.Err(); err != nil {
		c.abort()
		return nil, fmt.Errorf("start task %s: %w", info.TaskID, err)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		c.abort()
		return nil, fmt.Errorf("start task %s: %w", info.TaskID, ErrClosed)
	}
	l.children[c.key] = c
	l.wg.Add(1)
	go l.waitChild(c)
	l.mu.Unlock()

	l.logger.Info("started task", "task_id", info.TaskID, "runner_id", info.RunnerID, "pid", c.key.pid, "command", cmd.Path, "stdout", c.stdoutPath, "stderr", c.stderrPath)
	st := taskState{
		PID:        c.key.pid,
		PGID:       c.key.pid,
		StartTime:  c.key.startTime,
		BootID:     l.bootID,
		TaskID:     info.TaskID,
		RunnerID:   info.RunnerID,
		StdoutPath: c.stdoutPath,
		StderrPath: c.stderrPath,
	}
	return st.encode(), nil
}

// command builds the runner's command line and environment from the config
// and info.
func (l *Launcher) command(info *tasklauncher.LaunchInfo) (*osexec.Cmd, error) {
	for _, key := range slices.Sorted(maps.Keys(info.Env)) {
		if err := validateEnvEntry(key, info.Env[key]); err != nil {
			return nil, fmt.Errorf("launch env: %w", err)
		}
	}
	labels := info.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	labelsJSON, err := json.Marshal(labels)
	if err != nil {
		return nil, fmt.Errorf("encode labels: %w", err)
	}

	name := l.cfg.Command
	if name == "" && len(info.Entrypoint) > 0 {
		name = info.Entrypoint[0]
	}
	if name == "" {
		name, err = os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find the host's executable to run as the runner: %w; set command in the exec launcher config", err)
		}
	}
	var args []string
	if len(l.cfg.Args) > 0 {
		args = slices.Clone(l.cfg.Args)
	} else {
		if len(info.Entrypoint) > 1 {
			args = slices.Clone(info.Entrypoint[1:])
		}
		args = append(args, info.Arguments...)
	}

	cmd := osexec.Command(name, args...)
	if cmd.Err != nil {
		return nil, fmt.Errorf("command %q: %w; set command in the exec launcher config, or the entrypoint, to an executable", name, cmd.Err)
	}
	cmd.Dir = l.cfg.Dir
	// os/exec keeps the last value of a duplicated key, so later entries win.
	env := os.Environ()
	for _, key := range slices.Sorted(maps.Keys(l.cfg.Env)) {
		env = append(env, key+"="+l.cfg.Env[key])
	}
	for _, key := range slices.Sorted(maps.Keys(info.Env)) {
		env = append(env, key+"="+info.Env[key])
	}
	cmd.Env = append(env, LabelsEnv+"="+string(labelsJSON))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, nil
}

// startChild starts cmd with its output going to new files and returns the
// child. The caller starts its goroutine or calls abort.
func (l *Launcher) startChild(cmd *osexec.Cmd, info *tasklauncher.LaunchInfo) (*child, error) {
	files, err := createOutputFiles(l.outputDir, info.TaskID)
	if err != nil {
		return nil, err
	}
	// An *os.File is passed to the child as its file descriptor, with no
	// goroutine copying the output.
	cmd.Stdout = files.stdout
	cmd.Stderr = files.stderr
	startErr := cmd.Start()
	// The child holds its own descriptors of the files.
	files.closeFiles()
	if startErr != nil {
		_ = removeOutputFiles(&taskState{StdoutPath: files.stdoutPath, StderrPath: files.stderrPath})
		return nil, fmt.Errorf("run %q: %w", cmd.Path, startErr)
	}

	c := &child{
		taskID:     info.TaskID,
		runnerID:   info.RunnerID,
		process:    cmd.Process,
		stdoutPath: files.stdoutPath,
		stderrPath: files.stderrPath,
		changed:    make(chan struct{}),
		reaped:     make(chan struct{}),
	}
	pid := cmd.Process.Pid
	// The child cannot have been reaped yet, so its /proc entry exists
	// even when it has already exited.
	ps, err := readProcStat(pid)
	if err != nil {
		c.abort()
		return nil, fmt.Errorf("read start time of process %d: %w", pid, err)
	}
	c.key = childKey{pid: pid, startTime: ps.startTime}
	return c, nil
}

// lookupChild returns the child that st names when this launcher started it
// and StopTask has not yet forgotten it.
func (l *Launcher) lookupChild(st *taskState) (*child, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	if l.otherBoot(st) {
		return nil, nil
	}
	return l.children[childKey{pid: st.PID, startTime: st.StartTime}], nil
}

func (l *Launcher) forget(c *child) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.children[c.key] == c {
		delete(l.children, c.key)
	}
}

// Close stops tracking the launcher's children and waits for its goroutines
// to return. The children keep running; the package documentation
// describes what that means for them. WatchTask calls in progress return
// ErrClosed. Close returns nil, also when called again.
func (l *Launcher) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.wg.Wait()
		return nil
	}
	l.closed = true
	close(l.closing)
	children := slices.Collect(maps.Values(l.children))
	clear(l.children)
	l.mu.Unlock()

	for _, c := range children {
		if !c.isReaped() {
			l.logger.Info("stopped tracking task on close; it keeps running", "task_id", c.taskID, "runner_id", c.runnerID, "pid", c.key.pid)
		}
	}
	l.wg.Wait()
	return nil
}
