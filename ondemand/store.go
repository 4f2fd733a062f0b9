package ondemand

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
)

// ErrNotFound is returned when a job or task ID is unknown.
var ErrNotFound = errors.New("not found")

// TaskState is the state of a task: the platform resource of one
// on-demand runner.
type TaskState string

// Task states.
const (
	// TaskPending: the start job has not completed yet.
	TaskPending TaskState = "PENDING"
	// TaskStarted: StartTask returned a launcher state.
	TaskStarted TaskState = "STARTED"
	// TaskStopped: StopTask succeeded, or there was nothing to stop.
	TaskStopped TaskState = "STOPPED"
	// TaskStopFailed: StopTask failed; the resource may be left behind.
	TaskStopFailed TaskState = "STOP_FAILED"
)

// Task is the record of one on-demand runner's life.
type Task struct {
	ID       string `json:"id"`
	RunnerID string `json:"runner_id"`
	Profile  string `json:"profile"`
	// JobID is the host's job the runner was launched for.
	JobID      string `json:"job_id"`
	StartJobID string `json:"start_job_id"`
	// WatchJobID is empty when the profile's launcher cannot watch tasks.
	WatchJobID string `json:"watch_job_id,omitempty"`
	StopJobID  string `json:"stop_job_id"`

	State TaskState `json:"state"`
	// LauncherState is the opaque state StartTask returned, for StopTask.
	LauncherState []byte `json:"launcher_state,omitempty"`
	// StartupDeadline is when the job fails if its runner has not
	// connected; zero until the start job is assigned.
	StartupDeadline time.Time `json:"startup_deadline,omitzero"`
	// ExitCode is the task's exit code when a watch job saw it exit.
	ExitCode *int `json:"exit_code,omitempty"`

	CreatedAt time.Time `json:"created_at"`
	StartedAt time.Time `json:"started_at,omitzero"`
	StoppedAt time.Time `json:"stopped_at,omitzero"`
}

// active reports whether the task counts against its profile's
// max_concurrent: its start job has been assigned and it is not stopped.
func (t *Task) active() bool {
	return !t.StartupDeadline.IsZero() && t.State != TaskStopped && t.State != TaskStopFailed
}

// Clone returns a deep copy of t.
func (t *Task) Clone() *Task {
	if t == nil {
		return nil
	}
	c := *t
	c.LauncherState = slices.Clone(t.LauncherState)
	if t.ExitCode != nil {
		c.ExitCode = intPtr(*t.ExitCode)
	}
	return &c
}

// Store persists jobs, tasks and job events. The Manager keeps its own
// indexes in memory and writes every change through a Store before it
// acknowledges the change, so a durable Store makes accepted jobs survive a
// host crash.
//
// All changes happen inside Update, which commits them atomically: either
// every change made by fn is stored or none is. A Store must be safe for
// concurrent use; it may serialise transactions.
type Store interface {
	// Update runs fn in a read-write transaction and commits it when fn
	// returns nil. When fn returns an error, nothing fn changed is stored
	// and Update returns that error.
	Update(ctx context.Context, fn func(tx Tx) error) error
	// View runs fn in a read-only transaction.
	View(ctx context.Context, fn func(tx ReadTx) error) error
	// Close releases the store.
	Close() error
}

// ReadTx reads a consistent view of a Store. Values it returns are copies
// the caller may keep.
type ReadTx interface {
	// Job returns the job with this ID, or an error wrapping ErrNotFound.
	Job(id string) (*Job, error)
	// Task returns the task with this ID, or an error wrapping ErrNotFound.
	Task(id string) (*Task, error)
	// ForEachJob calls fn for every job until fn returns false.
	ForEachJob(fn func(*Job) bool) error
	// ForEachTask calls fn for every task until fn returns false.
	ForEachTask(fn func(*Task) bool) error
	// Events calls fn for the job's events with Seq greater than after, in
	// order, until fn returns false.
	Events(jobID string, after int64, fn func(Event) bool) error
	// ForEachRevocation calls fn for every runner token revocation until
	// fn returns false.
	ForEachRevocation(fn func(Revocation) bool) error
}

// Revocation invalidates every token issued for a runner ID at or before
// RevokedAt. Tokens issued later are valid again.
type Revocation struct {
	RunnerID  string    `json:"runner_id"`
	RevokedAt time.Time `json:"revoked_at"`
}

// Tx is a read-write transaction. Reads see the transaction's own writes.
type Tx interface {
	ReadTx
	// PutJob creates or replaces a job.
	PutJob(j *Job) error
	// PutTask creates or replaces a task.
	PutTask(t *Task) error
	// AppendEvent adds an event to its job's timeline. e.Seq must be one
	// more than the job's last event.
	AppendEvent(e Event) error
	// PutRevocation creates or replaces the revocation of r.RunnerID.
	PutRevocation(r Revocation) error
}

// MemoryStore is a Store that keeps everything in memory, for tests and
// programs that need no durability. Its zero value is not usable; call
// NewMemoryStore.
type MemoryStore struct {
	mu          sync.RWMutex
	jobs        map[string]*Job
	tasks       map[string]*Task
	events      map[string][]Event
	revocations map[string]Revocation
	closed      bool
}

// NewMemoryStore returns an empty in-memory store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{
		jobs:        make(map[string]*Job),
		tasks:       make(map[string]*Task),
		events:      make(map[string][]Event),
		revocations: make(map[string]Revocation),
	}
}

var errStoreClosed = errors.New("store is closed")

// Update implements Store. Changes are staged and applied only when fn
// returns nil.
func (s *MemoryStore) Update(ctx context.Context, fn func(tx Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errStoreClosed
	}
	tx := &memTx{store: s, jobs: map[string]*Job{}, tasks: map[string]*Task{}, events: map[string][]Event{}, revocations: map[string]Revocation{}}
	if err := fn(tx); err != nil {
		return err
	}
	maps.Copy(s.jobs, tx.jobs)
	maps.Copy(s.tasks, tx.tasks)
	for id, evs := range tx.events {
		s.events[id] = append(s.events[id], evs...)
	}
	maps.Copy(s.revocations, tx.revocations)
	return nil
}

// View implements Store.
func (s *MemoryStore) View(ctx context.Context, fn func(tx ReadTx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return errStoreClosed
	}
	return fn(&memTx{store: s})
}

// Close implements Store.
func (s *MemoryStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

// memTx reads the store and, in an Update, the staged changes on top.
type memTx struct {
	store       *MemoryStore
	jobs        map[string]*Job
	tasks       map[string]*Task
	events      map[string][]Event
	revocations map[string]Revocation
}

func (tx *memTx) Job(id string) (*Job, error) {
	if j, ok := tx.jobs[id]; ok {
		return j.Clone(), nil
	}
	if j, ok := tx.store.jobs[id]; ok {
		return j.Clone(), nil
	}
	return nil, notFound("job", id)
}

func (tx *memTx) Task(id string) (*Task, error) {
	if t, ok := tx.tasks[id]; ok {
		return t.Clone(), nil
	}
	if t, ok := tx.store.tasks[id]; ok {
		return t.Clone(), nil
	}
	return nil, notFound("task", id)
}

func (tx *memTx) ForEachJob(fn func(*Job) bool) error {
	for id, j := range tx.store.jobs {
		if staged, ok := tx.jobs[id]; ok {
			j = staged
		}
		if !fn(j.Clone()) {
			return nil
		}
	}
	for id, j := range tx.jobs {
		if _, ok := tx.store.jobs[id]; !ok && !fn(j.Clone()) {
			return nil
		}
	}
	return nil
}

func (tx *memTx) ForEachTask(fn func(*Task) bool) error {
	for id, t := range tx.store.tasks {
		if staged, ok := tx.tasks[id]; ok {
			t = staged
		}
		if !fn(t.Clone()) {
			return nil
		}
	}
	for id, t := range tx.tasks {
		if _, ok := tx.store.tasks[id]; !ok && !fn(t.Clone()) {
			return nil
		}
	}
	return nil
}

func (tx *memTx) Events(jobID string, after int64, fn func(Event) bool) error {
	all := tx.store.events[jobID]
	if staged := tx.events[jobID]; len(staged) > 0 {
		all = append(slices.Clip(all), staged...)
	}
	// Seq starts at 1 without gaps, so the event after `after` is at index after.
	for i := max(after, 0); i < int64(len(all)); i++ {
		if !fn(all[i]) {
			return nil
		}
	}
	return nil
}

func (tx *memTx) ForEachRevocation(fn func(Revocation) bool) error {
	for id, r := range tx.store.revocations {
		if staged, ok := tx.revocations[id]; ok {
			r = staged
		}
		if !fn(r) {
			return nil
		}
	}
	for id, r := range tx.revocations {
		if _, ok := tx.store.revocations[id]; !ok && !fn(r) {
			return nil
		}
	}
	return nil
}

func (tx *memTx) PutRevocation(r Revocation) error {
	if tx.revocations == nil {
		return errors.New("put revocation: transaction is read-only")
	}
	tx.revocations[r.RunnerID] = r
	return nil
}

func (tx *memTx) PutJob(j *Job) error {
	if tx.jobs == nil {
		return errors.New("put job: transaction is read-only")
	}
	tx.jobs[j.ID] = j.Clone()
	return nil
}

func (tx *memTx) PutTask(t *Task) error {
	if tx.tasks == nil {
		return errors.New("put task: transaction is read-only")
	}
	tx.tasks[t.ID] = t.Clone()
	return nil
}

func (tx *memTx) AppendEvent(e Event) error {
	if tx.events == nil {
		return errors.New("append event: transaction is read-only")
	}
	last := int64(len(tx.store.events[e.JobID]) + len(tx.events[e.JobID]))
	if e.Seq != last+1 {
		return fmt.Errorf("append event to job %s: sequence %d does not follow %d", e.JobID, e.Seq, last)
	}
	tx.events[e.JobID] = append(tx.events[e.JobID], e)
	return nil
}

func notFound(what, id string) error {
	return fmt.Errorf("%s %q: %w", what, id, ErrNotFound)
}
