package runnerapi_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/runnerapi"
	"github.com/odrkit/odrkit/runnerapi/runner"
	"github.com/odrkit/odrkit/runnerapi/runnerpb"
	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/exec"
)

// testHost is a host with a Manager and the runner API on a loopback port.
type testHost struct {
	mgr      *ondemand.Manager
	addr     string
	registry *tasklauncher.Registry
	stop     func()
}

// hostOptions changes the profile and Manager config of a test host.
type hostOptions struct {
	mode           string // envTestMode of the launched runners
	command        string // exec command; empty runs the test binary
	startupTimeout time.Duration
	targetRunner   *profile.TargetRunner
	launchRetries  int
	maxConcurrent  int
	// faults, when set, wraps the exec launcher in faultyLauncher.
	faults *launcherFaults
	// addr is the listen address; empty picks a free port.
	addr string
	// configure changes the Manager config after the defaults above.
	configure func(*ondemand.Config)
	// serverOptions are added to runnerapi.ServerOptions, for example TLS
	// credentials.
	serverOptions []grpc.ServerOption
	// profileEnv is added to the profile's env.
	profileEnv map[string]string
	// plugin replaces the exec plugin; its config must be *exec.Config.
	plugin *tasklauncher.Plugin
	// logs receives the host's log records at debug level; nil sends
	// them to the test log at info level.
	logs io.Writer
}

func startHost(t *testing.T, opts hostOptions) *testHost {
	t.Helper()
	if opts.addr == "" {
		opts.addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", opts.addr)
	require.NoError(t, err)

	plugin := exec.Plugin()
	switch {
	case opts.faults != nil:
		plugin = opts.faults.plugin()
	case opts.plugin != nil:
		plugin = *opts.plugin
	}
	registry := tasklauncher.NewRegistry(plugin)
	execConfig := exec.Plugin().NewConfig().(*exec.Config)
	execConfig.Command = opts.command
	execConfig.StopGrace = "2s"
	execConfig.OutputDir = t.TempDir()
	if opts.startupTimeout == 0 {
		opts.startupTimeout = time.Minute
	}
	env := map[string]string{envTestMode: opts.mode}
	maps.Copy(env, opts.profileEnv)
	profiles, err := profile.NewSet(&profile.Profile{
		Name:           "local",
		Plugin:         plugin.Name,
		Default:        true,
		Env:            env,
		StartupTimeout: opts.startupTimeout,
		TargetRunner:   opts.targetRunner,
		LaunchRetries:  opts.launchRetries,
		MaxConcurrent:  opts.maxConcurrent,
		Config:         execConfig,
	})
	require.NoError(t, err)

	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if opts.logs != nil {
		logger = slog.New(slog.NewTextHandler(opts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cfg := ondemand.Config{
		Launchers:        registry,
		Profiles:         profiles,
		AdvertiseAddr:    lis.Addr().String(),
		HeartbeatTimeout: 5 * time.Second,
		HostID:           "test-host-" + t.Name(),
		RetryBackoff:     10 * time.Millisecond,
		Logger:           logger,
	}
	if opts.configure != nil {
		opts.configure(&cfg)
	}
	mgr, err := ondemand.New(t.Context(), cfg)
	require.NoError(t, err)

	srv := grpc.NewServer(append(runnerapi.ServerOptions(), opts.serverOptions...)...)
	runnerapi.NewServer(mgr, runnerapi.Config{Logger: logger}).Register(srv)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			srv.Stop()
			<-served
			require.NoError(t, mgr.Close())
		})
	}
	t.Cleanup(stop)
	return &testHost{mgr: mgr, addr: lis.Addr().String(), registry: registry, stop: stop}
}

// testWriter sends log output to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitTask waits until the job's task is stopped and returns it.
func (h *testHost) waitTask(t *testing.T, job *ondemand.Job) *ondemand.Task {
	t.Helper()
	task, err := h.mgr.WaitTask(waitCtx(t), job.TaskID)
	require.NoError(t, err)
	return task
}

// requireStopped waits until the job's task is stopped and checks that its
// runner process is gone.
func (h *testHost) requireStopped(t *testing.T, job *ondemand.Job) *ondemand.Task {
	t.Helper()
	task := h.waitTask(t, job)
	require.Equal(t, ondemand.TaskStopped, task.State)
	requireProcessGone(t, task.LauncherState)
	return task
}

// waitFailed waits until the job is terminal and checks that it failed
// with the given reason.
func (h *testHost) waitFailed(t *testing.T, id string, reason ondemand.Reason) *ondemand.Job {
	t.Helper()
	done, err := h.mgr.Wait(waitCtx(t), id)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateError, done.State)
	require.NotNil(t, done.Error)
	require.Equal(t, reason, done.Error.Reason)
	return done
}

// waitTaskStarted polls until StartTask has returned for the job's task.
func (h *testHost) waitTaskStarted(t *testing.T, job *ondemand.Job) *ondemand.Task {
	t.Helper()
	var task *ondemand.Task
	require.Eventually(t, func() bool {
		var err error
		task, err = h.mgr.Task(t.Context(), job.TaskID)
		require.NoError(t, err)
		return task.State != ondemand.TaskPending
	}, 30*time.Second, 10*time.Millisecond)
	return task
}

// requireProcessGone fails unless the process in an exec launcher state
// no longer runs.
func requireProcessGone(t *testing.T, launcherState []byte) {
	t.Helper()
	pid := runnerPID(t, launcherState)
	require.False(t, processAlive(pid), "runner process %d is still alive", pid)
}

// processAlive reports whether a process exists and is not a zombie. A
// runner started by a Manager that was closed stays a zombie of the test
// process after it is stopped, as nothing reaps it until the test ends.
func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state is the first field after the command name in brackets.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

func TestOnDemandJobSucceeds(t *testing.T) {
	h := startHost(t, hostOptions{})
	ctx := waitCtx(t)
	job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines, Payload: []byte("first\nsecond\nthird")})
	require.NoError(t, err)
	require.Equal(t, ondemand.StateQueued, job.State)
	require.NotEmpty(t, job.TaskID)

	var lines []string
	var types []ondemand.EventType
	for ev, err := range h.mgr.Watch(ctx, job.ID) {
		require.NoError(t, err)
		types = append(types, ev.Type)
		if ev.Type == ondemand.EventOutput {
			lines = append(lines, ev.Line)
		}
	}
	require.Equal(t, []string{"first", "second", "third"}, lines)
	require.Contains(t, types, ondemand.EventLaunched)
	require.Contains(t, types, ondemand.EventRunning)
	require.Equal(t, ondemand.EventDone, types[len(types)-1])

	done, err := h.mgr.Get(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateSuccess, done.State)
	require.Equal(t, []byte("done"), done.Result)
	require.Nil(t, done.Error)

	task := h.waitTask(t, job)
	require.Equal(t, ondemand.TaskStopped, task.State)
	require.Equal(t, task.RunnerID, done.RunnerID)
	requireProcessGone(t, task.LauncherState)
}

func TestOnDemandJobFailsWithExitCode(t *testing.T) {
	h := startHost(t, hostOptions{})
	ctx := waitCtx(t)
	job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindFail, Payload: []byte("3")})
	require.NoError(t, err)

	done, err := h.mgr.Wait(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateError, done.State)
	require.NotNil(t, done.Error)
	require.Equal(t, ondemand.ReasonJobFailed, done.Error.Reason)
	require.Contains(t, done.Error.Message, "failed on purpose")
	require.NotNil(t, done.Error.ExitCode)
	require.Equal(t, 3, *done.Error.ExitCode)

	var jobErr *ondemand.JobError
	require.ErrorAs(t, done.Error, &jobErr)
	require.Equal(t, ondemand.TaskStopped, h.waitTask(t, job).State)
}

// openStream opens a job stream with a token and sends Open.
func openStream(t *testing.T, ctx context.Context, addr, token, runnerID string) runnerpb.RunnerService_JobStreamClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	stream, err := runnerpb.NewRunnerServiceClient(conn).JobStream(ctx)
	require.NoError(t, err)
	err = stream.Send(&runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Open_{Open: &runnerpb.JobStreamRequest_Open{RunnerId: runnerID}}})
	if !errors.Is(err, io.EOF) {
		// io.EOF means the server has already ended the stream; Recv
		// returns its status.
		require.NoError(t, err)
	}
	return stream
}

func TestHeldJobGoesOnlyToItsRunner(t *testing.T) {
	h := startHost(t, hostOptions{mode: modeNeverConnect})
	job, err := h.mgr.Submit(waitCtx(t), ondemand.JobSpec{Kind: kindLines, Payload: []byte("secret work")})
	require.NoError(t, err)
	h.waitTaskStarted(t, job)

	// A static runner with a valid token of its own waits and gets nothing.
	token, err := h.mgr.IssueRunnerToken("static-1", nil, time.Minute)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	stream := openStream(t, ctx, h.addr, token, "static-1")
	_, err = stream.Recv()
	require.Equal(t, codes.DeadlineExceeded, status.Code(err), "a runner got a job held for another runner: %v", err)

	got, err := h.mgr.Get(t.Context(), job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateQueued, got.State)
	require.Empty(t, got.RunnerID)
	require.Equal(t, 1, h.mgr.HeldJobs())
	require.NoError(t, h.mgr.Cancel(t.Context(), job.ID))
	h.waitTask(t, job)
}

func TestTokenOfOtherRunnerRejected(t *testing.T) {
	h := startHost(t, hostOptions{mode: modeNeverConnect})
	job, err := h.mgr.Submit(waitCtx(t), ondemand.JobSpec{Kind: kindLines, Payload: []byte("x")})
	require.NoError(t, err)
	task := h.waitTaskStarted(t, job)

	// Runner A's valid token, while claiming to be the held job's runner.
	token, err := h.mgr.IssueRunnerToken("runner-a", nil, time.Minute)
	require.NoError(t, err)
	stream := openStream(t, waitCtx(t), h.addr, token, task.RunnerID)
	_, err = stream.Recv()
	require.Equal(t, codes.Unauthenticated, status.Code(err))
	require.NotContains(t, err.Error(), token)

	got, err := h.mgr.Get(t.Context(), job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateQueued, got.State)
	require.Equal(t, 0, int(got.Attempt), "the job was assigned")
	require.NoError(t, h.mgr.Cancel(t.Context(), job.ID))
	h.waitTask(t, job)
}

func TestStartTaskFailureFailsJob(t *testing.T) {
	h := startHost(t, hostOptions{command: "/nonexistent/odrkit-runner"})
	ctx := waitCtx(t)
	job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines})
	require.NoError(t, err)

	done := h.waitFailed(t, job.ID, ondemand.ReasonLaunchFailed)
	require.Contains(t, done.Error.Message, "launch failed")
	require.Contains(t, done.Error.Message, "/nonexistent/odrkit-runner")

	task := h.waitTask(t, job)
	require.Equal(t, ondemand.TaskStopped, task.State)
	stop, err := h.mgr.Get(ctx, task.StopJobID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateSuccess, stop.State, "the stop job did not run")
}

func TestRunnerExitingBeforeConnectFailsJob(t *testing.T) {
	// The startup timeout is far longer than the wait below, so only the
	// watch job can fail the job in time.
	h := startHost(t, hostOptions{mode: modeExitEarly, startupTimeout: time.Hour})
	ctx := waitCtx(t)
	job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines})
	require.NoError(t, err)

	done := h.waitFailed(t, job.ID, ondemand.ReasonExitedBeforeConnect)
	require.NotNil(t, done.Error.ExitCode)
	require.Equal(t, 7, *done.Error.ExitCode)
	require.Contains(t, done.Error.Message, "configuration missing")
	require.Equal(t, ondemand.TaskStopped, h.waitTask(t, job).State)
}

func TestRunnerNeverConnectingTimesOut(t *testing.T) {
	h := startHost(t, hostOptions{mode: modeNeverConnect, startupTimeout: time.Second})
	ctx := waitCtx(t)
	job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines})
	require.NoError(t, err)

	done := h.waitFailed(t, job.ID, ondemand.ReasonStartupTimeout)
	require.Contains(t, done.Error.Message, "1s")

	h.requireStopped(t, job)
}

func TestCancelHeldJobStopsTask(t *testing.T) {
	h := startHost(t, hostOptions{mode: modeNeverConnect})
	ctx := waitCtx(t)
	job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines})
	require.NoError(t, err)
	started := h.waitTaskStarted(t, job)
	require.Equal(t, ondemand.TaskStarted, started.State)

	require.NoError(t, h.mgr.Cancel(ctx, job.ID))
	done, err := h.mgr.Get(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateCancelled, done.State)
	require.Equal(t, ondemand.ReasonCancelled, done.Error.Reason)

	h.requireStopped(t, job)
}

func TestCancelRunningJob(t *testing.T) {
	h := startHost(t, hostOptions{})
	ctx := waitCtx(t)
	job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindBlock})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		got, err := h.mgr.Get(ctx, job.ID)
		require.NoError(t, err)
		return got.State == ondemand.StateRunning
	}, 30*time.Second, 10*time.Millisecond)

	require.NoError(t, h.mgr.Cancel(ctx, job.ID))
	done, err := h.mgr.Wait(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateCancelled, done.State)
	require.Equal(t, ondemand.ReasonCancelled, done.Error.Reason)
	require.Equal(t, ondemand.TaskStopped, h.waitTask(t, job).State)
}

func TestStaticRunnerExecutesLaunchJobs(t *testing.T) {
	labels := map[string]string{"zone": "test"}
	h := startHost(t, hostOptions{targetRunner: &profile.TargetRunner{Labels: labels}})
	ctx := waitCtx(t)

	token, err := h.mgr.IssueRunnerToken("launcher-1", labels, time.Minute)
	require.NoError(t, err)
	r, err := runner.New(runner.Config{
		ServerAddr:  h.addr,
		RunnerID:    "launcher-1",
		Token:       token,
		Labels:      labels,
		Concurrency: 4,
	})
	require.NoError(t, err)
	executor := ondemand.NewLaunchExecutor(h.registry, nil)
	defer executor.Close()
	runnerapi.HandleLaunchJobs(r, executor)
	runCtx, stopRunner := context.WithCancel(t.Context())
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(runCtx) }()
	defer func() {
		stopRunner()
		require.NoError(t, <-runDone)
	}()

	job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines, Payload: []byte("via static launcher")})
	require.NoError(t, err)
	done, err := h.mgr.Wait(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateSuccess, done.State)

	task := h.waitTask(t, job)
	require.Equal(t, ondemand.TaskStopped, task.State)
	for _, id := range []string{task.StartJobID, task.StopJobID} {
		launchJob, err := h.mgr.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, ondemand.StateSuccess, launchJob.State, "job %s", id)
		require.Equal(t, "launcher-1", launchJob.RunnerID, "job %s ran elsewhere", id)
	}
	requireProcessGone(t, task.LauncherState)
}

func TestStreamWithoutTokenRejected(t *testing.T) {
	h := startHost(t, hostOptions{})
	stream := openStream(t, waitCtx(t), h.addr, "not-a-token", "anyone")
	_, err := stream.Recv()
	require.Equal(t, codes.Unauthenticated, status.Code(err))
	require.NotContains(t, err.Error(), "not-a-token")
}
