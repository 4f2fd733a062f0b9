package runnerapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/odrkit/odrkit/internal/benchutil"
	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/ondemand/boltstore"
	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/runnerapi"
	"github.com/odrkit/odrkit/runnerapi/runner"
	"github.com/odrkit/odrkit/runnerapi/runnerpb"
	"github.com/odrkit/odrkit/tasklauncher"
)

// benchHost starts a Manager on a bbolt store with fsync on, unless cfg
// names another store, and serves the runner API on loopback.
func benchHost(b *testing.B, cfg ondemand.Config) (*ondemand.Manager, string) {
	b.Helper()
	store, err := boltstore.Open(filepath.Join(b.TempDir(), "bench.db"), boltstore.Options{})
	require.NoError(b, err)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	if cfg.Store == nil {
		cfg.Store = store
	}
	cfg.AdvertiseAddr = lis.Addr().String()
	mgr, err := ondemand.New(context.Background(), cfg)
	require.NoError(b, err)
	srv := grpc.NewServer(runnerapi.ServerOptions()...)
	runnerapi.NewServer(mgr, runnerapi.Config{}).Register(srv)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	b.Cleanup(func() {
		srv.Stop()
		<-served
		require.NoError(b, mgr.Close())
		require.NoError(b, store.Close())
	})
	return mgr, lis.Addr().String()
}

// BenchmarkDispatch measures, with 10,000 jobs in the holding set, the time
// from a runner opening its job stream to its job arriving, over gRPC on
// loopback. Each iteration is one runner taking the job held for it.
func BenchmarkDispatch(b *testing.B) {
	const held = 10_000
	mgr, addr := benchHost(b, ondemand.Config{AckTimeout: time.Minute})
	ctx := context.Background()
	total := held + b.N
	tokens := make([]string, total)
	runInParallel(total, func(i int) {
		id := fmt.Sprintf("runner-%d", i)
		if _, err := mgr.Submit(ctx, ondemand.JobSpec{ID: "job-" + id, Kind: "bench", Target: &ondemand.Target{RunnerID: id}}); err != nil {
			panic(err)
		}
		token, err := mgr.IssueRunnerToken(id, nil, time.Hour)
		if err != nil {
			panic(err)
		}
		tokens[i] = token
	})
	require.Equal(b, total, mgr.HeldJobs())

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(b, err)
	defer conn.Close()
	client := runnerpb.NewRunnerServiceClient(conn)

	latencies := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("runner-%d", i)
		streamCtx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tokens[i]))
		start := time.Now()
		stream, err := client.JobStream(streamCtx)
		require.NoError(b, err)
		require.NoError(b, stream.Send(&runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Open_{Open: &runnerpb.JobStreamRequest_Open{RunnerId: id}}}))
		msg, err := stream.Recv()
		latencies = append(latencies, time.Since(start))
		require.NoError(b, err)
		require.Equal(b, "job-"+id, msg.GetAssignment().GetJob().GetId())
		cancel()
	}
	b.StopTimer()
	slices.Sort(latencies)
	b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(latencies[len(latencies)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkOnDemandEndToEnd measures on-demand jobs per second through the
// whole chain: submit, start job, runner connects over gRPC, job, stop
// job. The launcher runs each runner as a goroutine of this process, so the
// figure is odrkit's own cost without a platform. The store=memory case
// shows what the durable store costs.
func BenchmarkOnDemandEndToEnd(b *testing.B) {
	for _, store := range []string{"bbolt", "memory"} {
		b.Run("store="+store, func(b *testing.B) {
			registry := tasklauncher.NewRegistry(inProcessPlugin())
			profiles, err := profile.NewSet(&profile.Profile{Name: "in-process", Plugin: "in-process", Default: true, Config: &struct{}{}})
			require.NoError(b, err)
			cfg := ondemand.Config{Launchers: registry, Profiles: profiles, LaunchConcurrency: 256}
			if store == "memory" {
				cfg.Store = ondemand.NewMemoryStore()
			}
			mgr, _ := benchHost(b, cfg)
			ctx := context.Background()

			b.ResetTimer()
			start := time.Now()
			runInParallel(b.N, func(i int) {
				job, err := mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines, Payload: []byte("hello")})
				if err != nil {
					panic(err)
				}
				done, err := mgr.Wait(ctx, job.ID)
				if err != nil || done.State != ondemand.StateSuccess {
					panic(fmt.Sprintf("job %s: %v %+v", job.ID, err, done.Error))
				}
				if _, err := mgr.WaitTask(ctx, job.TaskID); err != nil {
					panic(err)
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
		})
	}
}

// benchWorkers is the number of goroutines runInParallel uses.
const benchWorkers = 64

// runInParallel calls fn(i) for i in [0, n) from benchWorkers goroutines.
func runInParallel(n int, fn func(i int)) {
	benchutil.RunInParallel(n, benchWorkers, fn)
}

// inProcessLauncher is a benchmark launcher that runs each runner as a
// goroutine of the host process, talking to the host over loopback gRPC
// like any runner. It measures odrkit without a platform's start-up cost.
type inProcessLauncher struct {
	mu      sync.Mutex
	runners map[string]context.CancelFunc
	wg      sync.WaitGroup
}

func inProcessPlugin() tasklauncher.Plugin {
	return tasklauncher.Plugin{
		Name:      "in-process",
		NewConfig: func() any { return &struct{}{} },
		New: func(any, tasklauncher.Options) (tasklauncher.Launcher, error) {
			return &inProcessLauncher{runners: make(map[string]context.CancelFunc)}, nil
		},
	}
}

func (l *inProcessLauncher) StartTask(ctx context.Context, info *tasklauncher.LaunchInfo) ([]byte, error) {
	r, err := runner.New(runner.Config{
		ServerAddr: info.Env[runner.EnvServerAddr],
		RunnerID:   info.Env[runner.EnvRunnerID],
		Token:      info.Env[runner.EnvRunnerToken],
		OnDemand:   true,
		Logger:     slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, err
	}
	registerTestHandlers(r)
	runCtx, cancel := context.WithCancel(context.Background())
	l.mu.Lock()
	l.runners[info.TaskID] = cancel
	l.mu.Unlock()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		_ = r.Run(runCtx)
	}()
	return json.Marshal(info.TaskID)
}

func (l *inProcessLauncher) StopTask(ctx context.Context, state []byte) error {
	var taskID string
	if err := json.Unmarshal(state, &taskID); err != nil {
		return errors.New("invalid in-process launcher state")
	}
	l.mu.Lock()
	cancel := l.runners[taskID]
	delete(l.runners, taskID)
	l.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	return nil
}

func (l *inProcessLauncher) Close() error {
	l.mu.Lock()
	for _, cancel := range l.runners {
		cancel()
	}
	l.mu.Unlock()
	l.wg.Wait()
	return nil
}
