package boltstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.uber.org/goleak"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/ondemand/storetest"
)

// The test binary re-runs itself as a helper process when one of these
// variables is set, to hold a file lock or to write until it is killed.
const (
	envHoldLock  = "BOLTSTORE_TEST_HOLD_LOCK"
	envWriteLoop = "BOLTSTORE_TEST_WRITE_LOOP"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(envHoldLock); path != "" {
		os.Exit(holdLock(path))
	}
	if path := os.Getenv(envWriteLoop); path != "" {
		os.Exit(writeLoop(path))
	}
	goleak.VerifyTestMain(m)
}

// holdLock opens the store, prints "locked" and keeps it open until stdin
// is closed.
func holdLock(path string) int {
	s, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("locked")
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// writeLoop stores jobs one Update at a time and prints each job's number
// once its Update has returned nil, until the process is killed.
func writeLoop(path string) int {
	s, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for i := 1; ; i++ {
		id := fmt.Sprintf("job-%d", i)
		err := s.Update(context.Background(), func(tx ondemand.Tx) error {
			if err := tx.PutJob(&ondemand.Job{ID: id, Kind: "crash"}); err != nil {
				return err
			}
			return tx.AppendEvent(ondemand.Event{Seq: 1, JobID: id, Type: ondemand.EventQueued})
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(i)
	}
}

func openTemp(t testing.TB, opts Options) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "odrkit.db"), opts)
	require.NoError(t, err)
	return s
}

func TestStoreConformance(t *testing.T) {
	cases := []struct {
		name string
		opts Options
	}{
		{"defaults", Options{}},
		{"one update per commit", Options{MaxBatchSize: 1}},
		{"batch delay", Options{MaxBatchDelay: 2 * time.Millisecond, MaxBatchSize: 8}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			storetest.RunStoreTests(t, func(t *testing.T) ondemand.Store {
				return openTemp(t, tc.opts)
			})
		})
	}
}

func TestReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "odrkit.db")
	exitCode := 3
	job := &ondemand.Job{
		ID:      "job-1",
		Kind:    "build",
		Payload: []byte("payload"),
		State:   ondemand.StateError,
		Error:   &ondemand.JobError{Reason: ondemand.ReasonJobFailed, Message: "failed", ExitCode: &exitCode},
		// Whole seconds in UTC compare equal after JSON without normalising.
		QueuedAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
	}
	task := &ondemand.Task{ID: "task-1", JobID: "job-1", State: ondemand.TaskStarted, LauncherState: []byte("state")}

	s, err := Open(path, Options{})
	require.NoError(t, err)
	err = s.Update(t.Context(), func(tx ondemand.Tx) error {
		if err := tx.PutJob(job); err != nil {
			return err
		}
		if err := tx.PutTask(task); err != nil {
			return err
		}
		for seq := int64(1); seq <= 3; seq++ {
			if err := tx.AppendEvent(ondemand.Event{Seq: seq, JobID: "job-1", Type: ondemand.EventOutput, Line: strconv.Itoa(int(seq))}); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
	require.NoError(t, s.Close())

	s, err = Open(path, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })

	var gotJob *ondemand.Job
	var gotTask *ondemand.Task
	var lines []string
	err = s.View(t.Context(), func(tx ondemand.ReadTx) error {
		var err error
		if gotJob, err = tx.Job("job-1"); err != nil {
			return err
		}
		if gotTask, err = tx.Task("task-1"); err != nil {
			return err
		}
		return tx.Events("job-1", 0, func(e ondemand.Event) bool {
			lines = append(lines, e.Line)
			return true
		})
	})
	require.NoError(t, err)
	require.Equal(t, job, gotJob)
	require.Equal(t, task, gotTask)
	require.Equal(t, []string{"1", "2", "3"}, lines)

	// The last sequence survived too: 4 follows, 5 would leave a gap.
	err = s.Update(t.Context(), func(tx ondemand.Tx) error {
		return tx.AppendEvent(ondemand.Event{Seq: 5, JobID: "job-1"})
	})
	require.ErrorContains(t, err, "sequence 5 does not follow the last stored sequence 3")
	err = s.Update(t.Context(), func(tx ondemand.Tx) error {
		return tx.AppendEvent(ondemand.Event{Seq: 4, JobID: "job-1"})
	})
	require.NoError(t, err)
}

// TestKilledProcessKeepsAcknowledgedUpdates kills a writing process with
// SIGKILL and checks that every Update it saw return nil is in the file.
// The page cache survives a killed process, so this checks commit
// ordering and crash consistency, not fsync.
func TestKilledProcessKeepsAcknowledgedUpdates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "odrkit.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envWriteLoop+"="+path)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())

	lines := bufio.NewScanner(stdout)
	acknowledged := 0
	for acknowledged < 20 && lines.Scan() {
		n, err := strconv.Atoi(lines.Text())
		require.NoError(t, err, "helper output %q", lines.Text())
		acknowledged = n
	}
	require.Equal(t, 20, acknowledged, "helper stopped early; see its stderr above")
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	// Read what the helper printed before it died: those Updates returned
	// nil too.
	for lines.Scan() {
		if n, err := strconv.Atoi(lines.Text()); err == nil {
			acknowledged = n
		}
	}
	err = cmd.Wait()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr, "helper must die from SIGKILL")

	s, err := Open(path, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	for i := 1; i <= acknowledged; i++ {
		id := fmt.Sprintf("job-%d", i)
		var seqs []int64
		err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
			if _, err := tx.Job(id); err != nil {
				return err
			}
			return tx.Events(id, 0, func(e ondemand.Event) bool {
				seqs = append(seqs, e.Seq)
				return true
			})
		})
		require.NoError(t, err, "acknowledged %s", id)
		require.Equal(t, []int64{1}, seqs, "events of acknowledged %s", id)
	}
}

func TestOpenLockedFile(t *testing.T) {
	cases := []struct {
		name string
		lock func(t *testing.T, path string) (unlock func())
	}{
		{"same process", func(t *testing.T, path string) func() {
			s, err := Open(path, Options{})
			require.NoError(t, err)
			return func() { require.NoError(t, s.Close()) }
		}},
		{"other process", lockInOtherProcess},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "odrkit.db")
			unlock := tc.lock(t, path)

			began := time.Now()
			s, err := Open(path, Options{})
			waited := time.Since(began)
			require.Nil(t, s)
			require.ErrorIs(t, err, bolterrors.ErrTimeout)
			require.ErrorContains(t, err, path)
			require.ErrorContains(t, err, "waiting for the file lock, which another process holds")
			// Open gives up after lockTimeout; the bound only shows it does
			// not hang.
			require.Less(t, waited, lockTimeout+5*time.Second)

			unlock()
			s, err = Open(path, Options{})
			require.NoError(t, err, "open after the lock is released")
			require.NoError(t, s.Close())
		})
	}
}

// lockInOtherProcess starts a helper process that opens path and keeps
// it open until the returned function closes the helper's stdin.
func lockInOtherProcess(t *testing.T, path string) func() {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envHoldLock+"="+path)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())

	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		require.NoError(t, err, "helper did not report the lock; see its stderr above")
	}
	require.Equal(t, "locked\n", line)
	return func() {
		require.NoError(t, stdin.Close())
		require.NoError(t, cmd.Wait(), "helper exit")
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	require.NoError(t, os.WriteFile(garbage, []byte(strings.Repeat("not a bolt file ", 1024)), 0o600))

	newer := filepath.Join(dir, "newer.db")
	db, err := bolt.Open(newer, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(btx *bolt.Tx) error {
		b, err := btx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		return b.Put(keyFormatVersion, encodeSeq(formatVersion+1))
	}))
	require.NoError(t, db.Close())

	cases := []struct {
		name string
		path string
		opts Options
		want []string
	}{
		{"missing directory", filepath.Join(dir, "no-such-dir", "odrkit.db"), Options{},
			[]string{"no-such-dir", "the directory does not exist: create it first"}},
		{"not a bolt file", garbage, Options{},
			[]string{garbage, "not a bolt database or is damaged"}},
		{"newer format", newer, Options{},
			[]string{newer, fmt.Sprintf("format version %d", formatVersion+1), fmt.Sprintf("reads version %d", formatVersion)}},
		{"negative batch size", filepath.Join(dir, "a.db"), Options{MaxBatchSize: -1},
			[]string{"invalid MaxBatchSize -1", "positive number"}},
		{"negative batch delay", filepath.Join(dir, "a.db"), Options{MaxBatchDelay: -time.Second},
			[]string{"invalid MaxBatchDelay -1s", "positive duration"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(tc.path, tc.opts)
			require.Nil(t, s)
			require.Error(t, err)
			for _, want := range tc.want {
				require.ErrorContains(t, err, want)
			}
		})
	}
}

func TestOpenCreatesPrivateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "odrkit.db")
	s, err := Open(path, Options{})
	require.NoError(t, err)
	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	require.NoError(t, s.Close())
}

func TestUpdateAfterCloseReturnsErrClosed(t *testing.T) {
	s := openTemp(t, Options{})
	require.NoError(t, s.Close())

	err := s.Update(t.Context(), func(ondemand.Tx) error { return nil })
	require.ErrorIs(t, err, ErrClosed)
	err = s.View(t.Context(), func(ondemand.ReadTx) error { return nil })
	require.ErrorIs(t, err, ErrClosed)
}

// plug blocks the committer with an Update whose fn waits, so that the
// Updates started meanwhile queue up and are committed together. The
// returned function unplugs and waits for the plugging Update.
func plug(t *testing.T, s *Store) (unplug func()) {
	t.Helper()
	running := make(chan struct{})
	release := make(chan struct{})
	var wg sync.WaitGroup
	var err error
	wg.Go(func() {
		err = s.Update(context.Background(), func(ondemand.Tx) error {
			close(running) // the plugging fn runs alone, so it runs once
			<-release
			return nil
		})
	})
	<-running
	return func() {
		close(release)
		wg.Wait()
		require.NoError(t, err, "plugging update")
	}
}

// waitQueued waits until n Updates wait for the committer.
func waitQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.queue) == n
	}, 10*time.Second, time.Millisecond, "%d updates queued", n)
}

func TestGroupCommitSharesCommits(t *testing.T) {
	const updates = 10
	cases := []struct {
		name        string
		maxBatch    int
		wantCommits int64
	}{
		{"default batch size", 0, 1},
		{"batch size 4", 4, 3},
		{"batch size 1", 1, updates},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := openTemp(t, Options{MaxBatchSize: tc.maxBatch})
			t.Cleanup(func() { require.NoError(t, s.Close()) })

			unplug := plug(t, s)
			var wg sync.WaitGroup
			errs := make([]error, updates)
			for i := range updates {
				wg.Go(func() {
					id := fmt.Sprintf("job-%d", i)
					errs[i] = s.Update(context.Background(), func(tx ondemand.Tx) error {
						return tx.PutJob(&ondemand.Job{ID: id})
					})
				})
			}
			waitQueued(t, s, updates)
			before := s.commits.Load()
			unplug()
			wg.Wait()

			for i, err := range errs {
				require.NoError(t, err, "update %d", i)
			}
			require.Equal(t, tc.wantCommits, s.commits.Load()-before-1, "commits after the plugging one")
			for i := range updates {
				err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
					_, err := tx.Job(fmt.Sprintf("job-%d", i))
					return err
				})
				require.NoError(t, err, "job-%d stored", i)
			}
		})
	}
}

func TestGroupCommitIsolatesFailure(t *testing.T) {
	const updates, failing = 10, 4
	s := openTemp(t, Options{})
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	errFn := errors.New("fn failed on purpose")

	unplug := plug(t, s)
	var wg sync.WaitGroup
	errs := make([]error, updates)
	runs := make([]int, updates) // written by the committer, read after wg.Wait
	for i := range updates {
		wg.Go(func() {
			id := fmt.Sprintf("job-%d", i)
			errs[i] = s.Update(context.Background(), func(tx ondemand.Tx) error {
				runs[i]++
				if err := tx.PutJob(&ondemand.Job{ID: id}); err != nil {
					return err
				}
				if i == failing {
					return errFn
				}
				return nil
			})
		})
	}
	waitQueued(t, s, updates)
	before := s.commits.Load()
	unplug()
	wg.Wait()

	require.Equal(t, int64(1), s.commits.Load()-before-1, "the others still share one commit")
	for i := range updates {
		id := fmt.Sprintf("job-%d", i)
		err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
			_, err := tx.Job(id)
			return err
		})
		if i == failing {
			require.ErrorIs(t, errs[i], errFn, "the failing update gets its own error")
			require.Equal(t, 1, runs[i], "the failing fn runs once")
			require.ErrorIs(t, err, ondemand.ErrNotFound, "%s not stored", id)
			continue
		}
		require.NoError(t, errs[i], "update of %s", id)
		require.NoError(t, err, "%s stored", id)
		// fns queued before the failing one ran again after the rollback.
		require.Contains(t, []int{1, 2}, runs[i], "runs of the fn of %s", id)
	}
}

func TestGroupCommitPanicSurfacesInCaller(t *testing.T) {
	s := openTemp(t, Options{})
	t.Cleanup(func() { require.NoError(t, s.Close()) })

	unplug := plug(t, s)
	var wg sync.WaitGroup
	var recovered any
	wg.Go(func() {
		defer func() { recovered = recover() }()
		_ = s.Update(context.Background(), func(tx ondemand.Tx) error {
			if err := tx.PutJob(&ondemand.Job{ID: "job-panic"}); err != nil {
				return err
			}
			panic("fn panicked on purpose")
		})
	})
	var otherErr error
	wg.Go(func() {
		otherErr = s.Update(context.Background(), func(tx ondemand.Tx) error {
			return tx.PutJob(&ondemand.Job{ID: "job-other"})
		})
	})
	waitQueued(t, s, 2)
	unplug()
	wg.Wait()

	require.Equal(t, "fn panicked on purpose", recovered)
	require.NoError(t, otherErr)
	err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
		if _, err := tx.Job("job-panic"); !errors.Is(err, ondemand.ErrNotFound) {
			return fmt.Errorf("job-panic: want not found, got %v", err)
		}
		_, err := tx.Job("job-other")
		return err
	})
	require.NoError(t, err)
}

func TestQueuedUpdateWithCancelledContext(t *testing.T) {
	s := openTemp(t, Options{})
	t.Cleanup(func() { require.NoError(t, s.Close()) })

	unplug := plug(t, s)
	ctx, cancel := context.WithCancel(t.Context())
	called := false
	var wg sync.WaitGroup
	var err error
	wg.Go(func() {
		err = s.Update(ctx, func(tx ondemand.Tx) error {
			called = true
			return tx.PutJob(&ondemand.Job{ID: "job-cancelled"})
		})
	})
	waitQueued(t, s, 1)
	cancel()
	unplug()
	wg.Wait()

	require.ErrorIs(t, err, context.Canceled)
	require.False(t, called, "fn of a request cancelled while queued")
}

func TestCloseWaitsForQueuedUpdates(t *testing.T) {
	s := openTemp(t, Options{})
	unplug := plug(t, s)
	var wg sync.WaitGroup
	var err error
	wg.Go(func() {
		err = s.Update(context.Background(), func(tx ondemand.Tx) error {
			return tx.PutJob(&ondemand.Job{ID: "job-queued"})
		})
	})
	waitQueued(t, s, 1)

	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		require.Fail(t, "Close returned while an Update was queued", "Close returned %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	unplug()
	wg.Wait()
	require.NoError(t, <-closed)
	require.NoError(t, err, "the queued Update commits before Close")
}

func TestPutRejectsBadIDs(t *testing.T) {
	s := openTemp(t, Options{})
	t.Cleanup(func() { require.NoError(t, s.Close()) })

	cases := []struct {
		name string
		put  func(tx ondemand.Tx) error
		want string
	}{
		{"empty job ID", func(tx ondemand.Tx) error { return tx.PutJob(&ondemand.Job{}) }, "Job.ID is empty"},
		{"nil job", func(tx ondemand.Tx) error { return tx.PutJob(nil) }, "the job is nil"},
		{"job ID not UTF-8", func(tx ondemand.Tx) error { return tx.PutJob(&ondemand.Job{ID: "job-\xff"}) },
			`Job.ID "job-\xff" is not valid UTF-8`},
		{"empty task ID", func(tx ondemand.Tx) error { return tx.PutTask(&ondemand.Task{}) }, "Task.ID is empty"},
		{"nil task", func(tx ondemand.Tx) error { return tx.PutTask(nil) }, "the task is nil"},
		{"task ID not UTF-8", func(tx ondemand.Tx) error { return tx.PutTask(&ondemand.Task{ID: "task-\xff"}) },
			`Task.ID "task-\xff" is not valid UTF-8`},
		{"empty event job ID", func(tx ondemand.Tx) error { return tx.AppendEvent(ondemand.Event{Seq: 1}) },
			"Event.JobID is empty"},
		{"event job ID not UTF-8", func(tx ondemand.Tx) error {
			return tx.AppendEvent(ondemand.Event{Seq: 1, JobID: "job-\xff"})
		}, `Event.JobID "job-\xff" is not valid UTF-8`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Update(t.Context(), func(tx ondemand.Tx) error {
				if err := tx.PutJob(&ondemand.Job{ID: "job-side-effect"}); err != nil {
					return err
				}
				return tc.put(tx)
			})
			require.ErrorContains(t, err, tc.want)

			err = s.View(t.Context(), func(tx ondemand.ReadTx) error {
				_, err := tx.Job("job-side-effect")
				return err
			})
			require.ErrorIs(t, err, ondemand.ErrNotFound, "the failed Update stored nothing")
		})
	}
}
