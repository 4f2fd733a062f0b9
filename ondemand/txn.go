package ondemand

import (
	"context"
	"fmt"
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
	// after runs, in order, once the change is stored.
	after []func()
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

// commit stores the change and applies it to memory. It is called with
// m.mu held. When the store fails, memory is unchanged and the error is
// returned.
func (c *change) commit(ctx context.Context) error {
	if len(c.jobs) == 0 && len(c.tasks) == 0 && len(c.events) == 0 {
		for _, fn := range c.after {
			fn()
		}
		return nil
	}
	err := c.m.store.Update(ctx, func(tx Tx) error {
		for _, j := range c.jobs {
			if err := tx.PutJob(j); err != nil {
				return err
			}
		}
		for _, t := range c.tasks {
			if err := tx.PutTask(t); err != nil {
				return err
			}
		}
		for _, ev := range c.events {
			if err := tx.AppendEvent(ev); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	c.m.apply(c)
	for _, fn := range c.after {
		fn()
	}
	return nil
}

// commitOrLog commits a change made by a timer or another internal path
// that has no caller to return an error to.
func (c *change) commitOrLog(what string) {
	if err := c.commit(context.Background()); err != nil {
		c.m.logger.Error("state change not stored; it will be retried at the next trigger", "change", what, "error", err)
	}
}
