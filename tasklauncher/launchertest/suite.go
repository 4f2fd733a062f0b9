// Package launchertest is a conformance suite for [tasklauncher.Launcher]
// implementations. A launcher author calls [Run] from an ordinary test with
// a [Harness] that describes how to build the launcher and how to make it
// start the suite's runner program, [testrunner.Main].
//
// # How the suite works
//
// Run starts a real host inside the test process: an [ondemand.Manager]
// with no runner profiles, and the runner API ([runnerapi.Server]) on a gRPC
// server listening on 127.0.0.1 with a free port. The suite calls the
// launcher's methods directly, the way a launcher runner would, so that it
// controls every call: cancelled contexts, repeated stops, states from
// another launcher instance.
//
// For a task whose runner must connect, the suite picks a fresh runner ID,
// issues a static runner token for it with [ondemand.Manager.IssueRunnerToken]
// and submits a job with Target{RunnerID: id}. The Manager holds that job
// for that ID alone. The runner gets ODRKIT_SERVER_ADDR, ODRKIT_RUNNER_ID and
// ODRKIT_RUNNER_TOKEN but not ODRKIT_RUNNER_ONDEMAND: the host launched no
// on-demand task for the ID, so it would reject an on-demand session. The
// runner program runs as a static runner instead and exits after its one job
// (mode [testrunner.ModeJob]). The suite then checks that the job succeeded
// with the expected result, which proves the runner dialled back with the
// environment the launcher passed.
//
// # Cases
//
//   - StopTask of an empty state returns nil.
//   - A started runner connects, takes its job, exits with code 0, and its
//     task stops.
//   - StopTask of a running task, then StopTask again, both return nil.
//   - StopTask after the task exited by itself returns nil.
//   - StopTask of a state whose resource is gone returns nil: after a stop by
//     another launcher instance, and after Harness.RemoveTask.
//   - WatchTask (when the launcher implements [tasklauncher.Watcher]) sends
//     the task's stdout and stderr lines on their streams and returns the
//     exit code: 0 after the job, and 0 or 3 from a task that exits before
//     it connects. After StopTask it returns [tasklauncher.ErrTaskNotFound].
//   - ListTasks (when the launcher implements [tasklauncher.Lister]) returns
//     exactly the tasks that carry the given labels, with states that
//     StopTask accepts.
//   - StartTask with a context that is cancelled before or during the call
//     leaves no resource behind when it fails.
//   - Ten concurrent StartTask calls each start a runner that takes its job.
//   - No task that the suite started is left at the end.
//
// The suite labels every task with [LabelRun], unique to one Run call, and
// [LabelCase], the name of the test case, besides the task and runner labels
// of package ondemand.
package launchertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/launchertest/testrunner"
)

// Labels the suite puts on every task it starts.
const (
	// LabelRun is unique to one Run call.
	LabelRun = "odrkit.launchertest.run"
	// LabelCase is the name of the test case that started the task.
	LabelCase = "odrkit.launchertest.case"
)

// DefaultTimeout bounds each launcher call and each wait when
// Harness.Timeout is zero.
const DefaultTimeout = 60 * time.Second

// concurrentStarts is the number of StartTask calls the suite makes at once.
const concurrentStarts = 10

// Harness describes the launcher under test.
type Harness struct {
	// Plugin is the plugin under test. The suite builds each launcher the
	// way a launcher runner does: it encodes the config as JSON, decodes
	// that into a new config from Plugin.NewConfig, requires both to be
	// equal, validates the config when it implements
	// [tasklauncher.ConfigValidator], and calls Plugin.New.
	Plugin tasklauncher.Plugin

	// Config returns the config to build the launcher from, of the type
	// that Plugin.NewConfig returns. Nil means the defaults from
	// Plugin.NewConfig.
	Config func(t *testing.T) any

	// Runner returns a LaunchInfo that makes the launcher run
	// [testrunner.Main]: its Image, Entrypoint and Arguments, and any Env
	// entries the harness needs. The suite sets TaskID, RunnerID and
	// Labels, and adds the ODRKIT_* variables of the runner and
	// testrunner.EnvMode to Env. Required.
	Runner func(t *testing.T) *tasklauncher.LaunchInfo

	// RemoveTask, when set, deletes the platform resource of a running
	// task without the launcher, as an operator or the platform would.
	// The suite then requires StopTask of that state to return nil.
	RemoveTask func(t *testing.T, state []byte)

	// CountTasks, when set, returns the number of platform resources,
	// running or not, that carry all of the given labels. The suite uses
	// it to check that nothing is left behind. When it is nil, the suite
	// uses ListTasks of launchers that implement [tasklauncher.Lister],
	// and skips those checks for launchers that do not.
	CountTasks func(t *testing.T, labels map[string]string) int

	// Timeout bounds each launcher call and each wait. Zero means
	// DefaultTimeout.
	Timeout time.Duration
}

// suite is the state of one Run call.
type suite struct {
	h       Harness
	host    *host
	run     string
	timeout time.Duration
}

// Run runs the conformance suite against the launcher that h describes,
// each case as a subtest of t.
func Run(t *testing.T, h Harness) {
	t.Helper()
	switch {
	case h.Plugin.Name == "" || h.Plugin.New == nil || h.Plugin.NewConfig == nil:
		t.Fatal("launchertest: Harness.Plugin is incomplete: set Name, NewConfig and New, as the plugin's constructor returns them")
	case h.Runner == nil:
		t.Fatal("launchertest: Harness.Runner is nil: return a LaunchInfo that runs testrunner.Main")
	}
	s := &suite{h: h, run: randomID(), timeout: h.Timeout}
	if s.timeout == 0 {
		s.timeout = DefaultTimeout
	}
	s.host = startHost(t, newTestLogger(t))

	t.Run("StopEmptyState", s.testStopEmptyState)
	t.Run("RunnerTakesJob", s.testRunnerTakesJob)
	t.Run("StopTwice", s.testStopTwice)
	t.Run("StopAfterExit", s.testStopAfterExit)
	t.Run("StopGoneResource", s.testStopGoneResource)
	t.Run("WatchReportsExit", s.testWatchReportsExit)
	t.Run("ListTasksByLabels", s.testListTasksByLabels)
	t.Run("CancelledStart", s.testCancelledStart)
	t.Run("ConcurrentStarts", s.testConcurrentStarts)
	t.Run("NothingLeftBehind", s.testNothingLeftBehind)
}

// newLauncher builds the launcher under test from the harness config after
// a JSON round trip, and closes it when the test ends.
func (s *suite) newLauncher(t *testing.T) tasklauncher.Launcher {
	t.Helper()
	var cfg any
	if s.h.Config != nil {
		cfg = s.h.Config(t)
	} else {
		cfg = s.h.Plugin.NewConfig()
	}
	encoded, err := json.Marshal(cfg)
	require.NoError(t, err, "encode the %s launcher config as JSON", s.h.Plugin.Name)
	decoded := s.h.Plugin.NewConfig()
	require.NoError(t, json.Unmarshal(encoded, decoded), "decode the %s launcher config from JSON %s", s.h.Plugin.Name, encoded)
	require.Equal(t, cfg, decoded, "the %s launcher config changed in a JSON round trip; give every field a json tag that encoding/json restores", s.h.Plugin.Name)
	if v, ok := decoded.(tasklauncher.ConfigValidator); ok {
		require.NoError(t, v.Validate())
	}

	l, err := s.h.Plugin.New(decoded, tasklauncher.Options{Logger: newTestLogger(t)})
	require.NoError(t, err)
	require.NotNil(t, l)
	t.Cleanup(func() { require.NoError(t, l.Close()) })
	return l
}

func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	t.Cleanup(cancel)
	return ctx
}

// task is one runner launch the suite prepared.
type task struct {
	info *tasklauncher.LaunchInfo
	// jobID is the job held for the runner, or empty when the runner's
	// mode takes no job.
	jobID string
}

// caseLabels returns the labels that identify the tasks of test t.
func (s *suite) caseLabels(t *testing.T) map[string]string {
	return map[string]string{LabelRun: s.run, LabelCase: t.Name()}
}

// newTask prepares the launch of a runner in the given testrunner mode,
// with the case labels and extra labels. In ModeJob it submits the job that
// the runner takes.
func (s *suite) newTask(t *testing.T, mode string, extra map[string]string) *task {
	t.Helper()
	info := s.h.Runner(t)
	require.NotNil(t, info, "Harness.Runner returned nil")
	info = cloneInfo(info)

	runnerID := "lt-runner-" + randomID()
	info.TaskID = "lt-task-" + randomID()
	info.RunnerID = runnerID
	info.Labels = s.caseLabels(t)
	maps.Copy(info.Labels, extra)
	info.Labels[ondemand.LabelTask] = info.TaskID
	info.Labels[ondemand.LabelRunner] = runnerID

	token, err := s.host.mgr.IssueRunnerToken(runnerID, nil, tokenLifetime)
	require.NoError(t, err)
	if info.Env == nil {
		info.Env = map[string]string{}
	}
	info.Env[ondemand.EnvServerAddr] = s.host.addr
	info.Env[ondemand.EnvRunnerID] = runnerID
	info.Env[ondemand.EnvRunnerToken] = token
	info.Env[testrunner.EnvMode] = mode

	tk := &task{info: info}
	if mode == testrunner.ModeJob {
		job, err := s.host.mgr.Submit(s.ctx(t), ondemand.JobSpec{
			Kind:    testrunner.JobKind,
			Payload: []byte(runnerID),
			Target:  &ondemand.Target{RunnerID: runnerID},
		})
		require.NoError(t, err)
		tk.jobID = job.ID
	}
	return tk
}

func cloneInfo(info *tasklauncher.LaunchInfo) *tasklauncher.LaunchInfo {
	c := *info
	c.Entrypoint = slices.Clone(info.Entrypoint)
	c.Arguments = slices.Clone(info.Arguments)
	c.Env = maps.Clone(info.Env)
	c.Labels = maps.Clone(info.Labels)
	return &c
}

// start starts tk and stops it when the test ends, also when the test
// fails before its own StopTask.
func (s *suite) start(t *testing.T, l tasklauncher.Launcher, tk *task) []byte {
	t.Helper()
	state, err := l.StartTask(s.ctx(t), tk.info)
	s.stopOnCleanup(t, l, state)
	require.NoError(t, err, "StartTask of %s", tk.info)
	require.NotEmpty(t, state, "StartTask returned an empty state without an error")
	return state
}

func (s *suite) stopOnCleanup(t *testing.T, l tasklauncher.Launcher, state []byte) {
	if len(state) == 0 {
		return
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		if err := l.StopTask(ctx, state); err != nil {
			t.Errorf("StopTask on cleanup: %v", err)
		}
	})
}

// stop requires StopTask to return nil.
func (s *suite) stop(t *testing.T, l tasklauncher.Launcher, state []byte) {
	t.Helper()
	require.NoError(t, l.StopTask(s.ctx(t), state))
}

// waitJob requires the job of tk to succeed with the result its runner
// computes.
func (s *suite) waitJob(t *testing.T, tk *task) {
	t.Helper()
	job, err := s.host.mgr.Wait(s.ctx(t), tk.jobID)
	require.NoError(t, err, "wait for job %s of runner %s", tk.jobID, tk.info.RunnerID)
	require.Equal(t, ondemand.StateSuccess, job.State, "job %s: %v", job.ID, job.Error)
	require.Equal(t, tk.info.RunnerID, job.RunnerID)
	require.Equal(t, string(testrunner.JobResult([]byte(tk.info.RunnerID))), string(job.Result))
}

// watch returns the output and exit of a task from WatchTask.
func (s *suite) watch(t *testing.T, w tasklauncher.Watcher, state []byte) ([]tasklauncher.OutputLine, tasklauncher.TaskExit) {
	t.Helper()
	var lines []tasklauncher.OutputLine
	exit, err := w.WatchTask(s.ctx(t), state, func(line tasklauncher.OutputLine) {
		lines = append(lines, line)
	})
	require.NoError(t, err)
	return lines, exit
}

// requireStartLines requires the lines that testrunner.Main writes first,
// each on its own stream.
func requireStartLines(t *testing.T, lines []tasklauncher.OutputLine, runnerID string) {
	t.Helper()
	require.Contains(t, lines, tasklauncher.OutputLine{Stream: tasklauncher.Stdout, Line: testrunner.StdoutLine(runnerID)})
	require.Contains(t, lines, tasklauncher.OutputLine{Stream: tasklauncher.Stderr, Line: testrunner.StderrLine(runnerID)})
}

// counter returns a function that counts the tasks with given labels, and
// false when neither the harness nor the launcher can count them.
func (s *suite) counter(l tasklauncher.Launcher) (func(t *testing.T, labels map[string]string) int, bool) {
	if s.h.CountTasks != nil {
		return s.h.CountTasks, true
	}
	lister, ok := l.(tasklauncher.Lister)
	if !ok {
		return nil, false
	}
	return func(t *testing.T, labels map[string]string) int {
		t.Helper()
		tasks, err := lister.ListTasks(s.ctx(t), labels)
		require.NoError(t, err)
		return len(tasks)
	}, true
}

// waitExited waits until a task that exits by itself has exited.
func (s *suite) waitExited(t *testing.T, l tasklauncher.Launcher, state []byte, labels map[string]string) {
	t.Helper()
	if w, ok := l.(tasklauncher.Watcher); ok {
		s.watch(t, w, state)
		return
	}
	if lister, ok := l.(tasklauncher.Lister); ok {
		require.Eventually(t, func() bool {
			tasks, err := lister.ListTasks(s.ctx(t), labels)
			require.NoError(t, err)
			return !slices.ContainsFunc(tasks, func(ti tasklauncher.TaskInfo) bool { return ti.Running })
		}, s.timeout, 50*time.Millisecond)
		return
	}
	// NOTE: without WatchTask or ListTasks the suite cannot observe the
	// exit, so it gives the task a fixed time.
	time.Sleep(2 * time.Second)
}

func randomID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *suite) testStopEmptyState(t *testing.T) {
	l := s.newLauncher(t)
	s.stop(t, l, nil)
	s.stop(t, l, []byte{})
}

func (s *suite) testRunnerTakesJob(t *testing.T) {
	l := s.newLauncher(t)
	tk := s.newTask(t, testrunner.ModeJob, nil)
	state := s.start(t, l, tk)
	s.waitJob(t, tk)

	if w, ok := l.(tasklauncher.Watcher); ok {
		lines, exit := s.watch(t, w, state)
		require.Equal(t, 0, exit.Code, "exit of a runner that completed its job: %+v", exit)
		requireStartLines(t, lines, tk.info.RunnerID)
	}
	s.stop(t, l, state)
	if count, ok := s.counter(l); ok {
		require.Zero(t, count(t, s.caseLabels(t)), "a stopped task is still on the platform")
	}
}

func (s *suite) testStopTwice(t *testing.T) {
	l := s.newLauncher(t)
	tk := s.newTask(t, testrunner.ModeSleep, nil)
	state := s.start(t, l, tk)
	if lister, ok := l.(tasklauncher.Lister); ok {
		tasks, err := lister.ListTasks(s.ctx(t), s.caseLabels(t))
		require.NoError(t, err)
		require.Len(t, tasks, 1)
		require.True(t, tasks[0].Running, "a started task that waits for a signal is listed as not running")
	}

	s.stop(t, l, state)
	s.stop(t, l, state)
	if w, ok := l.(tasklauncher.Watcher); ok {
		_, err := w.WatchTask(s.ctx(t), state, func(tasklauncher.OutputLine) {})
		require.ErrorIs(t, err, tasklauncher.ErrTaskNotFound, "WatchTask of a stopped task")
	}
	if count, ok := s.counter(l); ok {
		require.Zero(t, count(t, s.caseLabels(t)), "a stopped task is still on the platform")
	}
}

func (s *suite) testStopAfterExit(t *testing.T) {
	l := s.newLauncher(t)
	tk := s.newTask(t, testrunner.ExitMode(0), nil)
	state := s.start(t, l, tk)
	s.waitExited(t, l, state, s.caseLabels(t))
	s.stop(t, l, state)
	s.stop(t, l, state)
}

func (s *suite) testStopGoneResource(t *testing.T) {
	t.Run("StoppedByAnotherLauncher", func(t *testing.T) {
		first := s.newLauncher(t)
		state := s.start(t, first, s.newTask(t, testrunner.ModeSleep, nil))
		s.stop(t, first, state)
		// A second launcher built from the same config, as in a host
		// process started after a restart.
		second := s.newLauncher(t)
		s.stop(t, second, state)
	})
	t.Run("RemovedOutsideLauncher", func(t *testing.T) {
		if s.h.RemoveTask == nil {
			t.Skip("Harness.RemoveTask is nil")
		}
		l := s.newLauncher(t)
		state := s.start(t, l, s.newTask(t, testrunner.ModeSleep, nil))
		s.h.RemoveTask(t, state)
		s.stop(t, l, state)
	})
}

func (s *suite) testWatchReportsExit(t *testing.T) {
	probe := s.newLauncher(t)
	if _, ok := probe.(tasklauncher.Watcher); !ok {
		t.Skipf("the %s launcher does not implement tasklauncher.Watcher", s.h.Plugin.Name)
	}
	cases := []struct {
		name string
		mode string
		code int
	}{
		{name: "AfterJob", mode: testrunner.ModeJob, code: 0},
		{name: "ZeroBeforeConnecting", mode: testrunner.ExitMode(0), code: 0},
		{name: "NonZeroBeforeConnecting", mode: testrunner.ExitMode(3), code: 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := s.newLauncher(t)
			w := l.(tasklauncher.Watcher)
			tk := s.newTask(t, tc.mode, nil)
			state := s.start(t, l, tk)
			lines, exit := s.watch(t, w, state)
			require.Equal(t, tc.code, exit.Code, "exit: %+v", exit)
			requireStartLines(t, lines, tk.info.RunnerID)
			if tk.jobID != "" {
				s.waitJob(t, tk)
			}
			s.stop(t, l, state)
		})
	}
}

func (s *suite) testListTasksByLabels(t *testing.T) {
	l := s.newLauncher(t)
	lister, ok := l.(tasklauncher.Lister)
	if !ok {
		t.Skipf("the %s launcher does not implement tasklauncher.Lister", s.h.Plugin.Name)
	}
	const groupLabel = "odrkit.launchertest.group"
	groupA := []*task{
		s.newTask(t, testrunner.ModeSleep, map[string]string{groupLabel: "a"}),
		s.newTask(t, testrunner.ModeSleep, map[string]string{groupLabel: "a"}),
	}
	taskB := s.newTask(t, testrunner.ModeSleep, map[string]string{groupLabel: "b"})
	for _, tk := range groupA {
		s.start(t, l, tk)
	}
	stateB := s.start(t, l, taskB)

	queryA := s.caseLabels(t)
	queryA[groupLabel] = "a"
	listed, err := lister.ListTasks(s.ctx(t), queryA)
	require.NoError(t, err)
	require.Len(t, listed, len(groupA), "ListTasks(%v) found %d tasks", queryA, len(listed))
	var runnerIDs []string
	for _, ti := range listed {
		require.True(t, ti.Running)
		require.NotEmpty(t, ti.State)
		for k, v := range queryA {
			require.Equal(t, v, ti.Labels[k], "label %q of a listed task", k)
		}
		runnerIDs = append(runnerIDs, ti.Labels[ondemand.LabelRunner])
	}
	require.ElementsMatch(t, []string{groupA[0].info.RunnerID, groupA[1].info.RunnerID}, runnerIDs)

	// The listed states stop the tasks, as a host that lost its own states
	// would stop them.
	for _, ti := range listed {
		s.stop(t, l, ti.State)
	}
	listed, err = lister.ListTasks(s.ctx(t), queryA)
	require.NoError(t, err)
	require.Empty(t, listed, "tasks stopped through their listed states are still listed")

	queryB := s.caseLabels(t)
	queryB[groupLabel] = "b"
	listed, err = lister.ListTasks(s.ctx(t), queryB)
	require.NoError(t, err)
	require.Len(t, listed, 1, "stopping group a changed group b")
	require.Equal(t, taskB.info.RunnerID, listed[0].Labels[ondemand.LabelRunner])
	s.stop(t, l, stateB)
}

func (s *suite) testCancelledStart(t *testing.T) {
	l := s.newLauncher(t)
	count, canCount := s.counter(l)
	// Delay 0 cancels the context before the call. The others cancel it
	// at different points of the start, depending on the platform's speed.
	delays := []time.Duration{0, time.Millisecond, 5 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond}
	failed := 0
	for i, delay := range delays {
		attempt := map[string]string{"odrkit.launchertest.attempt": strconv.Itoa(i)}
		tk := s.newTask(t, testrunner.ModeSleep, attempt)
		ctx, cancel := context.WithCancel(context.Background())
		if delay == 0 {
			cancel()
		} else {
			timer := time.AfterFunc(delay, cancel)
			defer timer.Stop()
		}
		state, err := l.StartTask(ctx, tk.info)
		cancel()
		if err != nil {
			failed++
			require.ErrorIs(t, err, context.Canceled, "StartTask with a context cancelled after %s", delay)
			// The interface allows a state for what exists next to the
			// error; StopTask must remove it.
			if len(state) > 0 {
				s.stop(t, l, state)
			}
		} else {
			s.stop(t, l, state)
		}
		if canCount {
			labels := s.caseLabels(t)
			maps.Copy(labels, attempt)
			require.Zero(t, count(t, labels), "a task is left behind after StartTask with a context cancelled after %s (error: %v)", delay, err)
		}
	}
	require.NotZero(t, failed, "StartTask succeeded with a context that was cancelled before the call")
	if !canCount {
		t.Log("the launcher does not implement tasklauncher.Lister and Harness.CountTasks is nil, so leftovers were not checked")
	}
}

func (s *suite) testConcurrentStarts(t *testing.T) {
	l := s.newLauncher(t)
	tasks := make([]*task, concurrentStarts)
	for i := range tasks {
		tasks[i] = s.newTask(t, testrunner.ModeJob, nil)
	}

	states := make([][]byte, len(tasks))
	errs := make([]error, len(tasks))
	var wg sync.WaitGroup
	for i, tk := range tasks {
		wg.Go(func() {
			states[i], errs[i] = l.StartTask(s.ctx(t), tk.info)
		})
	}
	wg.Wait()
	for i := range tasks {
		s.stopOnCleanup(t, l, states[i])
	}
	require.NoError(t, errors.Join(errs...))

	for _, tk := range tasks {
		s.waitJob(t, tk)
	}
	for i := range states {
		wg.Go(func() {
			errs[i] = l.StopTask(s.ctx(t), states[i])
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	if count, ok := s.counter(l); ok {
		require.Zero(t, count(t, s.caseLabels(t)), "stopped tasks are still on the platform")
	}
}

func (s *suite) testNothingLeftBehind(t *testing.T) {
	l := s.newLauncher(t)
	count, ok := s.counter(l)
	if !ok {
		t.Skip("the launcher does not implement tasklauncher.Lister and Harness.CountTasks is nil")
	}
	require.Zero(t, count(t, map[string]string{LabelRun: s.run}), "tasks of this suite run are still on the platform")
}
