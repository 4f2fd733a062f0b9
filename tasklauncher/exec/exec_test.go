package exec

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/odrkit/odrkit/tasklauncher"
)

// childModeEnv switches the test binary into a child process that prints
// childModeOutput and exits, for tests of the default command.
const (
	childModeEnv    = "ODRKIT_EXEC_TEST_CHILD"
	childModeOutput = "hello from the test binary"
)

func TestMain(m *testing.M) {
	if os.Getenv(childModeEnv) == "print" {
		fmt.Println(childModeOutput)
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// testTimeout bounds each test's operations, so that a hang fails the test
// instead of the whole run.
const testTimeout = 20 * time.Second

// logBuffer collects log output from concurrent goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newTestLauncher(t *testing.T, cfg *Config) (*Launcher, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg == nil {
		cfg = newConfig()
		cfg.OutputDir = t.TempDir()
	}
	l, err := New(cfg, tasklauncher.Options{Logger: logger})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, l.Close()) })
	return l, logs
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// shell returns a launch of `sh -c script` with the given labels.
func shell(script string, labels map[string]string) *tasklauncher.LaunchInfo {
	return &tasklauncher.LaunchInfo{
		TaskID:     "task-1",
		RunnerID:   "runner-1",
		Entrypoint: []string{"/bin/sh", "-c", script},
		Labels:     labels,
	}
}

func startTask(t *testing.T, l *Launcher, info *tasklauncher.LaunchInfo) []byte {
	t.Helper()
	state, err := l.StartTask(testContext(t), info)
	require.NoError(t, err)
	require.NotEmpty(t, state)
	return state
}

// stopOnCleanup stops the task when the test ends, also when it failed
// before its own StopTask.
func stopOnCleanup(t *testing.T, l *Launcher, state []byte) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		_ = l.StopTask(ctx, state)
	})
}

func watchAll(t *testing.T, l *Launcher, state []byte) ([]tasklauncher.OutputLine, tasklauncher.TaskExit) {
	t.Helper()
	var lines []tasklauncher.OutputLine
	exit, err := l.WatchTask(testContext(t), state, func(line tasklauncher.OutputLine) {
		lines = append(lines, line)
	})
	require.NoError(t, err)
	return lines, exit
}

func linesOf(lines []tasklauncher.OutputLine, stream tasklauncher.Stream) []string {
	var out []string
	for _, line := range lines {
		if line.Stream == stream {
			out = append(out, line.Line)
		}
	}
	return out
}

func mustDecodeState(t *testing.T, state []byte) *taskState {
	t.Helper()
	st, err := decodeState(state)
	require.NoError(t, err)
	require.NotNil(t, st)
	return st
}

// processLive reports whether pid exists and is not a zombie.
func processLive(pid int) bool {
	ps, err := readProcStat(pid)
	return err == nil && ps.live()
}

func uniqueLabel(t *testing.T) string {
	t.Helper()
	return t.Name() + "-" + rand.Text()
}

func TestWatchTaskOutputAndExit(t *testing.T) {
	l, _ := newTestLauncher(t, nil)
	script := `echo out-1; echo err-1 >&2; echo out-2; printf 'err-2\r\n' >&2; echo; printf out-last`
	state := startTask(t, l, shell(script, nil))
	stopOnCleanup(t, l, state)

	lines, exit := watchAll(t, l, state)

	require.Equal(t, []string{"out-1", "out-2", "", "out-last"}, linesOf(lines, tasklauncher.Stdout))
	require.Equal(t, []string{"err-1", "err-2"}, linesOf(lines, tasklauncher.Stderr))
	require.Len(t, lines, 6)
	require.Equal(t, tasklauncher.TaskExit{Code: 0}, exit)

	// A second watch of the exited task replays the same output.
	again, exitAgain := watchAll(t, l, state)
	require.Equal(t, lines, again)
	require.Equal(t, exit, exitAgain)
}

func TestWatchTaskFollowsOutput(t *testing.T) {
	l, _ := newTestLauncher(t, nil)
	state := startTask(t, l, shell(`for i in 1 2 3 4 5; do echo line-$i; sleep 0.05; done`, nil))
	stopOnCleanup(t, l, state)

	lines, exit := watchAll(t, l, state)

	require.Equal(t, []string{"line-1", "line-2", "line-3", "line-4", "line-5"}, linesOf(lines, tasklauncher.Stdout))
	require.Equal(t, 0, exit.Code)
}

func TestWatchTaskExitCodes(t *testing.T) {
	tests := []struct {
		name   string
		script string
		want   tasklauncher.TaskExit
	}{
		{name: "zero", script: "exit 0", want: tasklauncher.TaskExit{Code: 0}},
		{name: "three", script: "exit 3", want: tasklauncher.TaskExit{Code: 3}},
		{name: "signal", script: "kill -TERM $$", want: tasklauncher.TaskExit{Code: -1, Reason: "killed by signal: terminated"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, _ := newTestLauncher(t, nil)
			state := startTask(t, l, shell(tt.script, nil))
			stopOnCleanup(t, l, state)

			_, exit := watchAll(t, l, state)

			require.Equal(t, tt.want, exit)
		})
	}
}

func TestWatchTaskReplaysAllLines(t *testing.T) {
	cfg := newConfig()
	cfg.OutputDir = t.TempDir()
	// The deprecated limit no longer drops lines.
	cfg.MaxOutputLines = 5
	l, logs := newTestLauncher(t, cfg)
	state := startTask(t, l, shell(`seq 1 20000`, nil))
	stopOnCleanup(t, l, state)
	// The first watch returns once the task has exited.
	watchAll(t, l, state)

	lines, exit := watchAll(t, l, state)

	stdout := linesOf(lines, tasklauncher.Stdout)
	require.Len(t, stdout, 20000)
	for i, line := range stdout {
		require.Equal(t, strconv.Itoa(i+1), line)
	}
	require.Equal(t, 0, exit.Code)
	require.NotContains(t, logs.String(), "dropped")
}

func TestWatchTaskSplitsLongLines(t *testing.T) {
	l, _ := newTestLauncher(t, nil)
	state := startTask(t, l, shell(`head -c 70000 /dev/zero | tr '\0' a; echo; echo short`, nil))
	stopOnCleanup(t, l, state)

	lines, _ := watchAll(t, l, state)

	stdout := linesOf(lines, tasklauncher.Stdout)
	require.Len(t, stdout, 3)
	require.Equal(t, strings.Repeat("a", maxLineBytes), stdout[0])
	require.Equal(t, strings.Repeat("a", 70000-maxLineBytes), stdout[1])
	require.Equal(t, "short", stdout[2])
}

func TestWatchTaskNotFound(t *testing.T) {
	l, _ := newTestLauncher(t, nil)
	other, _ := newTestLauncher(t, nil)
	state := startTask(t, l, shell("exit 0", nil))
	watchAll(t, l, state)
	// StopTask drops the exited and reaped task from the launcher.
	require.NoError(t, l.StopTask(testContext(t), state))

	_, err := l.WatchTask(testContext(t), state, func(tasklauncher.OutputLine) {})
	require.ErrorIs(t, err, tasklauncher.ErrTaskNotFound)

	_, err = other.WatchTask(testContext(t), state, func(tasklauncher.OutputLine) {})
	require.ErrorIs(t, err, tasklauncher.ErrTaskNotFound)

	_, err = l.WatchTask(testContext(t), nil, func(tasklauncher.OutputLine) {})
	require.ErrorIs(t, err, tasklauncher.ErrTaskNotFound)
}

func TestStopTaskStopsAndReaps(t *testing.T) {
	l, logs := newTestLauncher(t, nil)
	state := startTask(t, l, shell("exec sleep 1000", nil))
	stopOnCleanup(t, l, state)
	st := mustDecodeState(t, state)
	require.True(t, processLive(st.PID))

	exits := make(chan tasklauncher.TaskExit, 1)
	ctx := testContext(t)
	go func() {
		exit, _ := l.WatchTask(ctx, state, func(tasklauncher.OutputLine) {})
		exits <- exit
	}()
	require.NoError(t, l.StopTask(testContext(t), state))

	// Reaped: the /proc entry is gone, not just a zombie.
	_, err := readProcStat(st.PID)
	require.ErrorIs(t, err, os.ErrNotExist)
	require.Equal(t, tasklauncher.TaskExit{Code: -1, Reason: "killed by signal: terminated"}, <-exits)
	require.Contains(t, logs.String(), "stopping task")
	require.NotContains(t, logs.String(), "SIGKILL")

	require.NoError(t, l.StopTask(testContext(t), state), "second StopTask")
}

func TestStopTaskAfterExit(t *testing.T) {
	l, logs := newTestLauncher(t, nil)
	state := startTask(t, l, shell("exit 0", nil))
	watchAll(t, l, state)

	require.NoError(t, l.StopTask(testContext(t), state))
	require.NotContains(t, logs.String(), "stopping task")
}

func TestStopTaskEmptyState(t *testing.T) {
	l, _ := newTestLauncher(t, nil)

	require.NoError(t, l.StopTask(testContext(t), nil))
	require.NoError(t, l.StopTask(testContext(t), []byte{}))
}

func TestStopTaskInvalidState(t *testing.T) {
	tests := []struct {
		name  string
		state string
		want  string
	}{
		{name: "not JSON", state: "pid=12", want: "invalid exec launcher state"},
		{name: "pid 1", state: `{"pid":1,"pgid":1,"start_time":1}`, want: "pid 1 is not a runner process"},
		{name: "pid 0", state: `{"pid":0,"pgid":0}`, want: "pid 0 is not a runner process"},
		{name: "other group", state: `{"pid":1234,"pgid":1,"start_time":1}`, want: "pgid 1 differs from pid 1234"},
		{name: "relative stdout path", state: `{"pid":1234,"pgid":1234,"stdout_path":"out/t.stdout"}`, want: `stdout_path: path "out/t.stdout" is not an absolute, clean path`},
		{name: "unclean stderr path", state: `{"pid":1234,"pgid":1234,"stderr_path":"/tmp/../etc/t.stderr"}`, want: "stderr_path: path"},
		{name: "stdout path without suffix", state: `{"pid":1234,"pgid":1234,"stdout_path":"/etc/passwd"}`, want: `stdout_path: file name of "/etc/passwd" does not end in ".stdout"`},
		{name: "stderr path with stdout suffix", state: `{"pid":1234,"pgid":1234,"stderr_path":"/tmp/t.stdout"}`, want: `stderr_path: file name of "/tmp/t.stdout" does not end in ".stderr"`},
		{name: "bare suffix", state: `{"pid":1234,"pgid":1234,"stdout_path":"/tmp/.stdout"}`, want: "stdout_path: file name"},
	}
	l, _ := newTestLauncher(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := l.StopTask(testContext(t), []byte(tt.state))
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestStopTaskKillsAfterGrace(t *testing.T) {
	cfg := newConfig()
	cfg.StopGrace = "300ms"
	l, logs := newTestLauncher(t, cfg)
	// The shell ignores SIGTERM, and so does its background child, which
	// inherits the ignored disposition.
	state := startTask(t, l, shell(`trap '' TERM; sleep 1000 & echo $!; wait`, nil))
	stopOnCleanup(t, l, state)
	st := mustDecodeState(t, state)

	childPIDs := make(chan int, 1)
	exits := make(chan tasklauncher.TaskExit, 1)
	ctx := testContext(t)
	go func() {
		exit, _ := l.WatchTask(ctx, state, func(line tasklauncher.OutputLine) {
			if pid, err := strconv.Atoi(line.Line); err == nil {
				select {
				case childPIDs <- pid:
				default:
				}
			}
		})
		exits <- exit
	}()
	var childPID int
	select {
	case childPID = <-childPIDs:
	case <-time.After(testTimeout):
		t.Fatal("the shell did not print its child's PID")
	}
	require.True(t, processLive(childPID))

	started := time.Now()
	require.NoError(t, l.StopTask(testContext(t), state))

	require.GreaterOrEqual(t, time.Since(started), 300*time.Millisecond)
	require.False(t, processLive(st.PID), "shell still runs")
	require.False(t, processLive(childPID), "shell's child still runs")
	require.Equal(t, tasklauncher.TaskExit{Code: -1, Reason: "killed by signal: killed"}, <-exits)
	require.Contains(t, logs.String(), "sending SIGKILL")
}

func TestStopTaskSkipsReusedPID(t *testing.T) {
	l, logs := newTestLauncher(t, nil)
	state := startTask(t, l, shell("exec sleep 1000", nil))
	stopOnCleanup(t, l, state)
	st := mustDecodeState(t, state)

	forged := *st
	forged.StartTime++
	require.NoError(t, l.StopTask(testContext(t), forged.encode()))

	// A signal would have ended sleep within this time.
	time.Sleep(200 * time.Millisecond)
	require.True(t, processLive(st.PID))
	require.NotContains(t, logs.String(), "stopping task")

	require.NoError(t, l.StopTask(testContext(t), state))
	require.False(t, processLive(st.PID))
}

func TestStopTaskFromSecondLauncher(t *testing.T) {
	first, _ := newTestLauncher(t, nil)
	second, _ := newTestLauncher(t, nil)
	state := startTask(t, first, shell("exec sleep 1000", nil))
	stopOnCleanup(t, first, state)
	st := mustDecodeState(t, state)

	require.NoError(t, second.StopTask(testContext(t), state))

	require.False(t, processLive(st.PID))
	require.NoError(t, second.StopTask(testContext(t), state), "second StopTask")
}

func TestWatchTaskFromSecondLauncher(t *testing.T) {
	first, _ := newTestLauncher(t, nil)
	second, _ := newTestLauncher(t, nil)
	// The task must still run when the second launcher starts watching it;
	// one second leaves ample time for that.
	state := startTask(t, first, shell("echo from-first; echo err-from-first >&2; exec sleep 1", nil))
	stopOnCleanup(t, first, state)

	lines, exit := watchAll(t, second, state)

	require.Equal(t, []string{"from-first"}, linesOf(lines, tasklauncher.Stdout))
	require.Equal(t, []string{"err-from-first"}, linesOf(lines, tasklauncher.Stderr))
	require.Equal(t, -1, exit.Code)
	require.True(t, strings.HasPrefix(exit.Reason, "exit code unknown: "), "reason %q", exit.Reason)
}

func TestStartTaskCancelledContext(t *testing.T) {
	run := uniqueLabel(t)
	l, _ := newTestLauncher(t, nil)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	state, err := l.StartTask(ctx, shell("exec sleep 1000", map[string]string{"run": run}))
	require.ErrorIs(t, err, context.Canceled)
	require.Nil(t, state)

	// This context is cancelled after the process has started.
	state, err = l.StartTask(&cancelAfterFirstCheck{Context: context.Background()}, shell("exec sleep 1000", map[string]string{"run": run}))
	require.ErrorIs(t, err, context.Canceled)
	require.Nil(t, state)

	tasks, err := l.ListTasks(testContext(t), map[string]string{"run": run})
	require.NoError(t, err)
	require.Empty(t, tasks)
	entries, err := os.ReadDir(l.outputDir)
	require.NoError(t, err)
	require.Empty(t, entries, "output files of the cancelled starts")
}

// cancelAfterFirstCheck is a context whose Err returns nil once and
// context.Canceled after that.
type cancelAfterFirstCheck struct {
	context.Context
	checks atomic.Int32
}

func (c *cancelAfterFirstCheck) Err() error {
	if c.checks.Add(1) == 1 {
		return nil
	}
	return context.Canceled
}

func TestListTasksByLabels(t *testing.T) {
	run := uniqueLabel(t)
	l, _ := newTestLauncher(t, nil)
	// The first task's shell starts a child that inherits the labels
	// variable. It must not be listed as a task of its own.
	web1 := startTask(t, l, shell("sleep 1000 & wait", map[string]string{"run": run, "role": "web"}))
	stopOnCleanup(t, l, web1)
	web2 := startTask(t, l, shell("exec sleep 1000", map[string]string{"run": run, "role": "web", "zone": "a"}))
	stopOnCleanup(t, l, web2)
	db := startTask(t, l, shell("exec sleep 1000", map[string]string{"run": run, "role": "db"}))
	stopOnCleanup(t, l, db)

	tests := []struct {
		name   string
		labels map[string]string
		want   [][]byte
	}{
		{name: "one label", labels: map[string]string{"run": run, "role": "web"}, want: [][]byte{web1, web2}},
		{name: "two labels", labels: map[string]string{"run": run, "role": "web", "zone": "a"}, want: [][]byte{web2}},
		{name: "run only", labels: map[string]string{"run": run}, want: [][]byte{web1, web2, db}},
		{name: "no match", labels: map[string]string{"run": run, "role": "cache"}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tasks, err := l.ListTasks(testContext(t), tt.labels)
			require.NoError(t, err)

			var got, want []childKey
			for _, task := range tasks {
				st := mustDecodeState(t, task.State)
				got = append(got, childKey{pid: st.PID, startTime: st.StartTime})
				require.True(t, task.Running)
				require.True(t, containsLabels(task.Labels, tt.labels), "labels %v", task.Labels)
			}
			for _, state := range tt.want {
				st := mustDecodeState(t, state)
				want = append(want, childKey{pid: st.PID, startTime: st.StartTime})
			}
			require.ElementsMatch(t, want, got)
		})
	}

	// The listed states stop the tasks.
	tasks, err := l.ListTasks(testContext(t), map[string]string{"run": run})
	require.NoError(t, err)
	for _, task := range tasks {
		require.NoError(t, l.StopTask(testContext(t), task.State))
	}
	tasks, err = l.ListTasks(testContext(t), map[string]string{"run": run})
	require.NoError(t, err)
	require.Empty(t, tasks)
}

func TestStartTaskEnvironment(t *testing.T) {
	cfg := newConfig()
	cfg.Env = map[string]string{"ODR_TEST_FROM_CONFIG": "config-value", "ODR_TEST_BOTH": "config-loses"}
	l, logs := newTestLauncher(t, cfg)
	info := shell(`echo "config=$ODR_TEST_FROM_CONFIG"; echo "both=$ODR_TEST_BOTH"; echo "secret=$ODR_TEST_SECRET"; echo "labels=$ODRKIT_TASK_LABELS"`,
		map[string]string{"team": "blue"})
	info.Env = map[string]string{"ODR_TEST_BOTH": "launch-wins", "ODR_TEST_SECRET": "token-8f3a1c"}
	state := startTask(t, l, info)
	stopOnCleanup(t, l, state)

	lines, exit := watchAll(t, l, state)

	require.Equal(t, 0, exit.Code)
	require.Equal(t, []string{
		"config=config-value",
		"both=launch-wins",
		"secret=token-8f3a1c",
		`labels={"team":"blue"}`,
	}, linesOf(lines, tasklauncher.Stdout))
	require.Contains(t, logs.String(), "started task")
	require.NotContains(t, logs.String(), "token-8f3a1c")
	require.NotContains(t, logs.String(), "config-value")
}

func TestStartTaskRejectsLabelsEnv(t *testing.T) {
	l, _ := newTestLauncher(t, nil)
	info := shell("exit 0", nil)
	info.Env = map[string]string{LabelsEnv: "{}"}

	state, err := l.StartTask(testContext(t), info)

	require.ErrorContains(t, err, LabelsEnv)
	require.Nil(t, state)
}

func TestStartTaskCommandLine(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		info tasklauncher.LaunchInfo
		want string
	}{
		{
			name: "entrypoint and arguments",
			info: tasklauncher.LaunchInfo{Entrypoint: []string{"/bin/sh", "-c", `echo "$0 $1"`}, Arguments: []string{"first", "second"}},
			want: "first second",
		},
		{
			name: "config command keeps entrypoint arguments",
			cfg:  Config{Command: "sh"},
			info: tasklauncher.LaunchInfo{Entrypoint: []string{"/bin/false", "-c", `echo "$0"`}, Arguments: []string{"argument"}},
			want: "argument",
		},
		{
			name: "config command and args win",
			cfg:  Config{Command: "/bin/sh", Args: []string{"-c", "echo from-config"}},
			info: tasklauncher.LaunchInfo{Entrypoint: []string{"/bin/false"}, Arguments: []string{"ignored"}},
			want: "from-config",
		},
		{
			name: "config dir",
			cfg:  Config{Command: "/bin/sh", Args: []string{"-c", "pwd"}, Dir: "/"},
			want: "/",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, _ := newTestLauncher(t, &tt.cfg)
			state := startTask(t, l, &tt.info)
			stopOnCleanup(t, l, state)

			lines, exit := watchAll(t, l, state)

			require.Equal(t, 0, exit.Code)
			require.Equal(t, []string{tt.want}, linesOf(lines, tasklauncher.Stdout))
		})
	}
}

func TestStartTaskMissingCommand(t *testing.T) {
	l, _ := newTestLauncher(t, &Config{Command: "/nonexistent/odrkit-runner"})

	state, err := l.StartTask(testContext(t), shell("exit 0", nil))

	require.ErrorContains(t, err, "/nonexistent/odrkit-runner")
	require.Nil(t, state)
}

func TestRegistryPluginDefaultCommand(t *testing.T) {
	registry := tasklauncher.NewRegistry(Plugin())
	plugin, ok := registry.Lookup(PluginName)
	require.True(t, ok)
	cfg := plugin.NewConfig()
	require.IsType(t, &Config{}, cfg)

	launcher, err := registry.NewLauncher(PluginName, cfg, tasklauncher.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, launcher.Close()) })
	l, ok := launcher.(*Launcher)
	require.True(t, ok)

	// Without a command or entrypoint, the launcher runs its own
	// executable, which is this test binary.
	info := &tasklauncher.LaunchInfo{TaskID: "task-1", RunnerID: "runner-1", Env: map[string]string{childModeEnv: "print"}}
	state := startTask(t, l, info)
	stopOnCleanup(t, l, state)
	lines, exit := watchAll(t, l, state)

	require.Equal(t, 0, exit.Code)
	require.Equal(t, []string{childModeOutput}, linesOf(lines, tasklauncher.Stdout))
}

func TestPluginRejectsOtherConfigType(t *testing.T) {
	launcher, err := Plugin().New(struct{}{}, tasklauncher.Options{})

	require.ErrorContains(t, err, "config has type struct {}")
	require.Nil(t, launcher)

	launcher, err = Plugin().New(&Config{StopGrace: "soon"}, tasklauncher.Options{})
	require.ErrorContains(t, err, `stop_grace: "soon" is not a duration`)
	require.Nil(t, launcher)
}

func TestCloseLeavesTasksRunning(t *testing.T) {
	logs := &logBuffer{}
	l, err := New(newConfig(), tasklauncher.Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	require.NoError(t, err)
	state := startTask(t, l, shell("exec sleep 1000", nil))
	st := mustDecodeState(t, state)

	errs := make(chan error, 1)
	ctx := testContext(t)
	go func() {
		_, err := l.WatchTask(ctx, state, func(tasklauncher.OutputLine) {})
		errs <- err
	}()
	require.NoError(t, l.Close())

	require.ErrorIs(t, <-errs, ErrClosed)
	require.True(t, processLive(st.PID))
	require.NoError(t, l.Close(), "second Close")
	_, err = l.StartTask(testContext(t), shell("exit 0", nil))
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, l.StopTask(testContext(t), state), ErrClosed)

	// A new launcher stops the task that the closed one left running.
	other, _ := newTestLauncher(t, nil)
	require.NoError(t, other.StopTask(testContext(t), state))
	require.False(t, processLive(st.PID))
}

func TestConfigDefaults(t *testing.T) {
	cfg, ok := Plugin().NewConfig().(*Config)
	require.True(t, ok)

	require.Equal(t, &Config{StopGrace: "5s"}, cfg)
	require.NoError(t, cfg.Validate())

	// os.TempDir returns $TMPDIR, so the default directory of this test
	// is in a directory of its own.
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	l, _ := newTestLauncher(t, &Config{})
	require.Equal(t, 5*time.Second, l.stopGrace)
	wantDir := filepath.Join(tmp, "odrkit-exec-"+strconv.Itoa(os.Getuid()))
	require.Equal(t, wantDir, DefaultOutputDir())
	require.Equal(t, wantDir, l.outputDir)
	info, err := os.Stat(wantDir)
	require.NoError(t, err)
	require.True(t, info.IsDir())
	require.Equal(t, os.FileMode(0o700), info.Mode().Perm())
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "defaults", cfg: *newConfig()},
		{name: "empty", cfg: Config{}},
		{name: "zero grace", cfg: Config{StopGrace: "0s"}},
		{name: "full", cfg: Config{Command: "/usr/bin/runner", Args: []string{"run"}, Dir: "/tmp", Env: map[string]string{"A": "1"}, StopGrace: "1m30s", OutputDir: "/var/log/odrkit", MaxOutputLines: 50}},
		{name: "relative output dir", cfg: Config{OutputDir: "logs/runners"}},
		{name: "bad grace", cfg: Config{StopGrace: "five seconds"}, want: `stop_grace: "five seconds" is not a duration`},
		{name: "grace without unit", cfg: Config{StopGrace: "5"}, want: `stop_grace: "5" is not a duration`},
		{name: "negative grace", cfg: Config{StopGrace: "-1s"}, want: `stop_grace: "-1s" is negative`},
		{name: "negative max lines", cfg: Config{MaxOutputLines: -1}, want: "max_output_lines: -1 is negative"},
		{name: "empty env name", cfg: Config{Env: map[string]string{"": "x"}}, want: "env: a variable name is empty"},
		{name: "env name with equals", cfg: Config{Env: map[string]string{"A=B": "x"}}, want: `env: variable name "A=B" contains '='`},
		{name: "labels env", cfg: Config{Env: map[string]string{LabelsEnv: "{}"}}, want: "env: variable ODRKIT_TASK_LABELS is set by the launcher"},
		{name: "NUL in env value", cfg: Config{Env: map[string]string{"TOKEN": "se\x00cret"}}, want: `env: the value of variable "TOKEN" contains a NUL byte`},
		{name: "NUL in command", cfg: Config{Command: "run\x00ner"}, want: "command: contains a NUL byte"},
		{name: "NUL in args", cfg: Config{Args: []string{"ok", "b\x00d"}}, want: "args[1]: contains a NUL byte"},
		{name: "NUL in dir", cfg: Config{Dir: "/t\x00mp"}, want: "dir: contains a NUL byte"},
		{name: "NUL in output dir", cfg: Config{OutputDir: "/t\x00mp"}, want: "output_dir: contains a NUL byte"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()

			if tt.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.want)
			require.NotContains(t, err.Error(), "se\x00cret")
			_, err = New(&tt.cfg, tasklauncher.Options{})
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestConfigJSONRoundTrip(t *testing.T) {
	cfg := Config{
		Command:        "/usr/bin/runner",
		Args:           []string{"run", "--verbose"},
		Dir:            "/var/lib/runner",
		Env:            map[string]string{"LOG_LEVEL": "debug"},
		StopGrace:      "10s",
		OutputDir:      "/var/log/odrkit",
		MaxOutputLines: 500,
	}

	b, err := json.Marshal(&cfg)
	require.NoError(t, err)
	var decoded Config
	require.NoError(t, json.Unmarshal(b, &decoded))

	require.Equal(t, cfg, decoded)
	require.JSONEq(t, `{"command":"/usr/bin/runner","args":["run","--verbose"],"dir":"/var/lib/runner","env":{"LOG_LEVEL":"debug"},"stop_grace":"10s","output_dir":"/var/log/odrkit","max_output_lines":500}`, string(b))
}

func TestParseProcStat(t *testing.T) {
	// The command name contains spaces and parentheses.
	stat := "4242 (odd ) (name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 18446744073709551615"

	ps, err := parseProcStat([]byte(stat))

	require.NoError(t, err)
	require.Equal(t, procStat{state: 'S', pgrp: 4242, startTime: 987654}, ps)

	_, err = parseProcStat([]byte("4242 (short) S 1"))
	require.ErrorContains(t, err, "expected at least 20")
}

func TestStateRecordsStartTime(t *testing.T) {
	l, _ := newTestLauncher(t, nil)
	state := startTask(t, l, shell("exec sleep 1000", nil))
	stopOnCleanup(t, l, state)
	st := mustDecodeState(t, state)

	ps, err := readProcStat(st.PID)
	require.NoError(t, err)
	require.Equal(t, ps.startTime, st.StartTime)
	require.Equal(t, st.PID, st.PGID)
	require.Equal(t, st.PID, ps.pgrp)
	require.Equal(t, readBootID(), st.BootID)
	require.Equal(t, "task-1", st.TaskID)
	require.Equal(t, "runner-1", st.RunnerID)
}

func TestWatchTaskReturnsWhileGroupMemberRuns(t *testing.T) {
	l, logs := newTestLauncher(t, nil)
	// The background sleep stays in the shell's process group and keeps
	// stdout open after the shell exits.
	state := startTask(t, l, shell(`sleep 1000 & echo $!`, nil))
	stopOnCleanup(t, l, state)

	lines, exit := watchAll(t, l, state)

	stdout := linesOf(lines, tasklauncher.Stdout)
	require.Len(t, stdout, 1)
	leftPID, err := strconv.Atoi(stdout[0])
	require.NoError(t, err)
	t.Cleanup(func() { _ = syscall.Kill(leftPID, syscall.SIGKILL) })
	require.Equal(t, 0, exit.Code)
	require.Contains(t, logs.String(), "a process it left behind in its process group still runs")
}

// outputFileNames returns the names of the files in dir.
func outputFileNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// reapOnCleanup reaps pid when the test ends. No other code reaps a child
// of a closed launcher, so it would stay a zombie until the test binary
// exits.
func reapOnCleanup(t *testing.T, pid int) {
	t.Helper()
	t.Cleanup(func() {
		var status syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &status, syscall.WNOHANG, nil)
	})
}

func TestRunnerOutlivesClosedLauncher(t *testing.T) {
	dir := t.TempDir()
	cfg := newConfig()
	cfg.OutputDir = dir
	first, err := New(cfg, tasklauncher.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, first.Close()) })
	// The shell dies of SIGPIPE or EPIPE at its next line if its output
	// depends on the launcher.
	state := startTask(t, first, shell(`i=1; while :; do echo line-$i; echo err-$i >&2; i=$((i+1)); sleep 0.05; done`, nil))
	st := mustDecodeState(t, state)
	reapOnCleanup(t, st.PID)
	// The first launcher cannot stop the task once it is closed.
	t.Cleanup(func() {
		cleanup, err := New(cfg, tasklauncher.Options{})
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		_ = cleanup.StopTask(ctx, state)
		require.NoError(t, cleanup.Close())
	})

	require.Eventually(t, func() bool {
		b, err := os.ReadFile(st.StdoutPath)
		return err == nil && bytes.Count(b, []byte("\n")) >= 2
	}, testTimeout, 10*time.Millisecond)
	require.NoError(t, first.Close())
	before, err := os.ReadFile(st.StdoutPath)
	require.NoError(t, err)
	linesBefore := bytes.Count(before, []byte("\n"))

	time.Sleep(300 * time.Millisecond)
	require.True(t, processLive(st.PID), "the runner died after its launcher was closed")

	second, _ := newTestLauncher(t, cfg)
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	var mu sync.Mutex
	var lines []tasklauncher.OutputLine
	want := fmt.Sprintf("line-%d", linesBefore+5)
	seen := make(chan struct{})
	watchDone := make(chan error, 1)
	go func() {
		_, err := second.WatchTask(ctx, state, func(line tasklauncher.OutputLine) {
			mu.Lock()
			defer mu.Unlock()
			lines = append(lines, line)
			if line.Line == want {
				close(seen)
			}
		})
		watchDone <- err
	}()
	select {
	case <-seen:
	case <-time.After(testTimeout):
		t.Fatalf("WatchTask of the second launcher did not send %q", want)
	}
	cancel()
	require.ErrorIs(t, <-watchDone, context.Canceled)

	mu.Lock()
	defer mu.Unlock()
	stdout := linesOf(lines, tasklauncher.Stdout)
	stderr := linesOf(lines, tasklauncher.Stderr)
	require.GreaterOrEqual(t, len(stdout), linesBefore+5)
	for i, line := range stdout {
		require.Equal(t, fmt.Sprintf("line-%d", i+1), line, "stdout line %d", i+1)
	}
	require.NotEmpty(t, stderr)
	for i, line := range stderr {
		require.Equal(t, fmt.Sprintf("err-%d", i+1), line, "stderr line %d", i+1)
	}

	require.NoError(t, second.StopTask(testContext(t), state))
	require.False(t, processLive(st.PID))
	require.Empty(t, outputFileNames(t, dir))
}

func TestStopTaskRemovesOutputFiles(t *testing.T) {
	tests := []struct {
		name   string
		script string
		// exited waits for the task's exit before StopTask.
		exited bool
		// removed deletes the files before StopTask.
		removed bool
	}{
		{name: "running", script: "echo out; echo err >&2; exec sleep 1000"},
		{name: "exited", script: "echo out; echo err >&2", exited: true},
		{name: "files already removed", script: "exec sleep 1000", removed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, _ := newTestLauncher(t, nil)
			state := startTask(t, l, shell(tt.script, nil))
			stopOnCleanup(t, l, state)
			st := mustDecodeState(t, state)
			require.FileExists(t, st.StdoutPath)
			require.FileExists(t, st.StderrPath)
			if tt.exited {
				watchAll(t, l, state)
			}
			if tt.removed {
				require.NoError(t, os.Remove(st.StdoutPath))
				require.NoError(t, os.Remove(st.StderrPath))
			}

			require.NoError(t, l.StopTask(testContext(t), state))

			require.NoFileExists(t, st.StdoutPath)
			require.NoFileExists(t, st.StderrPath)
			require.Empty(t, outputFileNames(t, l.outputDir))
			require.NoError(t, l.StopTask(testContext(t), state), "second StopTask")
		})
	}
}

func TestOutputDirCustom(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "output")
	cfg := newConfig()
	cfg.OutputDir = dir
	l, _ := newTestLauncher(t, cfg)
	info := shell("echo to-stdout; echo to-stderr >&2", nil)
	info.TaskID = "task-custom"
	state := startTask(t, l, info)
	stopOnCleanup(t, l, state)
	st := mustDecodeState(t, state)

	_, exit := watchAll(t, l, state)

	require.Equal(t, 0, exit.Code)
	dirInfo, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), dirInfo.Mode().Perm())
	require.Equal(t, filepath.Join(dir, "task-custom.stdout"), st.StdoutPath)
	require.Equal(t, filepath.Join(dir, "task-custom.stderr"), st.StderrPath)
	for path, want := range map[string]string{st.StdoutPath: "to-stdout\n", st.StderrPath: "to-stderr\n"} {
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, want, string(b))
		fileInfo, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fileInfo.Mode().Perm(), path)
	}
}

func TestOutputDirRelative(t *testing.T) {
	work := t.TempDir()
	t.Chdir(work)
	cfg := newConfig()
	cfg.OutputDir = "logs"
	l, _ := newTestLauncher(t, cfg)
	// A later change of the working directory does not move the output.
	t.Chdir(t.TempDir())
	state := startTask(t, l, shell("echo relative", nil))
	stopOnCleanup(t, l, state)
	st := mustDecodeState(t, state)

	lines, _ := watchAll(t, l, state)

	require.Equal(t, []string{"relative"}, linesOf(lines, tasklauncher.Stdout))
	require.True(t, filepath.IsAbs(st.StdoutPath), st.StdoutPath)
	want, err := os.Stat(filepath.Join(work, "logs", "task-1.stdout"))
	require.NoError(t, err)
	got, err := os.Stat(st.StdoutPath)
	require.NoError(t, err)
	require.True(t, os.SameFile(want, got), "stdout file %s is not in %s", st.StdoutPath, filepath.Join(work, "logs"))
}

func TestDefaultOutputDirRejected(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  string
	}{
		{
			name: "writable by others",
			setup: func(t *testing.T, dir string) {
				require.NoError(t, os.Mkdir(dir, 0o700))
				require.NoError(t, os.Chmod(dir, 0o777))
			},
			want: "lets other users write to it",
		},
		{
			name:  "symbolic link",
			setup: func(t *testing.T, dir string) { require.NoError(t, os.Symlink(t.TempDir(), dir)) },
			want:  "is not a directory",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := t.TempDir()
			t.Setenv("TMPDIR", tmp)
			tt.setup(t, DefaultOutputDir())

			_, err := New(newConfig(), tasklauncher.Options{})

			require.ErrorContains(t, err, "output_dir: default directory "+DefaultOutputDir())
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestOutputFileNames(t *testing.T) {
	tests := []struct {
		taskID string
		want   string
	}{
		{taskID: "job-42_a.b", want: "job-42_a.b"},
		{taskID: "../../etc/passwd", want: "task-.._.._etc_passwd"},
		{taskID: "a/b c", want: "a_b_c"},
		{taskID: "", want: "task-"},
		{taskID: ".hidden", want: "task-.hidden"},
		{taskID: strings.Repeat("x", 300), want: strings.Repeat("x", maxFileNameBytes)},
	}
	l, _ := newTestLauncher(t, nil)
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			info := shell("exit 0", nil)
			info.TaskID = tt.taskID
			state := startTask(t, l, info)
			stopOnCleanup(t, l, state)
			st := mustDecodeState(t, state)

			require.Equal(t, filepath.Join(l.outputDir, tt.want+".stdout"), st.StdoutPath)
			require.Equal(t, filepath.Join(l.outputDir, tt.want+".stderr"), st.StderrPath)
			require.NoError(t, l.StopTask(testContext(t), state))
		})
	}
}

func TestStartTaskSameTaskIDTwice(t *testing.T) {
	l, _ := newTestLauncher(t, nil)
	first := startTask(t, l, shell("echo first; exec sleep 1000", nil))
	stopOnCleanup(t, l, first)
	second := startTask(t, l, shell("echo second", nil))
	stopOnCleanup(t, l, second)
	firstState := mustDecodeState(t, first)
	secondState := mustDecodeState(t, second)

	lines, _ := watchAll(t, l, second)

	require.Equal(t, filepath.Join(l.outputDir, "task-1.stdout"), firstState.StdoutPath)
	require.NotEqual(t, firstState.StdoutPath, secondState.StdoutPath)
	require.NotEqual(t, firstState.StderrPath, secondState.StderrPath)
	require.Equal(t, []string{"second"}, linesOf(lines, tasklauncher.Stdout))
	require.NoError(t, l.StopTask(testContext(t), second))
	require.FileExists(t, firstState.StdoutPath, "stopping the second task removed the first task's file")
}

func TestWatchTaskExitedForeignTask(t *testing.T) {
	first, _ := newTestLauncher(t, nil)
	second, _ := newTestLauncher(t, nil)
	state := startTask(t, first, shell("echo out; echo err >&2; exit 3", nil))
	stopOnCleanup(t, first, state)
	// The first launcher reaps the task, so no process is left.
	_, exit := watchAll(t, first, state)
	require.Equal(t, 3, exit.Code)

	lines, exit := watchAll(t, second, state)

	require.Equal(t, []string{"out"}, linesOf(lines, tasklauncher.Stdout))
	require.Equal(t, []string{"err"}, linesOf(lines, tasklauncher.Stderr))
	require.Equal(t, -1, exit.Code)
	require.True(t, strings.HasPrefix(exit.Reason, "exit code unknown: "), "reason %q", exit.Reason)

	require.NoError(t, second.StopTask(testContext(t), state))
	_, err := second.WatchTask(testContext(t), state, func(tasklauncher.OutputLine) {})
	require.ErrorIs(t, err, tasklauncher.ErrTaskNotFound)
}

func TestListTasksStateNamesOutputFiles(t *testing.T) {
	run := uniqueLabel(t)
	l, _ := newTestLauncher(t, nil)
	state := startTask(t, l, shell("echo listed; exec sleep 1000", map[string]string{"run": run}))
	stopOnCleanup(t, l, state)
	st := mustDecodeState(t, state)

	tasks, err := l.ListTasks(testContext(t), map[string]string{"run": run})

	require.NoError(t, err)
	require.Len(t, tasks, 1)
	listed := mustDecodeState(t, tasks[0].State)
	require.Equal(t, st.StdoutPath, listed.StdoutPath)
	require.Equal(t, st.StderrPath, listed.StderrPath)
	require.NoError(t, l.StopTask(testContext(t), tasks[0].State))
	require.NoFileExists(t, st.StdoutPath)
	require.NoFileExists(t, st.StderrPath)
}

func TestLineReader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.stdout")
	w, err := os.Create(path)
	require.NoError(t, err)
	defer w.Close()
	f, err := os.Open(path)
	require.NoError(t, err)
	r := newLineReader(f, tasklauncher.Stdout)
	defer r.close()
	write := func(s string) {
		t.Helper()
		_, err := w.WriteString(s)
		require.NoError(t, err)
	}
	requireLine := func(want string) {
		t.Helper()
		line, ok, err := r.next()
		require.NoError(t, err)
		require.True(t, ok, "no line where %q was expected", want)
		require.Equal(t, want, line)
	}
	requireNoLine := func() {
		t.Helper()
		line, ok, err := r.next()
		require.NoError(t, err)
		require.False(t, ok, "unexpected line %q", line)
	}

	requireNoLine()
	write("one\ntw")
	requireLine("one")
	requireNoLine()
	write("o\r\nthree\n")
	requireLine("two")
	requireLine("three")
	requireNoLine()

	// A long line written in two parts is split at maxLineBytes.
	write(strings.Repeat("a", maxLineBytes-10))
	requireNoLine()
	write(strings.Repeat("a", 30) + "\nend")
	requireLine(strings.Repeat("a", maxLineBytes))
	requireLine(strings.Repeat("a", 20))
	requireNoLine()

	rest, ok := r.rest()
	require.True(t, ok)
	require.Equal(t, "end", rest)
	_, ok = r.rest()
	require.False(t, ok)
}
