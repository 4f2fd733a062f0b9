// Package storetest is a conformance suite for implementations of
// ondemand.Store. A store author runs it from an ordinary test:
//
//	func TestStore(t *testing.T) {
//		storetest.RunStoreTests(t, func(t *testing.T) ondemand.Store {
//			s, err := mystore.Open(filepath.Join(t.TempDir(), "db"))
//			require.NoError(t, err)
//			return s
//		})
//	}
//
// A store that groups transactions into shared commits may run fn on
// another goroutine and more than once, so the suite never calls
// t.FailNow (or require) inside fn: fn returns an error and the test
// goroutine checks it.
//
// Besides what the ondemand.Store documentation states, the suite expects:
//
//   - A store may return an empty slice or map as nil, but it keeps nil and
//     non-nil pointers apart: a Job.Error of &JobError{} or an ExitCode
//     pointing at 0 comes back as it went in.
//   - Strings are valid UTF-8; the suite stores no others. A store may
//     reject or alter strings that are not.
//   - A store keeps the instant of a time.Time to the nanosecond; the zone
//     and the monotonic clock reading may be lost.
//   - Errors for unknown IDs wrap ondemand.ErrNotFound and name the ID.
//   - Update with a cancelled context returns the context's error without
//     calling fn.
//   - Close may be called more than once; later calls return nil.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/odrkit/odrkit/ondemand"
)

// RunStoreTests runs the conformance suite as subtests of t. newStore
// returns a new, empty, open store for each subtest; the suite closes it
// when the subtest ends. newStore should use t for cleanup such as
// t.TempDir.
func RunStoreTests(t *testing.T, newStore func(t *testing.T) ondemand.Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, s ondemand.Store)
	}{
		{"JobRoundTrip", testJobRoundTrip},
		{"TaskRoundTrip", testTaskRoundTrip},
		{"EventRoundTrip", testEventRoundTrip},
		{"NotFound", testNotFound},
		{"UpdateRollsBack", testUpdateRollsBack},
		{"ReadOwnWrites", testReadOwnWrites},
		{"ForEach", testForEach},
		{"ForEachWithWrites", testForEachWithWrites},
		{"EventsAfter", testEventsAfter},
		{"EventsSeparateJobs", testEventsSeparateJobs},
		{"AppendEventGap", testAppendEventGap},
		{"ViewReadOnly", testViewReadOnly},
		{"ConcurrentUpdates", testConcurrentUpdates},
		{"ConcurrentAppendsOneJob", testConcurrentAppendsOneJob},
		{"ConcurrentFailuresIsolated", testConcurrentFailuresIsolated},
		{"ReturnedValuesAreCopies", testReturnedValuesAreCopies},
		{"StoredValuesAreCopies", testStoredValuesAreCopies},
		{"CancelledContext", testCancelledContext},
		{"RevocationRoundTrip", testRevocationRoundTrip},
		{"Close", testClose},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			require.NotNil(t, s, "newStore returned nil")
			t.Cleanup(func() {
				require.NoError(t, s.Close(), "close store after the subtest")
			})
			tc.run(t, s)
		})
	}
}

func testJobRoundTrip(t *testing.T, s ondemand.Store) {
	cases := []struct {
		name string
		job  *ondemand.Job
	}{
		{"every field", fullJob("job-full")},
		{"only ID", &ondemand.Job{ID: "job-min"}},
		{"error without exit code", &ondemand.Job{
			ID:    "job-no-exit",
			State: ondemand.StateError,
			Error: &ondemand.JobError{Reason: ondemand.ReasonRunnerLost, Message: "runner lost"},
		}},
		{"zero error", &ondemand.Job{ID: "job-zero-error", Error: &ondemand.JobError{}}},
		{"non-zero exit code", &ondemand.Job{
			ID:    "job-exit-7",
			Error: &ondemand.JobError{Reason: ondemand.ReasonJobFailed, ExitCode: intPtr(-7)},
		}},
		{"empty slices and maps", &ondemand.Job{
			ID:        "job-empty",
			Payload:   []byte{},
			Result:    []byte{},
			DependsOn: []ondemand.Dependency{},
			Target:    ondemand.Target{Labels: map[string]string{}},
		}},
		{"unicode and odd ID", &ondemand.Job{ID: "job/ü 1:\x01", Kind: "日本", Payload: []byte("\x00")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			put(t, s, func(tx ondemand.Tx) error { return tx.PutJob(tc.job) })

			got := getJob(t, s, tc.job.ID)
			require.Equal(t, normalJob(tc.job), normalJob(got))
			if tc.job.Error == nil {
				require.Nil(t, got.Error, "a nil Error must stay nil")
			} else {
				require.NotNil(t, got.Error, "a non-nil Error must stay non-nil")
				require.Equal(t, tc.job.Error.ExitCode == nil, got.Error.ExitCode == nil,
					"ExitCode nil-ness must survive")
			}
		})
	}

	t.Run("replace", func(t *testing.T) {
		j := fullJob("job-replace")
		put(t, s, func(tx ondemand.Tx) error { return tx.PutJob(j) })
		j2 := &ondemand.Job{ID: j.ID, Kind: "other", State: ondemand.StateSuccess}
		put(t, s, func(tx ondemand.Tx) error { return tx.PutJob(j2) })

		got := getJob(t, s, j.ID)
		require.Equal(t, normalJob(j2), normalJob(got), "a second PutJob replaces every field")
	})
}

func testTaskRoundTrip(t *testing.T, s ondemand.Store) {
	cases := []struct {
		name string
		task *ondemand.Task
	}{
		{"every field", fullTask("task-full")},
		{"only ID", &ondemand.Task{ID: "task-min"}},
		{"non-zero exit code", &ondemand.Task{ID: "task-exit", State: ondemand.TaskStopped, ExitCode: intPtr(137)}},
		{"empty launcher state", &ondemand.Task{ID: "task-empty", LauncherState: []byte{}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			put(t, s, func(tx ondemand.Tx) error { return tx.PutTask(tc.task) })

			got := getTask(t, s, tc.task.ID)
			require.Equal(t, normalTask(tc.task), normalTask(got))
			require.Equal(t, tc.task.ExitCode == nil, got.ExitCode == nil, "ExitCode nil-ness must survive")
		})
	}
}

func testEventRoundTrip(t *testing.T, s ondemand.Store) {
	want := []ondemand.Event{
		fullEvent("job-ev", 1),
		{Seq: 2, JobID: "job-ev", Type: ondemand.EventDone}, // zero time and empty strings
	}
	put(t, s, func(tx ondemand.Tx) error {
		for _, e := range want {
			if err := tx.AppendEvent(e); err != nil {
				return err
			}
		}
		return nil
	})

	got := events(t, s, "job-ev", 0)
	require.Len(t, got, len(want))
	for i := range want {
		require.Equal(t, normalEvent(want[i]), normalEvent(got[i]), "event %d", i)
	}
}

func testNotFound(t *testing.T, s ondemand.Store) {
	put(t, s, func(tx ondemand.Tx) error { return tx.PutJob(&ondemand.Job{ID: "job-known"}) })
	put(t, s, func(tx ondemand.Tx) error { return tx.PutTask(&ondemand.Task{ID: "task-known"}) })

	// lookups contains the errors of lookups that must fail: an unknown ID,
	// and a known ID of the other kind.
	type lookups struct{ jobMissing, taskMissing, jobIsTask, taskIsJob error }
	check := func(tx ondemand.ReadTx) (l lookups, err error) {
		var j *ondemand.Job
		var task *ondemand.Task
		if j, l.jobMissing = tx.Job("job-missing"); j != nil {
			return l, errors.New("Job returned a value for an unknown ID")
		}
		if task, l.taskMissing = tx.Task("task-missing"); task != nil {
			return l, errors.New("Task returned a value for an unknown ID")
		}
		_, l.jobIsTask = tx.Job("task-known")
		_, l.taskIsJob = tx.Task("job-known")
		return l, nil
	}
	requireNotFound := func(t *testing.T, l lookups) {
		t.Helper()
		require.ErrorIs(t, l.jobMissing, ondemand.ErrNotFound)
		require.ErrorContains(t, l.jobMissing, "job-missing")
		require.ErrorIs(t, l.taskMissing, ondemand.ErrNotFound)
		require.ErrorContains(t, l.taskMissing, "task-missing")
		require.ErrorIs(t, l.jobIsTask, ondemand.ErrNotFound, "a task ID is not a job ID")
		require.ErrorIs(t, l.taskIsJob, ondemand.ErrNotFound, "a job ID is not a task ID")
	}

	t.Run("View", func(t *testing.T) {
		var l lookups
		err := s.View(t.Context(), func(tx ondemand.ReadTx) (err error) {
			l, err = check(tx)
			return err
		})
		require.NoError(t, err)
		requireNotFound(t, l)
	})
	t.Run("Update", func(t *testing.T) {
		var l lookups
		err := s.Update(t.Context(), func(tx ondemand.Tx) (err error) {
			l, err = check(tx)
			return err
		})
		require.NoError(t, err)
		requireNotFound(t, l)
	})
}

func testUpdateRollsBack(t *testing.T, s ondemand.Store) {
	before := &ondemand.Job{ID: "job-old", Kind: "before", State: ondemand.StateQueued}
	put(t, s, func(tx ondemand.Tx) error {
		if err := tx.PutJob(before); err != nil {
			return err
		}
		return tx.AppendEvent(ondemand.Event{Seq: 1, JobID: "job-old", Type: ondemand.EventQueued})
	})

	errFn := errors.New("fn failed on purpose")
	err := s.Update(t.Context(), func(tx ondemand.Tx) error {
		changed := before.Clone()
		changed.Kind = "after"
		changed.State = ondemand.StateRunning
		if err := tx.PutJob(changed); err != nil {
			return err
		}
		if err := tx.AppendEvent(ondemand.Event{Seq: 2, JobID: "job-old", Type: ondemand.EventRunning}); err != nil {
			return err
		}
		if err := tx.PutJob(&ondemand.Job{ID: "job-new"}); err != nil {
			return err
		}
		if err := tx.PutTask(&ondemand.Task{ID: "task-new"}); err != nil {
			return err
		}
		if err := tx.AppendEvent(ondemand.Event{Seq: 1, JobID: "job-new", Type: ondemand.EventQueued}); err != nil {
			return err
		}
		return fmt.Errorf("wrapped: %w", errFn)
	})
	require.ErrorIs(t, err, errFn, "Update returns fn's error")

	require.Equal(t, normalJob(before), normalJob(getJob(t, s, "job-old")), "a replaced job keeps its old value")
	requireJobMissing(t, s, "job-new")
	requireTaskMissing(t, s, "task-new")
	require.Len(t, events(t, s, "job-old", 0), 1, "appended event of an existing job is dropped")
	require.Empty(t, events(t, s, "job-new", 0), "appended event of a new job is dropped")

	// The rolled-back events do not count towards the next sequence.
	put(t, s, func(tx ondemand.Tx) error {
		return tx.AppendEvent(ondemand.Event{Seq: 2, JobID: "job-old", Type: ondemand.EventRunning})
	})
	put(t, s, func(tx ondemand.Tx) error {
		return tx.AppendEvent(ondemand.Event{Seq: 1, JobID: "job-new", Type: ondemand.EventQueued})
	})
	require.Len(t, events(t, s, "job-old", 0), 2)
	require.Len(t, events(t, s, "job-new", 0), 1)
}

func testReadOwnWrites(t *testing.T, s ondemand.Store) {
	put(t, s, func(tx ondemand.Tx) error {
		if err := tx.PutJob(&ondemand.Job{ID: "job-stored", Kind: "old"}); err != nil {
			return err
		}
		if err := tx.PutTask(&ondemand.Task{ID: "task-stored", Profile: "old"}); err != nil {
			return err
		}
		return tx.AppendEvent(ondemand.Event{Seq: 1, JobID: "job-stored", Type: ondemand.EventQueued})
	})

	put(t, s, func(tx ondemand.Tx) error {
		// New records.
		if err := tx.PutJob(&ondemand.Job{ID: "job-staged", Kind: "new"}); err != nil {
			return err
		}
		j, err := tx.Job("job-staged")
		if err != nil {
			return err
		}
		if err := expect("kind of new job", "new", j.Kind); err != nil {
			return err
		}
		if err := tx.PutTask(&ondemand.Task{ID: "task-staged", Profile: "new"}); err != nil {
			return err
		}
		task, err := tx.Task("task-staged")
		if err != nil {
			return err
		}
		if err := expect("profile of new task", "new", task.Profile); err != nil {
			return err
		}

		// Replaced records.
		if err := tx.PutJob(&ondemand.Job{ID: "job-stored", Kind: "replaced"}); err != nil {
			return err
		}
		if j, err = tx.Job("job-stored"); err != nil {
			return err
		}
		if err := expect("kind of replaced job", "replaced", j.Kind); err != nil {
			return err
		}
		if err := tx.PutTask(&ondemand.Task{ID: "task-stored", Profile: "replaced"}); err != nil {
			return err
		}
		if task, err = tx.Task("task-stored"); err != nil {
			return err
		}
		if err := expect("profile of replaced task", "replaced", task.Profile); err != nil {
			return err
		}

		// ForEach returns each record once, with its staged value.
		var kinds []string
		if err := tx.ForEachJob(func(j *ondemand.Job) bool {
			kinds = append(kinds, j.ID+"="+j.Kind)
			return true
		}); err != nil {
			return err
		}
		slices.Sort(kinds)
		if err := expect("ForEachJob", []string{"job-staged=new", "job-stored=replaced"}, kinds); err != nil {
			return err
		}
		var profiles []string
		if err := tx.ForEachTask(func(task *ondemand.Task) bool {
			profiles = append(profiles, task.ID+"="+task.Profile)
			return true
		}); err != nil {
			return err
		}
		slices.Sort(profiles)
		if err := expect("ForEachTask", []string{"task-staged=new", "task-stored=replaced"}, profiles); err != nil {
			return err
		}

		// Events: the stored one followed by staged ones.
		for seq := int64(2); seq <= 3; seq++ {
			if err := tx.AppendEvent(ondemand.Event{Seq: seq, JobID: "job-stored"}); err != nil {
				return err
			}
		}
		if err := expectSeqs(tx, "job-stored", 0, []int64{1, 2, 3}); err != nil {
			return err
		}
		if err := expectSeqs(tx, "job-stored", 2, []int64{3}); err != nil {
			return err
		}
		if err := tx.AppendEvent(ondemand.Event{Seq: 1, JobID: "job-staged"}); err != nil {
			return err
		}
		return expectSeqs(tx, "job-staged", 0, []int64{1})
	})
}

func testForEach(t *testing.T, s ondemand.Store) {
	t.Run("empty store", func(t *testing.T) {
		var jobCalls, taskCalls int
		err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
			if err := tx.ForEachJob(func(*ondemand.Job) bool { jobCalls++; return true }); err != nil {
				return err
			}
			return tx.ForEachTask(func(*ondemand.Task) bool { taskCalls++; return true })
		})
		require.NoError(t, err)
		require.Zero(t, jobCalls, "ForEachJob calls on an empty store")
		require.Zero(t, taskCalls, "ForEachTask calls on an empty store")
	})

	const n = 25
	var wantJobs, wantTasks []string
	put(t, s, func(tx ondemand.Tx) error {
		for i := range n {
			id := fmt.Sprintf("job-%d", i)
			wantJobs = append(wantJobs, id)
			if err := tx.PutJob(fullJob(id)); err != nil {
				return err
			}
			id = fmt.Sprintf("task-%d", i)
			wantTasks = append(wantTasks, id)
			if err := tx.PutTask(fullTask(id)); err != nil {
				return err
			}
		}
		return nil
	})

	t.Run("all", func(t *testing.T) {
		var jobs, tasks []string
		err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
			var decodeErr error
			if err := tx.ForEachJob(func(j *ondemand.Job) bool {
				jobs = append(jobs, j.ID)
				decodeErr = expect("payload of "+j.ID, fullJob(j.ID).Payload, j.Payload)
				return decodeErr == nil
			}); err != nil {
				return err
			}
			if decodeErr != nil {
				return decodeErr
			}
			return tx.ForEachTask(func(task *ondemand.Task) bool {
				tasks = append(tasks, task.ID)
				return true
			})
		})
		require.NoError(t, err)
		require.ElementsMatch(t, wantJobs, jobs, "each job exactly once")
		require.ElementsMatch(t, wantTasks, tasks, "each task exactly once")
	})

	t.Run("stop", func(t *testing.T) {
		var jobCalls, taskCalls int
		err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
			if err := tx.ForEachJob(func(*ondemand.Job) bool {
				jobCalls++
				return jobCalls < 3
			}); err != nil {
				return err
			}
			return tx.ForEachTask(func(*ondemand.Task) bool {
				taskCalls++
				return false
			})
		})
		require.NoError(t, err)
		require.Equal(t, 3, jobCalls, "ForEachJob stops after fn returns false")
		require.Equal(t, 1, taskCalls, "ForEachTask stops after fn returns false")
	})
}

// testForEachWithWrites checks that an Update may replace and add records
// while it iterates, as a recovery pass that fixes what it finds does.
// Every record that existed before is seen exactly once.
func testForEachWithWrites(t *testing.T, s ondemand.Store) {
	const n = 40
	put(t, s, func(tx ondemand.Tx) error {
		for i := range n {
			if err := tx.PutJob(&ondemand.Job{ID: fmt.Sprintf("job-%02d", i), State: ondemand.StateQueued}); err != nil {
				return err
			}
			if err := tx.PutTask(&ondemand.Task{ID: fmt.Sprintf("task-%02d", i), State: ondemand.TaskPending}); err != nil {
				return err
			}
		}
		return nil
	})

	seenJobs := map[string]int{}
	seenNew := map[string]int{}
	seenTasks := map[string]int{}
	put(t, s, func(tx ondemand.Tx) error {
		// A store may run fn more than once, so count only the last run.
		clear(seenJobs)
		clear(seenNew)
		clear(seenTasks)
		var putErr error
		err := tx.ForEachJob(func(j *ondemand.Job) bool {
			if j.State == ondemand.StateRunning {
				// A job this pass added, which a store may or may not show.
				seenNew[j.ID]++
				return true
			}
			seenJobs[j.ID]++
			j.State = ondemand.StateCancelled
			j.Payload = make([]byte, 2000) // grow the value so that pages split
			if putErr = tx.PutJob(j); putErr != nil {
				return false
			}
			// Add jobs that sort right after and before this one.
			for _, id := range []string{j.ID + "-new", "a-new-" + j.ID} {
				if putErr = tx.PutJob(&ondemand.Job{ID: id, State: ondemand.StateRunning}); putErr != nil {
					return false
				}
			}
			return true
		})
		if err != nil {
			return err
		}
		if putErr != nil {
			return putErr
		}
		err = tx.ForEachTask(func(task *ondemand.Task) bool {
			seenTasks[task.ID]++
			task.State = ondemand.TaskStopped
			putErr = tx.PutTask(task)
			return putErr == nil
		})
		if err != nil {
			return err
		}
		return putErr
	})

	require.Len(t, seenJobs, n)
	for id, count := range seenJobs {
		require.Equal(t, 1, count, "job %s seen once", id)
		require.Equal(t, ondemand.StateCancelled, getJob(t, s, id).State, "job %s rewritten", id)
		require.Equal(t, ondemand.StateRunning, getJob(t, s, id+"-new").State, "job added after %s", id)
		require.Equal(t, ondemand.StateRunning, getJob(t, s, "a-new-"+id).State, "job added before %s", id)
	}
	for id, count := range seenNew {
		require.Equal(t, 1, count, "added job %s seen at most once", id)
	}
	require.Len(t, seenTasks, n)
	for id, count := range seenTasks {
		require.Equal(t, 1, count, "task %s seen once", id)
		require.Equal(t, ondemand.TaskStopped, getTask(t, s, id).State, "task %s rewritten", id)
	}
}

func testEventsAfter(t *testing.T, s ondemand.Store) {
	const jobID = "job-events"
	// Two transactions, so that a store that only reads the latest fails.
	for _, seqs := range [][]int64{{1, 2, 3}, {4, 5}} {
		put(t, s, func(tx ondemand.Tx) error {
			for _, seq := range seqs {
				if err := tx.AppendEvent(fullEvent(jobID, seq)); err != nil {
					return err
				}
			}
			return nil
		})
	}

	cases := []struct {
		after int64
		want  []int64
	}{
		{after: -1, want: []int64{1, 2, 3, 4, 5}},
		{after: 0, want: []int64{1, 2, 3, 4, 5}},
		{after: 2, want: []int64{3, 4, 5}},
		{after: 4, want: []int64{5}},
		{after: 5, want: nil},
		{after: 100, want: nil},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("after %d", tc.after), func(t *testing.T) {
			got := events(t, s, jobID, tc.after)
			var seqs []int64
			for _, e := range got {
				require.Equal(t, normalEvent(fullEvent(jobID, e.Seq)), normalEvent(e))
				seqs = append(seqs, e.Seq)
			}
			require.Equal(t, tc.want, seqs)
		})
	}

	t.Run("stop", func(t *testing.T) {
		var seqs []int64
		err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
			return tx.Events(jobID, 1, func(e ondemand.Event) bool {
				seqs = append(seqs, e.Seq)
				return len(seqs) < 2
			})
		})
		require.NoError(t, err)
		require.Equal(t, []int64{2, 3}, seqs, "Events stops after fn returns false")
	})

	t.Run("unknown job", func(t *testing.T) {
		require.Empty(t, events(t, s, "job-without-events", 0))
	})
}

// testEventsSeparateJobs stores events of jobs whose IDs are prefixes of
// each other, which catches stores that range-scan by a bare ID prefix.
func testEventsSeparateJobs(t *testing.T, s ondemand.Store) {
	ids := []string{"a", "ab", "a\x00", "a\x00\x00\x00\x00\x00\x00\x00\x01", "job-1", "job-10", "job-1\u00ff"}
	counts := map[string]int64{}
	for i, id := range ids {
		counts[id] = int64(i + 1)
	}
	// Interleave the jobs' events over several transactions.
	for seq := int64(1); seq <= int64(len(ids)); seq++ {
		put(t, s, func(tx ondemand.Tx) error {
			for _, id := range ids {
				if seq > counts[id] {
					continue
				}
				if err := tx.AppendEvent(ondemand.Event{Seq: seq, JobID: id, Message: id}); err != nil {
					return err
				}
			}
			return nil
		})
	}

	for _, id := range ids {
		got := events(t, s, id, 0)
		require.Len(t, got, int(counts[id]), "events of job %q", id)
		for i, e := range got {
			require.Equal(t, int64(i+1), e.Seq, "event %d of job %q", i, id)
			require.Equal(t, id, e.JobID)
			require.Equal(t, id, e.Message)
		}
	}
}

func testAppendEventGap(t *testing.T, s ondemand.Store) {
	put(t, s, func(tx ondemand.Tx) error {
		for seq := int64(1); seq <= 2; seq++ {
			if err := tx.AppendEvent(ondemand.Event{Seq: seq, JobID: "job-two"}); err != nil {
				return err
			}
		}
		return nil
	})

	cases := []struct {
		name  string
		jobID string
		seq   int64
	}{
		{"gap", "job-two", 4},
		{"repeat last", "job-two", 2},
		{"go back", "job-two", 1},
		{"zero", "job-two", 0},
		{"negative", "job-two", -1},
		{"first not one", "job-fresh", 2},
		{"first zero", "job-fresh", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var appendErr error
			err := s.Update(t.Context(), func(tx ondemand.Tx) error {
				if err := tx.PutJob(&ondemand.Job{ID: "job-side-effect"}); err != nil {
					return err
				}
				appendErr = tx.AppendEvent(ondemand.Event{Seq: tc.seq, JobID: tc.jobID})
				return appendErr
			})
			require.Error(t, appendErr, "AppendEvent must reject sequence %d", tc.seq)
			require.ErrorContains(t, appendErr, tc.jobID, "the error names the job")
			require.ErrorIs(t, err, appendErr)
			requireJobMissing(t, s, "job-side-effect")
		})
	}

	require.Equal(t, []int64{1, 2}, seqs(t, s, "job-two"))
	require.Empty(t, events(t, s, "job-fresh", 0))

	t.Run("gap inside one transaction", func(t *testing.T) {
		var repeatErr, gapErr error
		err := s.Update(t.Context(), func(tx ondemand.Tx) error {
			if err := tx.AppendEvent(ondemand.Event{Seq: 3, JobID: "job-two"}); err != nil {
				return err
			}
			repeatErr = tx.AppendEvent(ondemand.Event{Seq: 3, JobID: "job-two"})
			gapErr = tx.AppendEvent(ondemand.Event{Seq: 5, JobID: "job-two"})
			return tx.AppendEvent(ondemand.Event{Seq: 4, JobID: "job-two"})
		})
		require.NoError(t, err)
		require.Error(t, repeatErr, "staged sequence 3 appended twice")
		require.Error(t, gapErr, "sequence 5 after staged 3")
		require.Equal(t, []int64{1, 2, 3, 4}, seqs(t, s, "job-two"))
	})
}

func testViewReadOnly(t *testing.T, s ondemand.Store) {
	writable := false
	var putJobErr, putTaskErr, appendErr error
	err := s.View(t.Context(), func(rtx ondemand.ReadTx) error {
		w, ok := rtx.(ondemand.Tx)
		if !ok {
			return nil // read-only by type
		}
		writable = true
		putJobErr = w.PutJob(&ondemand.Job{ID: "job-from-view"})
		putTaskErr = w.PutTask(&ondemand.Task{ID: "task-from-view"})
		appendErr = w.AppendEvent(ondemand.Event{Seq: 1, JobID: "job-from-view"})
		return nil
	})
	require.NoError(t, err)
	if writable {
		require.Error(t, putJobErr, "PutJob in View")
		require.Error(t, putTaskErr, "PutTask in View")
		require.Error(t, appendErr, "AppendEvent in View")
	}

	requireJobMissing(t, s, "job-from-view")
	requireTaskMissing(t, s, "task-from-view")
	require.Empty(t, events(t, s, "job-from-view", 0))
}

func testConcurrentUpdates(t *testing.T, s ondemand.Store) {
	const goroutines, perGoroutine = 32, 10
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*perGoroutine)
	for g := range goroutines {
		wg.Go(func() {
			for i := range perGoroutine {
				id := fmt.Sprintf("job-%d-%d", g, i)
				errs <- s.Update(context.Background(), func(tx ondemand.Tx) error {
					if err := tx.PutJob(&ondemand.Job{ID: id, Attempt: i}); err != nil {
						return err
					}
					if err := tx.PutTask(&ondemand.Task{ID: "task-" + id}); err != nil {
						return err
					}
					return tx.AppendEvent(ondemand.Event{Seq: 1, JobID: id, Type: ondemand.EventQueued})
				})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	var jobs, tasks int
	err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
		if err := tx.ForEachJob(func(*ondemand.Job) bool { jobs++; return true }); err != nil {
			return err
		}
		return tx.ForEachTask(func(*ondemand.Task) bool { tasks++; return true })
	})
	require.NoError(t, err)
	require.Equal(t, goroutines*perGoroutine, jobs)
	require.Equal(t, goroutines*perGoroutine, tasks)
	for g := range goroutines {
		for i := range perGoroutine {
			id := fmt.Sprintf("job-%d-%d", g, i)
			require.Equal(t, i, getJob(t, s, id).Attempt)
			require.Equal(t, []int64{1}, seqs(t, s, id))
		}
	}
}

// testConcurrentAppendsOneJob checks that transactions are serialisable:
// each one reads the job's last sequence and appends the next.
func testConcurrentAppendsOneJob(t *testing.T, s ondemand.Store) {
	const goroutines, perGoroutine = 16, 8
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*perGoroutine)
	for range goroutines {
		wg.Go(func() {
			for range perGoroutine {
				errs <- s.Update(context.Background(), func(tx ondemand.Tx) error {
					var last int64
					if err := tx.Events("job-shared", 0, func(e ondemand.Event) bool {
						last = e.Seq
						return true
					}); err != nil {
						return err
					}
					return tx.AppendEvent(ondemand.Event{Seq: last + 1, JobID: "job-shared"})
				})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	want := make([]int64, goroutines*perGoroutine)
	for i := range want {
		want[i] = int64(i + 1)
	}
	require.Equal(t, want, seqs(t, s, "job-shared"))
}

// testConcurrentFailuresIsolated runs failing and succeeding Updates at
// once. A store that groups transactions into one commit must not let a
// failing one undo or fail the others.
func testConcurrentFailuresIsolated(t *testing.T, s ondemand.Store) {
	const n = 60
	errFn := errors.New("fn failed on purpose")
	var wg sync.WaitGroup
	results := make([]error, n)
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprintf("job-%02d", i)
			results[i] = s.Update(context.Background(), func(tx ondemand.Tx) error {
				if err := tx.PutJob(&ondemand.Job{ID: id}); err != nil {
					return err
				}
				if err := tx.AppendEvent(ondemand.Event{Seq: 1, JobID: id}); err != nil {
					return err
				}
				if i%3 == 0 {
					return errFn
				}
				return nil
			})
		})
	}
	wg.Wait()

	for i, err := range results {
		id := fmt.Sprintf("job-%02d", i)
		if i%3 == 0 {
			require.ErrorIs(t, err, errFn, "Update of %s returns its own fn's error", id)
			requireJobMissing(t, s, id)
			require.Empty(t, events(t, s, id, 0), "events of failed %s", id)
			continue
		}
		require.NoError(t, err, "Update of %s", id)
		getJob(t, s, id)
		require.Equal(t, []int64{1}, seqs(t, s, id), "events of %s", id)
	}
}

func testReturnedValuesAreCopies(t *testing.T, s ondemand.Store) {
	orig := fullJob("job-copy")
	task := fullTask("task-copy")
	put(t, s, func(tx ondemand.Tx) error {
		if err := tx.PutJob(orig); err != nil {
			return err
		}
		return tx.PutTask(task)
	})

	mutateJob := func(j *ondemand.Job) {
		j.Kind = "mutated"
		j.Payload[0] = 'X'
		j.Result[0] = 'X'
		j.Target.Labels["zone"] = "mutated"
		j.DependsOn[0].JobID = "mutated"
		j.Error.Message = "mutated"
		*j.Error.ExitCode = 99
	}
	mutateTask := func(task *ondemand.Task) {
		task.Profile = "mutated"
		task.LauncherState[0] = 'X'
		*task.ExitCode = 99
	}

	// mutateAll changes every value the transaction returns, then reads
	// the job again in the same transaction.
	mutateAll := func(tx ondemand.ReadTx) (*ondemand.Job, error) {
		j, err := tx.Job(orig.ID)
		if err != nil {
			return nil, err
		}
		mutateJob(j)
		task, err := tx.Task("task-copy")
		if err != nil {
			return nil, err
		}
		mutateTask(task)
		if err := tx.ForEachJob(func(j *ondemand.Job) bool { mutateJob(j); return true }); err != nil {
			return nil, err
		}
		if err := tx.ForEachTask(func(task *ondemand.Task) bool { mutateTask(task); return true }); err != nil {
			return nil, err
		}
		return tx.Job(orig.ID)
	}

	var inView, inUpdate *ondemand.Job
	err := s.View(t.Context(), func(tx ondemand.ReadTx) (err error) {
		inView, err = mutateAll(tx)
		return err
	})
	require.NoError(t, err)
	require.Equal(t, normalJob(orig), normalJob(inView), "read again within View")

	put(t, s, func(tx ondemand.Tx) (err error) {
		inUpdate, err = mutateAll(tx)
		return err
	})
	require.Equal(t, normalJob(orig), normalJob(inUpdate), "read again within Update")

	require.Equal(t, normalJob(orig), normalJob(getJob(t, s, orig.ID)))
	require.Equal(t, normalTask(task), normalTask(getTask(t, s, "task-copy")))
}

func testStoredValuesAreCopies(t *testing.T, s ondemand.Store) {
	origJob := fullJob("job-in")
	origTask := fullTask("task-in")
	want := normalJob(origJob)
	wantTask := normalTask(origTask)

	var j *ondemand.Job
	var task *ondemand.Task
	put(t, s, func(tx ondemand.Tx) error {
		// Fresh copies on every run keep fn idempotent.
		j, task = origJob.Clone(), origTask.Clone()
		if err := tx.PutJob(j); err != nil {
			return err
		}
		if err := tx.PutTask(task); err != nil {
			return err
		}
		// Changing the caller's value after PutJob, inside the
		// transaction, does not change what was put.
		j.Payload[0] = 'X'
		j.Target.Labels["zone"] = "mutated"
		*j.Error.ExitCode = 42
		task.LauncherState[0] = 'X'
		*task.ExitCode = 42
		return nil
	})
	require.Equal(t, want, normalJob(getJob(t, s, "job-in")), "after a change inside the transaction")
	require.Equal(t, wantTask, normalTask(getTask(t, s, "task-in")), "after a change inside the transaction")

	j.Kind = "mutated"
	j.DependsOn[0].JobID = "mutated"
	task.Profile = "mutated"
	require.Equal(t, want, normalJob(getJob(t, s, "job-in")), "after a change once Update returned")
	require.Equal(t, wantTask, normalTask(getTask(t, s, "task-in")), "after a change once Update returned")
}

func testCancelledContext(t *testing.T, s ondemand.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()

	called := false
	err := s.Update(ctx, func(tx ondemand.Tx) error {
		called = true
		return tx.PutJob(&ondemand.Job{ID: "job-cancelled"})
	})
	require.ErrorIs(t, err, context.Canceled)
	require.False(t, called, "Update called fn with a cancelled context")
	requireJobMissing(t, s, "job-cancelled")

	err = s.View(ctx, func(ondemand.ReadTx) error {
		called = true
		return nil
	})
	require.ErrorIs(t, err, context.Canceled)
	require.False(t, called, "View called fn with a cancelled context")
}

func testClose(t *testing.T, s ondemand.Store) {
	put(t, s, func(tx ondemand.Tx) error { return tx.PutJob(&ondemand.Job{ID: "job-before-close"}) })
	require.NoError(t, s.Close())

	called := false
	err := s.Update(t.Context(), func(tx ondemand.Tx) error {
		called = true
		return nil
	})
	require.Error(t, err, "Update after Close")
	require.False(t, called, "Update after Close called fn")

	err = s.View(t.Context(), func(ondemand.ReadTx) error {
		called = true
		return nil
	})
	require.Error(t, err, "View after Close")
	require.False(t, called, "View after Close called fn")

	require.NoError(t, s.Close(), "second Close")
}

// put runs fn in an Update and requires it to succeed.
func put(t *testing.T, s ondemand.Store, fn func(tx ondemand.Tx) error) {
	t.Helper()
	require.NoError(t, s.Update(t.Context(), fn))
}

func getJob(t *testing.T, s ondemand.Store, id string) *ondemand.Job {
	t.Helper()
	var j *ondemand.Job
	err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
		var err error
		j, err = tx.Job(id)
		return err
	})
	require.NoError(t, err, "read job %q", id)
	require.NotNil(t, j, "job %q", id)
	return j
}

func getTask(t *testing.T, s ondemand.Store, id string) *ondemand.Task {
	t.Helper()
	var task *ondemand.Task
	err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
		var err error
		task, err = tx.Task(id)
		return err
	})
	require.NoError(t, err, "read task %q", id)
	require.NotNil(t, task, "task %q", id)
	return task
}

func requireJobMissing(t *testing.T, s ondemand.Store, id string) {
	t.Helper()
	err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
		_, err := tx.Job(id)
		return err
	})
	require.ErrorIs(t, err, ondemand.ErrNotFound, "job %q must not be stored", id)
}

func requireTaskMissing(t *testing.T, s ondemand.Store, id string) {
	t.Helper()
	err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
		_, err := tx.Task(id)
		return err
	})
	require.ErrorIs(t, err, ondemand.ErrNotFound, "task %q must not be stored", id)
}

func events(t *testing.T, s ondemand.Store, jobID string, after int64) []ondemand.Event {
	t.Helper()
	var evs []ondemand.Event
	err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
		return tx.Events(jobID, after, func(e ondemand.Event) bool {
			evs = append(evs, e)
			return true
		})
	})
	require.NoError(t, err, "read events of job %q", jobID)
	return evs
}

func seqs(t *testing.T, s ondemand.Store, jobID string) []int64 {
	t.Helper()
	var out []int64
	for _, e := range events(t, s, jobID, 0) {
		out = append(out, e.Seq)
	}
	return out
}

// expect returns an error naming subject when want and got are not deeply
// equal. Checks inside fn use it because require must not run there.
func expect(subject string, want, got any) error {
	if !reflect.DeepEqual(want, got) {
		return fmt.Errorf("%s: want %#v, got %#v", subject, want, got)
	}
	return nil
}

func expectSeqs(tx ondemand.ReadTx, jobID string, after int64, want []int64) error {
	var got []int64
	if err := tx.Events(jobID, after, func(e ondemand.Event) bool {
		got = append(got, e.Seq)
		return true
	}); err != nil {
		return err
	}
	return expect(fmt.Sprintf("sequences of job %q after %d", jobID, after), want, got)
}

func testRevocationRoundTrip(t *testing.T, s ondemand.Store) {
	first := ondemand.Revocation{RunnerID: "runner-a", RevokedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}
	second := ondemand.Revocation{RunnerID: "runner-b", RevokedAt: first.RevokedAt.Add(time.Hour)}
	put(t, s, func(tx ondemand.Tx) error { return tx.PutRevocation(first) })
	put(t, s, func(tx ondemand.Tx) error { return tx.PutRevocation(second) })
	// A later revocation of the same runner replaces the earlier one.
	replaced := ondemand.Revocation{RunnerID: "runner-a", RevokedAt: first.RevokedAt.Add(2 * time.Hour)}
	put(t, s, func(tx ondemand.Tx) error { return tx.PutRevocation(replaced) })

	got := map[string]time.Time{}
	err := s.View(t.Context(), func(tx ondemand.ReadTx) error {
		return tx.ForEachRevocation(func(r ondemand.Revocation) bool {
			got[r.RunnerID] = r.RevokedAt
			return true
		})
	})
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.True(t, replaced.RevokedAt.Equal(got["runner-a"]), "runner-a revoked at %s, want %s", got["runner-a"], replaced.RevokedAt)
	require.True(t, second.RevokedAt.Equal(got["runner-b"]), "runner-b revoked at %s, want %s", got["runner-b"], second.RevokedAt)
}
