// Package benchutil holds what the benchmarks of several packages share.
package benchutil

import (
	"sync"
	"sync/atomic"
)

// RunInParallel calls fn(i) for i in [0, n) from the given number of
// goroutines and returns when all calls have returned. Each goroutine takes
// the next index from a shared counter, so the calls in flight at any
// moment are neighbours in index order, as when runners arrive in the order
// they were launched.
func RunInParallel(n, workers int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				fn(i)
			}
		}()
	}
	wg.Wait()
}
