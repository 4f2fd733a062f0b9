package ondemand_test

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/odrkit/odrkit/internal/benchutil"
	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/ondemand/boltstore"
)

// benchWorkers is the number of runners that take jobs at once, and of
// goroutines that submit them.
const benchWorkers = 64

// BenchmarkDurableQueue creates N jobs on a bbolt store with fsync on, then
// lets benchWorkers runners assign, acknowledge and complete them until
// the queue is empty. Run it with -benchtime=1x: each iteration is one
// whole create-and-drain pass.
func BenchmarkDurableQueue(b *testing.B) {
	for _, n := range []int{100, 1_000, 10_000, 100_000} {
		for _, target := range []string{"any", "runner-id"} {
			b.Run(fmt.Sprintf("jobs=%d/target=%s", n, target), func(b *testing.B) {
				for range b.N {
					benchmarkQueuePass(b, n, target == "runner-id")
				}
			})
		}
	}
}

func benchmarkQueuePass(b *testing.B, n int, byRunnerID bool) {
	b.StopTimer()
	store, err := boltstore.Open(filepath.Join(b.TempDir(), "bench.db"), boltstore.Options{})
	require.NoError(b, err)
	defer store.Close()
	mgr, err := ondemand.New(context.Background(), ondemand.Config{Store: store, AckTimeout: time.Minute, HeartbeatTimeout: time.Hour})
	require.NoError(b, err)
	defer mgr.Close()
	ctx := context.Background()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	b.StartTimer()

	// Create: benchWorkers goroutines submit n jobs between them.
	start := time.Now()
	runInParallel(n, func(i int) {
		target := &ondemand.Target{}
		if byRunnerID {
			target.RunnerID = fmt.Sprintf("runner-%d", i)
		}
		_, err := mgr.Submit(ctx, ondemand.JobSpec{ID: fmt.Sprintf("job-%d", i), Kind: "bench", Payload: []byte("payload"), Target: target})
		if err != nil {
			panic(err)
		}
	})
	created := time.Since(start)

	b.StopTimer()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	b.StartTimer()

	// Cycle: each job is assigned, acknowledged and completed.
	latencies := make([]time.Duration, n)
	start = time.Now()
	runInParallel(n, func(i int) {
		session := ondemand.RunnerSession{RunnerID: fmt.Sprintf("runner-%d", i)}
		t0 := time.Now()
		a, err := mgr.NextAssignment(ctx, session)
		if err != nil {
			panic(err)
		}
		if err := a.Ack(ctx); err != nil {
			panic(err)
		}
		if err := a.Complete(ctx, nil, nil); err != nil {
			panic(err)
		}
		latencies[i] = time.Since(t0)
	})
	cycled := time.Since(start)
	b.StopTimer()

	slices.Sort(latencies)
	b.ReportMetric(float64(n)/created.Seconds(), "create-jobs/s")
	b.ReportMetric(float64(n)/cycled.Seconds(), "cycles/s")
	b.ReportMetric(float64(latencies[n/2].Microseconds()), "p50-cycle-µs")
	b.ReportMetric(float64(latencies[n*99/100].Microseconds()), "p99-cycle-µs")
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(n), "heap-B/queued-job")
	require.Zero(b, mgr.HeldJobs())
}

// runInParallel calls fn(i) for i in [0, n) from benchWorkers goroutines.
func runInParallel(n int, fn func(i int)) {
	benchutil.RunInParallel(n, benchWorkers, fn)
}
