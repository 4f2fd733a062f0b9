package ondemand

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"
)

// change collects the records one state change writes. The Manager builds
// a change under its lock, writes it to the Store in one transaction, and
// only then applies it to its in-memory indexes, so memory never runs ahead
// of the store.
type change struct {
	m      *Manager
	now    time.Time
	jobs   map[string]*Job
	tasks  map[string]*Task
	events []Event
	seqs   map[string]int64
	// after runs, in order, once the change is applied to memory.
	after []func()

	// done is closed when the store has the change; err is the store's
	// error, if any.
	done chan struct{}
	err  error
}

func (m *Manager) newChange() *change {
	return &change{
		m:     m,
		now:   m.now(),
		jobs:  make(map[string]*Job),
		tasks: make(map[string]*Task),
		seqs:  make(map[string]int64),
	}
}

// job returns the staged copy of a job, staging it on first use, or nil
// when the ID is unknown.
func (c *change) job(id string) *Job {
	if j, ok := c.jobs[id]; ok {
		return j
	}
	e, ok := c.m.jobs[id]
	if !ok {
		return nil
	}
	j := e.job.Clone()
	c.jobs[id] = j
	return j
}

// task returns the staged copy of a task, or nil when the ID is unknown.
func (c *change) task(id string) *Task {
	if t, ok := c.tasks[id]; ok {
		return t
	}
	t, ok := c.m.tasks[id]
	if !ok {
		return nil
	}
	t = t.Clone()
	c.tasks[id] = t
	return t
}

// event appends an event to a staged job's timeline; the job's state in
// the event is the staged state.
func (c *change) event(j *Job, typ EventType, message string) {
	c.addEvent(Event{JobID: j.ID, Type: typ, State: j.State, Message: message})
}

func (c *change) addEvent(ev Event) {
	seq, ok := c.seqs[ev.JobID]
	if !ok {
		if e, known := c.m.jobs[ev.JobID]; known {
			seq = e.lastSeq
		}
	}
	seq++
	c.seqs[ev.JobID] = seq
	ev.Seq = seq
	if ev.Time.IsZero() {
		ev.Time = c.now
	}
	c.events = append(c.events, ev)
}

func (c *change) then(fn func()) { c.after = append(c.after, fn) }

// commit applies the change to memory and queues it for the store. It is
// called with m.mu held; wait then blocks, without the lock, until the
// store has committed the change. Changes reach the store in the order they
// were committed here, and the committer writes many of them in one store
// transaction, so concurrent changes share a commit.
//
// Memory runs ahead of the store until wait returns. When a store write
// fails, the Manager rejects every later change with ErrStoreFailed,
// because its memory no longer matches the store. The host then restarts
// it, which reloads the store.
func (c *change) commit() error {
	m := c.m
	if m.storeErr != nil {
		return m.storeErr
	}
	c.done = make(chan struct{})
	if len(c.jobs) == 0 && len(c.tasks) == 0 && len(c.events) == 0 {
		close(c.done)
	} else {
		m.committer.enqueue(c)
	}
	m.apply(c)
	for _, fn := range c.after {
		fn()
	}
	return nil
}

// wait blocks until the change is stored or ctx ends.
func (c *change) wait(ctx context.Context) error {
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// commitOrLog commits a change made by a timer or another internal path
// that has no caller to return an error to.
func (c *change) commitOrLog(what string) {
	if err := c.commit(); err != nil {
		c.m.logger.Error("state change rejected", "change", what, "error", err)
	}
}

// update runs fn on a new change under m.mu, commits the change and waits
// until it is stored.
func (m *Manager) update(ctx context.Context, fn func(c *change) error) error {
	c, err := m.updateNoWait(fn)
	if err != nil {
		return err
	}
	return c.wait(ctx)
}

// updateNoWait is update without waiting for the store.
func (m *Manager) updateNoWait(fn func(c *change) error) (*change, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.newChange()
	if err := fn(c); err != nil {
		return nil, err
	}
	if err := c.commit(); err != nil {
		return nil, err
	}
	return c, nil
}

// maxBatch bounds the changes written in one store transaction.
const maxBatch = 1024

// committer writes committed changes to the store in order, batching
// those that queue up while a write is in progress.
type committer struct {
	m       *Manager
	mu      sync.Mutex
	pending []*change
	wake    chan struct{}
	stop    chan struct{}
	stopped chan struct{}
}

func newCommitter(m *Manager) *committer {
	return &committer{m: m, wake: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{})}
}

func (q *committer) enqueue(c *change) {
	q.mu.Lock()
	q.pending = append(q.pending, c)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *committer) take() []*change {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := min(len(q.pending), maxBatch)
	batch := q.pending[:n:n]
	q.pending = q.pending[n:]
	if len(q.pending) > 0 {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	return batch
}

// run writes batches until close is requested and nothing is pending.
func (q *committer) run() {
	defer close(q.stopped)
	for {
		select {
		case <-q.wake:
		case <-q.stop:
			for batch := q.take(); len(batch) > 0; batch = q.take() {
				q.write(batch)
			}
			return
		}
		if batch := q.take(); len(batch) > 0 {
			q.write(batch)
		}
	}
}

func (q *committer) write(batch []*change) {
	m := q.m
	// One transaction holds the whole batch, so only the last version of a
	// job or task changed several times in it needs writing. Events are
	// all written, in order.
	jobs := make(map[string]*Job)
	tasks := make(map[string]*Task)
	for _, c := range batch {
		maps.Copy(jobs, c.jobs)
		maps.Copy(tasks, c.tasks)
	}
	err := m.store.Update(context.Background(), func(tx Tx) error {
		for _, j := range jobs {
			if err := tx.PutJob(j); err != nil {
				return err
			}
		}
		for _, t := range tasks {
			if err := tx.PutTask(t); err != nil {
				return err
			}
		}
		for _, c := range batch {
			for _, ev := range c.events {
				if err := tx.AppendEvent(ev); err != nil {
					return err
				}
			}
		}
		return nil
	})
	m.mu.Lock()
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrStoreFailed, err)
		if m.storeErr == nil {
			m.storeErr = err
			m.logger.Error("store write failed; the Manager rejects all further changes until it is restarted", "error", err)
		}
	} else {
		for _, c := range batch {
			for _, ev := range c.events {
				if e := m.jobs[ev.JobID]; e != nil && ev.Seq > e.durableSeq {
					e.durableSeq = ev.Seq
					close(e.changed)
					e.changed = make(chan struct{})
				}
			}
		}
	}
	m.mu.Unlock()
	for _, c := range batch {
		c.err = err
		close(c.done)
	}
}

// close writes what is pending and stops the committer.
func (q *committer) close() {
	close(q.stop)
	<-q.stopped
}
