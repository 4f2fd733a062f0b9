package boltstore

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/odrkit/odrkit/ondemand"
)

// BenchmarkUpdateParallel runs Updates from many goroutines with fsync on;
// each Update puts one job and appends its first event. It reports
// Updates per second and Updates per commit, which shows how much group
// commit saves against one commit per Update.
func BenchmarkUpdateParallel(b *testing.B) {
	cases := []struct {
		name string
		opts Options
	}{
		{"group commit", Options{}},
		{"MaxBatchSize=1", Options{MaxBatchSize: 1}},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			s := openTemp(b, bc.opts)
			b.Cleanup(func() {
				if err := s.Close(); err != nil {
					b.Error(err)
				}
			})
			var next atomic.Int64
			// 16 goroutines per CPU, as a server with many runner streams has.
			b.SetParallelism(16)
			b.ResetTimer()
			commitsBefore := s.commits.Load()

			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := putJobWithEvent(s, fmt.Sprintf("job-%d", next.Add(1))); err != nil {
						b.Error(err)
						return
					}
				}
			})

			b.StopTimer()
			reportRates(b, s.commits.Load()-commitsBefore)
		})
	}
}

// BenchmarkUpdateSerial runs Updates one after another, as a Manager that
// holds its lock across Update does.
func BenchmarkUpdateSerial(b *testing.B) {
	s := openTemp(b, Options{})
	b.Cleanup(func() {
		if err := s.Close(); err != nil {
			b.Error(err)
		}
	})
	commitsBefore := s.commits.Load()
	i := 0
	for b.Loop() {
		i++
		if err := putJobWithEvent(s, fmt.Sprintf("job-%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	reportRates(b, s.commits.Load()-commitsBefore)
}

func putJobWithEvent(s *Store, id string) error {
	return s.Update(context.Background(), func(tx ondemand.Tx) error {
		if err := tx.PutJob(&ondemand.Job{ID: id, Kind: "bench", State: ondemand.StateQueued}); err != nil {
			return err
		}
		return tx.AppendEvent(ondemand.Event{Seq: 1, JobID: id, Type: ondemand.EventQueued, State: ondemand.StateQueued})
	})
}

func reportRates(b *testing.B, commits int64) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	if commits > 0 {
		b.ReportMetric(float64(b.N)/float64(commits), "updates/commit")
	}
}
