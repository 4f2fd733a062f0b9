package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/odrkit/odrkit/runnerapi/runnerpb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// echoHandler returns the payload as the result.
func echoHandler(_ context.Context, job *Job, _ *Output) ([]byte, error) {
	return job.Payload, nil
}

// waitForCancel blocks until ctx is cancelled and returns ctx.Err().
func waitForCancel(ctx context.Context, _ *Job, _ *Output) ([]byte, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(testTimeout):
		return nil, errors.New("the job's context was not cancelled")
	}
}

func newTestRunner(t *testing.T, cfg Config) *Runner {
	t.Helper()
	r, err := New(cfg)
	require.NoError(t, err)
	return r
}

// outputLines returns the lines of a stream's Output messages as
// "stream:line", in the order they arrived.
func outputLines(rec *streamRecord) []string {
	var lines []string
	for _, req := range rec.requests {
		for _, l := range req.GetOutput().GetLines() {
			lines = append(lines, Stream(l.GetStream()).String()+":"+l.GetLine())
		}
	}
	return lines
}

// completeOf returns the Complete message that must end a stream.
func completeOf(t *testing.T, rec *streamRecord) *runnerpb.JobStreamRequest_Complete {
	t.Helper()
	require.NotEmpty(t, rec.requests, "the runner sent nothing after Open")
	complete := rec.requests[len(rec.requests)-1].GetComplete()
	require.NotNil(t, complete, "the last message is %v, not Complete", rec.requests[len(rec.requests)-1])
	return complete
}

func countHeartbeats(rec *streamRecord) int {
	n := 0
	for _, req := range rec.requests {
		if req.GetHeartbeat() != nil {
			n++
		}
	}
	return n
}

func TestOnDemandRunnerCompletesOneJob(t *testing.T) {
	host := newScriptedHost()
	addr := serveHost(t, host)
	host.jobs <- scriptedJob{id: "job-1", kind: "echo", payload: []byte("hello")}

	var want []string
	r := newTestRunner(t, testConfig(addr, t.Output()))
	r.Handle("echo", func(_ context.Context, job *Job, out *Output) ([]byte, error) {
		for i := range 250 {
			out.Line(Stdout, fmt.Sprintf("line %d", i))
		}
		w := out.Writer(Stderr)
		if _, err := io.WriteString(w, "first\nsecond\r\npartial"); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
		return append([]byte("echo: "), job.Payload...), nil
	})
	for i := range 250 {
		want = append(want, fmt.Sprintf("stdout:line %d", i))
	}
	want = append(want, "stderr:first", "stderr:second", "stderr:partial")

	_, done := startRunner(t, r)
	require.NoError(t, awaitRun(t, done))

	rec := host.awaitFinished(t)
	require.Equal(t, testRunnerID, rec.open.GetRunnerId())
	require.True(t, rec.open.GetOnDemand())
	require.Equal(t, map[string]string{"zone": "test"}, rec.open.GetLabels())
	require.NotNil(t, rec.requests[0].GetAck(), "the first message after the assignment is %v, not Ack", rec.requests[0])
	require.Equal(t, want, outputLines(rec))
	complete := completeOf(t, rec)
	require.Nil(t, complete.GetError())
	require.Equal(t, "echo: hello", string(complete.GetResult()))
	require.Equal(t, 1, host.streamCount(), "an on-demand runner opens one stream for its one job")
}

func TestOutputSentBeforeComplete(t *testing.T) {
	host := newScriptedHost()
	addr := serveHost(t, host)
	host.jobs <- scriptedJob{id: "job-1", kind: "echo"}
	r := newTestRunner(t, testConfig(addr, t.Output()))
	// Fewer lines than a batch, written just before the handler returns:
	// only the flush before Complete sends them.
	r.Handle("echo", func(_ context.Context, _ *Job, out *Output) ([]byte, error) {
		out.Line(Stdout, "one")
		out.Line(Stderr, "two")
		return nil, nil
	})

	_, done := startRunner(t, r)
	require.NoError(t, awaitRun(t, done))

	rec := host.awaitFinished(t)
	require.Equal(t, []string{"stdout:one", "stderr:two"}, outputLines(rec))
	require.Nil(t, completeOf(t, rec).GetError())
}

func TestTokenSentAsBearerMetadata(t *testing.T) {
	host := newScriptedHost()
	addr := serveHost(t, host)
	host.jobs <- scriptedJob{id: "job-1", kind: "echo"}
	r := newTestRunner(t, testConfig(addr, t.Output()))
	r.Handle("echo", echoHandler)

	_, done := startRunner(t, r)
	require.NoError(t, awaitRun(t, done))

	rec := host.awaitFinished(t)
	require.Equal(t, []string{"Bearer " + testToken}, rec.authorization)
}

func TestHandlerErrorReachesHost(t *testing.T) {
	tests := []struct {
		name         string
		err          error
		wantMessage  string
		wantExitCode *int32
	}{
		{
			name:         "wrapped exit error",
			err:          fmt.Errorf("build: %w", &ExitError{Code: 3, Err: errors.New("make failed")}),
			wantMessage:  "build: make failed",
			wantExitCode: ptr(int32(3)),
		},
		{
			name:         "exit error without cause",
			err:          &ExitError{Code: 137},
			wantMessage:  "exit code 137",
			wantExitCode: ptr(int32(137)),
		},
		{
			name:        "plain error",
			err:         errors.New("payload is not JSON"),
			wantMessage: "payload is not JSON",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newScriptedHost()
			addr := serveHost(t, host)
			host.jobs <- scriptedJob{id: "job-1", kind: "fail"}
			r := newTestRunner(t, testConfig(addr, t.Output()))
			r.Handle("fail", func(context.Context, *Job, *Output) ([]byte, error) {
				return nil, tt.err
			})

			_, done := startRunner(t, r)
			require.NoError(t, awaitRun(t, done), "a failed job that reached the host is a delivered job")

			jobErr := completeOf(t, host.awaitFinished(t)).GetError()
			require.NotNil(t, jobErr)
			require.Equal(t, tt.wantMessage, jobErr.GetMessage())
			require.Equal(t, tt.wantExitCode, jobErr.ExitCode)
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestHandlerPanicCompletesWithError(t *testing.T) {
	host := newScriptedHost()
	addr := serveHost(t, host)
	host.jobs <- scriptedJob{id: "job-1", kind: "panic"}
	r := newTestRunner(t, testConfig(addr, t.Output()))
	r.Handle("panic", func(context.Context, *Job, *Output) ([]byte, error) {
		panic("index out of range")
	})

	_, done := startRunner(t, r)
	require.NoError(t, awaitRun(t, done))

	jobErr := completeOf(t, host.awaitFinished(t)).GetError()
	require.Equal(t, "job handler panicked: index out of range", jobErr.GetMessage())
}

func TestStaticRunnerRejectsUnknownKind(t *testing.T) {
	host := newScriptedHost()
	addr := serveHost(t, host)
	host.jobs <- scriptedJob{id: "job-unknown", kind: "missing"}
	host.jobs <- scriptedJob{id: "job-echo", kind: "echo", payload: []byte("after")}
	cfg := testConfig(addr, t.Output())
	cfg.OnDemand = false
	r := newTestRunner(t, cfg)
	r.Handle("echo", echoHandler)
	cancel, done := startRunner(t, r)

	rejected := host.awaitFinished(t)
	require.Equal(t, "job-unknown", rejected.jobID)
	require.Len(t, rejected.requests, 1)
	require.Equal(t, `no handler registered for job kind "missing"`, rejected.requests[0].GetNack().GetMessage())

	completed := host.awaitFinished(t)
	require.Equal(t, "job-echo", completed.jobID)
	require.Equal(t, "after", string(completeOf(t, completed).GetResult()))

	cancel()
	require.NoError(t, awaitRun(t, done))
}

func TestOnDemandRunnerUnknownKindFailsRun(t *testing.T) {
	host := newScriptedHost()
	addr := serveHost(t, host)
	host.jobs <- scriptedJob{id: "job-unknown", kind: "missing"}
	r := newTestRunner(t, testConfig(addr, t.Output()))
	r.Handle("echo", echoHandler)

	_, done := startRunner(t, r)
	err := awaitRun(t, done)
	require.ErrorContains(t, err, `job job-unknown`)
	require.ErrorContains(t, err, `"missing"`)

	rejected := host.awaitFinished(t)
	require.NotNil(t, rejected.requests[0].GetNack())
}

func TestHostCancelCancelsHandler(t *testing.T) {
	host := newScriptedHost()
	addr := serveHost(t, host)
	host.jobs <- scriptedJob{id: "job-1", kind: "wait", cancelReason: "stopped by user"}
	r := newTestRunner(t, testConfig(addr, t.Output()))
	r.Handle("wait", waitForCancel)

	_, done := startRunner(t, r)
	require.NoError(t, awaitRun(t, done))

	jobErr := completeOf(t, host.awaitFinished(t)).GetError()
	require.NotNil(t, jobErr)
	require.Equal(t, "job cancelled by the host: stopped by user", jobErr.GetMessage())
	require.Nil(t, jobErr.ExitCode)
}

func TestBrokenStreamCancelsHandler(t *testing.T) {
	host := newScriptedHost()
	addr := serveHost(t, host)
	host.jobs <- scriptedJob{id: "job-1", kind: "wait", abortAfterAck: true}
	handlerErr := make(chan error, 1)
	r := newTestRunner(t, testConfig(addr, t.Output()))
	r.Handle("wait", func(ctx context.Context, job *Job, out *Output) ([]byte, error) {
		result, err := waitForCancel(ctx, job, out)
		handlerErr <- context.Cause(ctx)
		return result, err
	})

	_, done := startRunner(t, r)
	err := awaitRun(t, done)
	require.ErrorContains(t, err, "job job-1 was not delivered")
	require.Equal(t, codes.Aborted, status.Code(err))

	cause := <-handlerErr
	require.ErrorContains(t, cause, "job stream broke")
	require.Equal(t, codes.Aborted, status.Code(cause))
}

func TestRunCancelCompletesRunningJob(t *testing.T) {
	host := newScriptedHost()
	addr := serveHost(t, host)
	host.jobs <- scriptedJob{id: "job-1", kind: "wait"}
	started := make(chan struct{})
	r := newTestRunner(t, testConfig(addr, t.Output()))
	r.Handle("wait", func(ctx context.Context, job *Job, out *Output) ([]byte, error) {
		close(started)
		return waitForCancel(ctx, job, out)
	})

	cancel, done := startRunner(t, r)
	select {
	case <-started:
	case <-time.After(testTimeout):
		t.Fatal("the handler did not start")
	}
	cancel()
	require.NoError(t, awaitRun(t, done), "the job's failure was delivered to the host")

	jobErr := completeOf(t, host.awaitFinished(t)).GetError()
	require.Equal(t, "runner is stopping: context canceled", jobErr.GetMessage())
}

func TestRejectedCredentialsEndRun(t *testing.T) {
	tests := []struct {
		name     string
		onDemand bool
		code     codes.Code
	}{
		{name: "static unauthenticated", code: codes.Unauthenticated},
		{name: "static permission denied", code: codes.PermissionDenied},
		{name: "on-demand unauthenticated", onDemand: true, code: codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newScriptedHost()
			host.rejectCode = tt.code
			addr := serveHost(t, host)
			var logs syncBuffer
			cfg := testConfig(addr, &logs)
			cfg.OnDemand = tt.onDemand
			r := newTestRunner(t, cfg)
			r.Handle("echo", echoHandler)

			_, done := startRunner(t, r)
			err := awaitRun(t, done)
			require.Error(t, err)
			require.Equal(t, tt.code, status.Code(err))
			require.ErrorContains(t, err, testRunnerID)
			require.NotContains(t, err.Error(), testToken)
			require.NotContains(t, logs.String(), testToken)
			require.Equal(t, 1, host.streamCount(), "the runner retried rejected credentials")
		})
	}
}

func TestHeartbeatsWhileHandlerRuns(t *testing.T) {
	host := newScriptedHost()
	addr := serveHost(t, host)
	host.jobs <- scriptedJob{id: "job-1", kind: "slow", heartbeatMS: 20}
	r := newTestRunner(t, testConfig(addr, t.Output()))
	r.Handle("slow", func(ctx context.Context, _ *Job, _ *Output) ([]byte, error) {
		// Finish only after the host has seen three heartbeats.
		for range 3 {
			select {
			case <-host.heartbeats:
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(testTimeout):
				return nil, errors.New("the host received no heartbeat")
			}
		}
		return []byte("done"), nil
	})

	_, done := startRunner(t, r)
	require.NoError(t, awaitRun(t, done))

	rec := host.awaitFinished(t)
	complete := completeOf(t, rec)
	require.Nil(t, complete.GetError())
	require.GreaterOrEqual(t, countHeartbeats(rec), 3)
	require.NotNil(t, rec.requests[0].GetAck(), "a heartbeat came before Ack")
}

func TestStaticRunnerRunsJobsConcurrently(t *testing.T) {
	host := newScriptedHost()
	addr := serveHost(t, host)
	host.jobs <- scriptedJob{id: "job-1", kind: "meet"}
	host.jobs <- scriptedJob{id: "job-2", kind: "meet"}
	cfg := testConfig(addr, t.Output())
	cfg.OnDemand = false
	cfg.Concurrency = 2
	r := newTestRunner(t, cfg)

	// Each job succeeds only if the other one starts while it runs.
	var (
		mu      sync.Mutex
		running int
	)
	bothRunning := make(chan struct{})
	r.Handle("meet", func(ctx context.Context, _ *Job, _ *Output) ([]byte, error) {
		mu.Lock()
		running++
		if running == 2 {
			close(bothRunning)
		}
		mu.Unlock()
		select {
		case <-bothRunning:
			return []byte("met"), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(testTimeout):
			return nil, errors.New("the other job did not start while this one ran")
		}
	})
	cancel, done := startRunner(t, r)

	completed := map[string]string{}
	for range 2 {
		rec := host.awaitFinished(t)
		complete := completeOf(t, rec)
		require.Nil(t, complete.GetError(), "job %s", rec.jobID)
		completed[rec.jobID] = string(complete.GetResult())
	}
	require.Equal(t, map[string]string{"job-1": "met", "job-2": "met"}, completed)

	cancel()
	require.NoError(t, awaitRun(t, done))
}

func TestStaticRunnerRetriesFailedStreams(t *testing.T) {
	host := newScriptedHost()
	host.unavailableStreams = 2
	addr := serveHost(t, host)
	host.jobs <- scriptedJob{id: "job-1", kind: "echo", payload: []byte("ok")}
	var logs syncBuffer
	cfg := testConfig(addr, &logs)
	cfg.OnDemand = false
	r := newTestRunner(t, cfg)
	r.Handle("echo", echoHandler)
	cancel, done := startRunner(t, r)

	rec := host.awaitFinished(t)
	require.Equal(t, "ok", string(completeOf(t, rec).GetResult()))
	require.Equal(t, 2, strings.Count(logs.String(), "job stream failed, retrying"))
	require.Contains(t, logs.String(), "the host is restarting")

	cancel()
	require.NoError(t, awaitRun(t, done))
}

func TestOnDemandRunnerWaitsForHost(t *testing.T) {
	addr := unusedAddr(t)
	var logs syncBuffer
	r := newTestRunner(t, testConfig(addr, &logs))
	r.Handle("echo", echoHandler)
	_, done := startRunner(t, r)

	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "job stream failed, retrying")
	}, testTimeout, 10*time.Millisecond)
	host := newScriptedHost()
	host.jobs <- scriptedJob{id: "job-1", kind: "echo", payload: []byte("late")}
	serveHostAt(t, host, addr)

	require.NoError(t, awaitRun(t, done))
	require.Equal(t, "late", string(completeOf(t, host.awaitFinished(t)).GetResult()))
}

func TestOnDemandRunnerGivesUpOnUnreachableHost(t *testing.T) {
	addr := unusedAddr(t)
	var logs syncBuffer
	cfg := testConfig(addr, &logs)
	cfg.ConnectTimeout = 300 * time.Millisecond
	r := newTestRunner(t, cfg)
	r.Handle("echo", echoHandler)

	_, done := startRunner(t, r)
	err := awaitRun(t, done)
	require.ErrorContains(t, err, "could not reach the host at "+addr+" within 300ms")
	require.Equal(t, codes.Unavailable, status.Code(err))
	require.Contains(t, logs.String(), "job stream failed, retrying")
}

func TestRunStopsWhileWaitingForJob(t *testing.T) {
	tests := []struct {
		name     string
		onDemand bool
		wantErr  bool
	}{
		{name: "static", onDemand: false, wantErr: false},
		{name: "on-demand", onDemand: true, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newScriptedHost()
			addr := serveHost(t, host)
			cfg := testConfig(addr, t.Output())
			cfg.OnDemand = tt.onDemand
			r := newTestRunner(t, cfg)
			r.Handle("echo", echoHandler)
			cancel, done := startRunner(t, r)

			require.Eventually(t, func() bool { return host.streamCount() == 1 }, testTimeout, 10*time.Millisecond)
			cancel()
			err := awaitRun(t, done)
			if tt.wantErr {
				require.ErrorIs(t, err, context.Canceled)
				require.ErrorContains(t, err, "stopped before it received a job")
			} else {
				require.NoError(t, err)
			}
		})
	}
}

func TestRunWithoutHandlersFails(t *testing.T) {
	r := newTestRunner(t, testConfig(unusedAddr(t), t.Output()))
	err := r.Run(context.Background())
	require.ErrorContains(t, err, "register one with Handle")
}

func TestHandleRejectsBadRegistrations(t *testing.T) {
	r := newTestRunner(t, testConfig("127.0.0.1:1", t.Output()))
	r.Handle("echo", echoHandler)

	require.PanicsWithValue(t, `runner: a handler for job kind "echo" is already registered`, func() { r.Handle("echo", echoHandler) })
	require.Panics(t, func() { r.Handle("", echoHandler) })
	require.Panics(t, func() { r.Handle("nil", nil) })
}
