package runnerapi_test

import (
	"context"
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/tasklauncher/exec"
)

// runnerPID returns the PID in an exec launcher state.
func runnerPID(t *testing.T, launcherState []byte) int {
	t.Helper()
	var state struct {
		PID int `json:"pid"`
	}
	require.NoError(t, json.Unmarshal(launcherState, &state))
	require.NotZero(t, state.PID)
	return state.PID
}

// waitState polls until the job is in the given state.
func (h *testHost) waitState(t *testing.T, id string, want ondemand.State) *ondemand.Job {
	t.Helper()
	var job *ondemand.Job
	require.Eventually(t, func() bool {
		var err error
		job, err = h.mgr.Get(t.Context(), id)
		require.NoError(t, err)
		return job.State == want
	}, 30*time.Second, 5*time.Millisecond, "job %s never reached %s", id, want)
	return job
}

// events returns the job's events recorded so far.
func (h *testHost) events(t *testing.T, id string) []ondemand.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	var events []ondemand.Event
	for ev, err := range h.mgr.Watch(ctx, id) {
		if err != nil {
			break
		}
		events = append(events, ev)
	}
	return events
}

func countEvents(events []ondemand.Event, typ ondemand.EventType) int {
	n := 0
	for _, ev := range events {
		if ev.Type == typ {
			n++
		}
	}
	return n
}

func TestRunnerKilledMidJob(t *testing.T) {
	h := startHost(t, hostOptions{})
	job, err := h.mgr.Submit(waitCtx(t), ondemand.JobSpec{Kind: kindBlock})
	require.NoError(t, err)
	h.waitState(t, job.ID, ondemand.StateRunning)

	task, err := h.mgr.Task(t.Context(), job.TaskID)
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(runnerPID(t, task.LauncherState), syscall.SIGKILL))

	h.waitFailed(t, job.ID, ondemand.ReasonRunnerLost)
	require.Equal(t, ondemand.TaskStopped, h.waitTask(t, job).State)
}

func TestNackedJobWaitsUntilStartupDeadline(t *testing.T) {
	h := startHost(t, hostOptions{mode: modeNackOnce, startupTimeout: 2 * time.Second, configure: func(c *ondemand.Config) {
		c.AckTimeout = 100 * time.Millisecond
	}})
	job, err := h.mgr.Submit(waitCtx(t), ondemand.JobSpec{Kind: kindLines})
	require.NoError(t, err)

	// The runner rejects the job, which goes back to the holding set.
	require.Eventually(t, func() bool {
		return countEvents(h.events(t, job.ID), ondemand.EventRequeued) == 1
	}, 30*time.Second, 10*time.Millisecond)
	got, err := h.mgr.Get(t.Context(), job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateQueued, got.State)
	require.Equal(t, 1, h.mgr.HeldJobs())

	done, err := h.mgr.Wait(waitCtx(t), job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.ReasonStartupTimeout, done.Error.Reason)
	task := h.waitTask(t, job)
	require.WithinDuration(t, task.StartupDeadline, done.DoneAt, time.Second, "the deadline was not the stored one")

	// No timer of the rejected attempt fired later: one requeue, one end.
	events := h.events(t, job.ID)
	require.Equal(t, 1, countEvents(events, ondemand.EventRequeued))
	require.Equal(t, 1, countEvents(events, ondemand.EventDone))
}

func TestOnDemandRunnerRefusedSecondJob(t *testing.T) {
	h := startHost(t, hostOptions{})
	job, err := h.mgr.Submit(waitCtx(t), ondemand.JobSpec{Kind: kindSecondStream})
	require.NoError(t, err)
	done, err := h.mgr.Wait(waitCtx(t), job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateSuccess, done.State)

	var lines []string
	for _, ev := range h.events(t, job.ID) {
		if ev.Type == ondemand.EventOutput {
			lines = append(lines, ev.Line)
		}
	}
	require.Equal(t, []string{"second job stream: PermissionDenied"}, lines)
	require.Equal(t, 1, done.Attempt)
	h.waitTask(t, job)
}

func TestCancelWhileTaskStarting(t *testing.T) {
	faults := &launcherFaults{startDelay: 500 * time.Millisecond}
	h := startHost(t, hostOptions{mode: modeNeverConnect, faults: faults})
	ctx := waitCtx(t)
	job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines})
	require.NoError(t, err)
	task, err := h.mgr.Task(ctx, job.TaskID)
	require.NoError(t, err)
	h.waitState(t, task.StartJobID, ondemand.StateRunning)

	require.NoError(t, h.mgr.Cancel(ctx, job.ID))
	got, err := h.mgr.Get(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateCancelled, got.State)

	stopped := h.waitTask(t, job)
	require.Equal(t, ondemand.TaskStopped, stopped.State)
	require.NotEmpty(t, stopped.LauncherState, "the start job did not finish before the stop")
	requireProcessGone(t, stopped.LauncherState)
}

func TestStopFailureReportedAsOrphan(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	faults := &launcherFaults{}
	faults.failStops.Store(true)
	h := startHost(t, hostOptions{faults: faults, configure: func(c *ondemand.Config) {
		c.StopRetries = 2
		c.MeterProvider = provider
	}})
	ctx := waitCtx(t)
	job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines, Payload: []byte("x")})
	require.NoError(t, err)

	task := h.waitTask(t, job)
	require.Equal(t, ondemand.TaskStopFailed, task.State)
	require.Equal(t, int32(3), faults.stopCalls.Load(), "StopTask was not retried twice")

	stop, err := h.mgr.Get(ctx, task.StopJobID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateError, stop.State)
	require.Contains(t, stop.Error.Message, "after 3 attempts")
	require.Contains(t, stop.Error.Message, "refused to delete")

	var stopFailed []ondemand.Event
	for _, ev := range h.events(t, job.ID) {
		if ev.Type == ondemand.EventTaskStopFailed {
			stopFailed = append(stopFailed, ev)
		}
	}
	require.Len(t, stopFailed, 1)
	require.Contains(t, stopFailed[0].Message, "may be left behind")
	require.Equal(t, int64(1), counterValue(t, reader, "odrkit.tasks.orphans_left"))

	// Remove the runner the failing launcher left behind.
	l, err := exec.New(exec.Plugin().NewConfig().(*exec.Config), tasklauncherOptions())
	require.NoError(t, err)
	defer l.Close()
	require.NoError(t, l.StopTask(ctx, task.LauncherState))
}

// counterValue returns the sum of an Int64 counter's data points.
func counterValue(t *testing.T, reader *sdkmetric.ManualReader, name string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(t.Context(), &rm))
	var total int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			require.True(t, ok, "metric %s is not an int64 sum", name)
			for _, dp := range sum.DataPoints {
				total += dp.Value
			}
		}
	}
	return total
}

func TestTransientStartFailureRetried(t *testing.T) {
	tests := []struct {
		name       string
		retries    int
		wantState  ondemand.State
		wantReason ondemand.Reason
	}{
		{"enough retries", 3, ondemand.StateSuccess, ""},
		{"too few retries", 1, ondemand.StateError, ondemand.ReasonLaunchFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			faults := &launcherFaults{}
			faults.transientStarts.Store(2)
			h := startHost(t, hostOptions{faults: faults, launchRetries: tt.retries})
			job, err := h.mgr.Submit(waitCtx(t), ondemand.JobSpec{Kind: kindLines, Payload: []byte("x")})
			require.NoError(t, err)

			done, err := h.mgr.Wait(waitCtx(t), job.ID)
			require.NoError(t, err)
			require.Equal(t, tt.wantState, done.State)
			if tt.wantReason != "" {
				require.Equal(t, tt.wantReason, done.Error.Reason)
				require.Contains(t, done.Error.Message, "timed out (injected)")
			}
			task := h.waitTask(t, job)
			require.Equal(t, ondemand.TaskStopped, task.State)

			var retryLines int
			for _, ev := range h.events(t, task.StartJobID) {
				if ev.Type == ondemand.EventOutput && strings.Contains(ev.Line, "transient error, retry") {
					retryLines++
				}
			}
			require.Equal(t, min(2, tt.retries), retryLines)
		})
	}
}

func TestMaxDurationEndsJob(t *testing.T) {
	h := startHost(t, hostOptions{})
	job, err := h.mgr.Submit(waitCtx(t), ondemand.JobSpec{Kind: kindBlock, MaxDuration: 300 * time.Millisecond})
	require.NoError(t, err)
	h.waitFailed(t, job.ID, ondemand.ReasonDeadlineExceeded)
	h.requireStopped(t, job)
}

func TestFailedDependencyFailsOnDemandJob(t *testing.T) {
	h := startHost(t, hostOptions{})
	ctx := waitCtx(t)
	first, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines, Target: &ondemand.Target{RunnerID: "nobody"}})
	require.NoError(t, err)
	job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines, DependsOn: []ondemand.Dependency{{JobID: first.ID}}})
	require.NoError(t, err)
	require.NoError(t, h.mgr.Cancel(ctx, first.ID))

	done := h.waitFailed(t, job.ID, ondemand.ReasonDependencyFailed)
	require.Contains(t, done.Error.Message, first.ID)
	task := h.waitTask(t, job)
	require.Equal(t, ondemand.TaskStopped, task.State)
	require.True(t, task.StartedAt.IsZero(), "a runner was launched for a job whose dependency failed")
}

func TestMaxConcurrentHoldsLaunches(t *testing.T) {
	h := startHost(t, hostOptions{maxConcurrent: 1})
	ctx := waitCtx(t)
	first, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindBlock})
	require.NoError(t, err)
	second, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindBlock})
	require.NoError(t, err)
	h.waitState(t, first.ID, ondemand.StateRunning)

	time.Sleep(200 * time.Millisecond)
	waiting, err := h.mgr.Task(ctx, second.TaskID)
	require.NoError(t, err)
	require.True(t, waiting.StartupDeadline.IsZero(), "the second runner launched while the first ran")

	require.NoError(t, h.mgr.Cancel(ctx, first.ID))
	h.waitTask(t, first)
	h.waitState(t, second.ID, ondemand.StateRunning)
	require.NoError(t, h.mgr.Cancel(ctx, second.ID))
	require.Equal(t, ondemand.TaskStopped, h.waitTask(t, second).State)
}

func TestRestartKeepsStoredStartupDeadline(t *testing.T) {
	store := ondemand.NewMemoryStore()
	useStore := func(c *ondemand.Config) { c.Store = store }
	first := startHost(t, hostOptions{mode: modeNeverConnect, startupTimeout: 2 * time.Second, configure: useStore})
	job, err := first.mgr.Submit(waitCtx(t), ondemand.JobSpec{Kind: kindLines})
	require.NoError(t, err)
	started := first.waitTaskStarted(t, job)
	first.stop()

	// A new Manager on the same store and host ID, as after a restart.
	time.Sleep(500 * time.Millisecond)
	second := startHost(t, hostOptions{mode: modeNeverConnect, startupTimeout: 2 * time.Second, addr: first.addr, configure: useStore})
	done, err := second.mgr.Wait(waitCtx(t), job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.ReasonStartupTimeout, done.Error.Reason)
	require.WithinDuration(t, started.StartupDeadline, done.DoneAt, 500*time.Millisecond, "the deadline restarted with the host")

	task := second.waitTask(t, job)
	require.Equal(t, ondemand.TaskStopped, task.State)
	requireProcessGone(t, task.LauncherState)
}

func TestReconcileStopsOrphanedTasks(t *testing.T) {
	hostID := func(c *ondemand.Config) { c.HostID = "reconcile-host" }
	crashed := startHost(t, hostOptions{mode: modeNeverConnect, configure: hostID})
	job, err := crashed.mgr.Submit(waitCtx(t), ondemand.JobSpec{Kind: kindLines})
	require.NoError(t, err)
	task := crashed.waitTaskStarted(t, job)
	crashed.stop()
	pid := runnerPID(t, task.LauncherState)
	require.True(t, processAlive(pid), "the runner did not outlive its Manager")

	// A Manager with the same host ID but none of the old records finds
	// the runner at start and stops it.
	fresh := startHost(t, hostOptions{configure: hostID})
	require.Eventually(t, func() bool {
		return !processAlive(pid)
	}, 30*time.Second, 10*time.Millisecond, "the orphaned runner %d was not stopped", pid)
	require.Equal(t, 0, fresh.mgr.Reconcile(t.Context()), "a second reconcile found more orphans")
}

func TestRevokedStaticTokenGetsNothing(t *testing.T) {
	h := startHost(t, hostOptions{})
	ctx := waitCtx(t)
	job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines, Target: &ondemand.Target{RunnerID: "static-1"}})
	require.NoError(t, err)
	token, err := h.mgr.IssueRunnerToken("static-1", nil, time.Hour)
	require.NoError(t, err)
	require.NoError(t, h.mgr.RevokeRunnerTokens(ctx, "static-1"))

	stream := openStream(t, ctx, h.addr, token, "static-1")
	_, err = stream.Recv()
	require.Equal(t, codes.Unauthenticated, status.Code(err))
	require.Contains(t, err.Error(), "revoked")
	require.NotContains(t, err.Error(), token)
	got, err := h.mgr.Get(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateQueued, got.State)
	require.Zero(t, got.Attempt, "the job was assigned to a revoked token")
}

// TestTokenMintedAtLaunch delays the start job with a dependency for longer
// than the runner token lives: the token is minted when the start job is
// sent, so the runner still connects.
func TestTokenMintedAtLaunch(t *testing.T) {
	// Token lifetime: startup timeout (1s) plus the job's max duration (1s).
	h := startHost(t, hostOptions{startupTimeout: time.Second})
	ctx := waitCtx(t)
	blocker, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines, Target: &ondemand.Target{RunnerID: "gate"}})
	require.NoError(t, err)
	job, err := h.mgr.Submit(ctx, ondemand.JobSpec{
		Kind:        kindLines,
		Payload:     []byte("ran"),
		MaxDuration: time.Second,
		DependsOn:   []ondemand.Dependency{{JobID: blocker.ID}},
	})
	require.NoError(t, err)

	time.Sleep(3 * time.Second)
	gate, err := h.mgr.NextAssignment(ctx, ondemand.RunnerSession{RunnerID: "gate"})
	require.NoError(t, err)
	require.NoError(t, gate.Ack(ctx))
	require.NoError(t, gate.Complete(ctx, nil, nil))

	done, err := h.mgr.Wait(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateSuccess, done.State, "error: %+v", done.Error)
	require.Equal(t, ondemand.TaskStopped, h.waitTask(t, job).State)
}

func TestLauncherWithoutWatchGetsNoWatchJob(t *testing.T) {
	plugin := inProcessPlugin()
	h := startHost(t, hostOptions{plugin: &plugin})
	ctx := waitCtx(t)
	job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines, Payload: []byte("no watch")})
	require.NoError(t, err)
	done, err := h.mgr.Wait(ctx, job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateSuccess, done.State)

	task := h.waitTask(t, job)
	require.Equal(t, ondemand.TaskStopped, task.State)
	require.Empty(t, task.WatchJobID)
	for _, j := range h.mgr.ListJobs(ctx, ondemand.RoleWatch) {
		require.NotEqual(t, task.ID, j.TaskID, "a watch job was queued for a launcher that cannot watch")
	}
}
