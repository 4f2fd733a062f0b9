package ondemand

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"maps"
	"time"
)

// ErrRunnerSpent is returned by NextAssignment when an on-demand runner
// requests work after it has taken its job.
var ErrRunnerSpent = errors.New("on-demand runner has already taken its job")

// ErrUnknownRunner is returned by NextAssignment when an on-demand runner
// presents a runner ID that no task launched.
var ErrUnknownRunner = errors.New("no task launched this on-demand runner")

// ErrAssignmentEnded is returned by Assignment methods after the Manager
// ended the assignment: the job completed, was cancelled, timed out or was
// queued again.
var ErrAssignmentEnded = errors.New("assignment ended")

// RunnerSession describes an authenticated runner that requests a job.
type RunnerSession struct {
	RunnerID string
	Labels   map[string]string
	// OnDemand limits the runner to the jobs held for its runner ID.
	OnDemand bool
	// embedded marks the Manager's own launcher runner, whose jobs need no
	// heartbeats.
	embedded bool
}

// canTake reports whether the session's runner may take the job.
func (s *RunnerSession) canTake(j *Job) bool {
	switch {
	case j.Target.RunnerID != "":
		return j.Target.RunnerID == s.RunnerID
	case s.OnDemand:
		return false
	default:
		return labelsMatch(j.Target.Labels, s.Labels)
	}
}

// dispatchQueue holds the jobs that are ready to run, oldest first: the
// holding set indexed by runner ID, jobs that target labels, and jobs for
// any runner.
type dispatchQueue struct {
	byRunner map[string]*list.List
	labelled *list.List
	any      *list.List
}

func newDispatchQueue() dispatchQueue {
	return dispatchQueue{byRunner: make(map[string]*list.List), labelled: list.New(), any: list.New()}
}

func (q *dispatchQueue) listFor(j *Job) *list.List {
	switch {
	case j.Target.RunnerID != "":
		l := q.byRunner[j.Target.RunnerID]
		if l == nil {
			l = list.New()
			q.byRunner[j.Target.RunnerID] = l
		}
		return l
	case len(j.Target.Labels) > 0:
		return q.labelled
	default:
		return q.any
	}
}

func (q *dispatchQueue) push(e *entry) {
	e.elem = q.listFor(e.job).PushBack(e)
}

func (q *dispatchQueue) remove(e *entry) {
	l := q.listFor(e.job)
	l.Remove(e.elem)
	e.elem = nil
	if id := e.job.Target.RunnerID; id != "" && l.Len() == 0 {
		delete(q.byRunner, id)
	}
}

// find returns the oldest job the session may take and that ok accepts:
// by runner ID first, then by labels, then any.
func (q *dispatchQueue) find(s *RunnerSession, ok func(*entry) bool) *entry {
	if l := q.byRunner[s.RunnerID]; l != nil {
		for el := l.Front(); el != nil; el = el.Next() {
			if e := el.Value.(*entry); ok(e) {
				return e
			}
		}
	}
	if s.OnDemand {
		return nil
	}
	for el := q.labelled.Front(); el != nil; el = el.Next() {
		if e := el.Value.(*entry); s.canTake(e.job) && ok(e) {
			return e
		}
	}
	for el := q.any.Front(); el != nil; el = el.Next() {
		if e := el.Value.(*entry); ok(e) {
			return e
		}
	}
	return nil
}

// HeldJobs returns the number of jobs in the holding set: queued, ready,
// and bound to a runner ID.
func (m *Manager) HeldJobs() int {
	held, _ := m.queueSizes()
	return held
}

// canDispatch reports whether a ready job may be assigned now. Only the
// start job of a task not yet counted is limited, by its profile's
// max_concurrent. Called with m.mu held.
func (m *Manager) canDispatch(e *entry) bool {
	j := e.job
	if j.Role != RoleStart {
		return true
	}
	t := m.tasks[j.TaskID]
	if t == nil || t.active() {
		return true
	}
	p, err := m.profile(j.Profile)
	if err != nil || p.MaxConcurrent == 0 {
		return true
	}
	return m.activeTasks[j.Profile] < p.MaxConcurrent
}

// dispatchWaiting gives queued jobs to waiting runners, after something
// other than a new job made a queued job dispatchable. Called with m.mu
// held.
func (m *Manager) dispatchWaiting() {
	for el := m.waiters.all.Front(); el != nil; {
		w := el.Value.(*waiter)
		el = el.Next()
		if e := m.queue.find(&w.session, m.canDispatch); e != nil {
			m.assign(e, w)
		}
	}
}

// waiter is a runner blocked in NextAssignment.
type waiter struct {
	session  RunnerSession
	assigned chan *Assignment // buffered; receives at most one assignment
	elem     *list.Element
	byIDElem *list.Element
}

// waiterSet holds waiting runners in arrival order, with an index by
// runner ID for jobs held for one runner.
type waiterSet struct {
	all  *list.List
	byID map[string]*list.List
}

func newWaiterSet() waiterSet {
	return waiterSet{all: list.New(), byID: make(map[string]*list.List)}
}

func (ws *waiterSet) add(w *waiter) {
	w.elem = ws.all.PushBack(w)
	l := ws.byID[w.session.RunnerID]
	if l == nil {
		l = list.New()
		ws.byID[w.session.RunnerID] = l
	}
	w.byIDElem = l.PushBack(w)
}

func (ws *waiterSet) remove(w *waiter) {
	if w.elem == nil {
		return
	}
	ws.all.Remove(w.elem)
	l := ws.byID[w.session.RunnerID]
	l.Remove(w.byIDElem)
	if l.Len() == 0 {
		delete(ws.byID, w.session.RunnerID)
	}
	w.elem, w.byIDElem = nil, nil
}

// find returns the first waiting runner that may take the job.
func (ws *waiterSet) find(j *Job) *waiter {
	if id := j.Target.RunnerID; id != "" {
		if l := ws.byID[id]; l != nil && l.Len() > 0 {
			return l.Front().Value.(*waiter)
		}
		return nil
	}
	for el := ws.all.Front(); el != nil; el = el.Next() {
		if w := el.Value.(*waiter); w.session.canTake(j) {
			return w
		}
	}
	return nil
}

// reindex puts a job into the dispatch queue when it is ready to run and
// takes it out when it is not. A job that becomes ready goes straight to a
// waiting runner that may take it. Called with m.mu held.
func (m *Manager) reindex(e *entry) {
	ready := e.job.State == StateQueued && m.dependenciesDone(e.job)
	switch {
	case e.elem != nil && !ready:
		m.queue.remove(e)
	case e.elem == nil && ready:
		m.queue.push(e)
		if !m.canDispatch(e) || m.closed {
			return
		}
		if w := m.waiters.find(e.job); w != nil {
			m.assign(e, w)
		}
	}
}

// Assignment is one job handed to one runner. The runner reports progress
// through its methods; each fails with ErrAssignmentEnded once the Manager
// has ended the assignment.
type Assignment struct {
	m *Manager
	// Job is a copy of the job as it was assigned.
	Job *Job
	// HeartbeatInterval is how often the runner must send heartbeats
	// while the job runs.
	HeartbeatInterval time.Duration

	session      RunnerSession
	attempt      int
	cancel       chan struct{}
	cancelReason string
	ended        chan struct{}
	endErr       error
}

// CancelRequested is closed when the job was cancelled; the runner should
// stop the job and complete it.
func (a *Assignment) CancelRequested() <-chan struct{} { return a.cancel }

// Ended is closed when the Manager ended the assignment; Err then returns the reason.
func (a *Assignment) Ended() <-chan struct{} { return a.ended }

// Err returns why the Manager ended the assignment, or nil while it lasts.
func (a *Assignment) Err() error {
	select {
	case <-a.ended:
		return a.endErr
	default:
		return nil
	}
}

// end closes the assignment. Called with m.mu held.
func (a *Assignment) end(err error) {
	select {
	case <-a.ended:
	default:
		a.endErr = err
		close(a.ended)
	}
}

// assign hands a queued job to a waiting runner. Called with m.mu held.
func (m *Manager) assign(e *entry, w *waiter) {
	c := m.newChange()
	j := c.job(e.job.ID)
	j.State = StateWaiting
	j.RunnerID = w.session.RunnerID
	j.Attempt++
	j.AssignedAt = c.now
	a := &Assignment{
		m:                 m,
		HeartbeatInterval: m.cfg.HeartbeatInterval,
		session:           w.session,
		attempt:           j.Attempt,
		cancel:            make(chan struct{}),
		ended:             make(chan struct{}),
	}
	c.event(j, EventAssigned, "assigned to runner "+w.session.RunnerID)
	payload, err := m.assignmentPayload(c, j)
	if err != nil {
		// The job cannot be sent as it is; fail it instead of assigning it
		// again and again.
		m.logger.Error("job cannot be assigned", "job", j.ID, "error", err)
		c = m.newChange()
		c.finish(e.job.ID, nil, &JobError{Reason: ReasonJobFailed, Message: err.Error()})
		c.commitOrLog("fail job " + e.job.ID)
		return
	}
	a.Job = j.Clone()
	a.Job.Payload = payload
	if t := m.tasks[j.TaskID]; j.Role == RoleJob && t != nil && !t.StartupDeadline.IsZero() {
		launched := t.StartupDeadline.Add(-m.startupTimeout(t.Profile))
		c.then(func() { m.metrics.launchLatency.Record(context.Background(), c.now.Sub(launched).Seconds()) })
	}
	c.then(func() {
		m.waiters.remove(w)
		e.assignment = a
		m.setTimer(e, timerAck, m.cfg.AckTimeout, a.attempt)
		w.assigned <- a
	})
	c.commitOrLog("assign job " + j.ID)
}

// NextAssignment blocks until a job the runner may take is ready, assigns
// it to the runner and returns it. The runner must acknowledge it with Ack
// within Config.AckTimeout. When ctx ends first, NextAssignment returns
// ctx's error and the runner gets nothing.
func (m *Manager) NextAssignment(ctx context.Context, s RunnerSession) (*Assignment, error) {
	s.Labels = maps.Clone(s.Labels)
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	if s.OnDemand {
		if err := m.checkOnDemand(s.RunnerID); err != nil {
			m.mu.Unlock()
			return nil, err
		}
	}
	w := &waiter{session: s, assigned: make(chan *Assignment, 1)}
	m.waiters.add(w)
	if e := m.queue.find(&s, m.canDispatch); e != nil {
		m.assign(e, w)
	}
	m.mu.Unlock()

	select {
	case a := <-w.assigned:
		return a, nil
	case <-ctx.Done():
	case <-m.closing:
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	m.waiters.remove(w)
	select {
	case a := <-w.assigned:
		// Assigned while the runner left: the job goes back to the queue.
		c := m.newChange()
		c.requeue(a.Job.ID, a.attempt, "runner left before the job was sent")
		c.commitOrLog("requeue job " + a.Job.ID)
	default:
	}
	if m.closed {
		return nil, ErrClosed
	}
	return nil, ctx.Err()
}

// checkOnDemand rejects an on-demand runner whose job is already taken or
// over. Called with m.mu held.
func (m *Manager) checkOnDemand(runnerID string) error {
	t := m.tasks[m.byRunID[runnerID]]
	if t == nil {
		return fmt.Errorf("%w: runner %s", ErrUnknownRunner, runnerID)
	}
	e := m.jobs[t.JobID]
	if e.job.State != StateQueued {
		return fmt.Errorf("%w: runner %s, job %s is %s", ErrRunnerSpent, runnerID, t.JobID, e.job.State)
	}
	return nil
}

// current returns the job's entry if this assignment is still its current
// one. Called with m.mu held.
func (a *Assignment) current() (*entry, error) {
	m := a.m
	if m.closed {
		return nil, ErrClosed
	}
	e := m.jobs[a.Job.ID]
	if e == nil || e.assignment != a || e.job.Attempt != a.attempt || e.job.State.Terminal() {
		if err := a.Err(); err != nil {
			return nil, err
		}
		return nil, ErrAssignmentEnded
	}
	return e, nil
}

// Ack accepts the assignment: the job is RUNNING from now on. Ack returns
// before the store has the change: if the host crashes first, the job is
// queued again at restart, as its runner's stream is gone anyway.
func (a *Assignment) Ack(ctx context.Context) error {
	_, err := a.m.updateNoWait(func(c *change) error {
		e, err := a.current()
		if err != nil {
			return err
		}
		if e.job.State != StateWaiting {
			return fmt.Errorf("ack job %s: job is %s, not WAITING", e.job.ID, e.job.State)
		}
		a.ack(c, e)
		return nil
	})
	return err
}

func (a *Assignment) ack(c *change, e *entry) {
	m := a.m
	j := c.job(e.job.ID)
	j.State = StateRunning
	j.AckedAt = c.now
	c.event(j, EventRunning, "running on runner "+a.session.RunnerID)
	c.then(func() {
		m.stopTimer(e, timerAck)
		if !a.session.embedded {
			m.setTimer(e, timerHeartbeat, m.cfg.HeartbeatTimeout, a.attempt)
		}
		if j.MaxDuration > 0 {
			m.setTimer(e, timerMaxDuration, j.MaxDuration, a.attempt)
		}
		if j.CancelRequested {
			a.requestCancel("cancelled by request")
		}
	})
}

// Nack rejects the assignment; the job is queued again for any runner its
// target allows, including this one.
func (a *Assignment) Nack(ctx context.Context, message string) error {
	return a.update(ctx, func(c *change) error {
		e, err := a.current()
		if err != nil {
			return err
		}
		c.requeue(e.job.ID, a.attempt, "runner "+a.session.RunnerID+" rejected the job: "+message)
		return nil
	})
}

// OutputLine is one line of job output.
type OutputLine struct {
	Stream string
	Line   string
}

// Output records output lines of the running job and counts as a
// heartbeat. Output returns before the store has the lines; Complete
// returns only after the store has them too, because changes are stored
// in order.
func (a *Assignment) Output(ctx context.Context, lines []OutputLine) error {
	m := a.m
	_, err := m.updateNoWait(func(c *change) error {
		e, err := a.current()
		if err != nil {
			return err
		}
		if e.job.State != StateRunning {
			return fmt.Errorf("output for job %s: job is %s; acknowledge it first", e.job.ID, e.job.State)
		}
		for _, l := range lines {
			c.addEvent(Event{JobID: e.job.ID, Type: EventOutput, Stream: l.Stream, Line: l.Line, State: StateRunning})
		}
		c.then(func() { m.touchHeartbeat(e, a) })
		return nil
	})
	return err
}

// Heartbeat records that the runner is alive.
func (a *Assignment) Heartbeat() error {
	m := a.m
	m.mu.Lock()
	defer m.mu.Unlock()
	e, err := a.current()
	if err != nil {
		return err
	}
	m.touchHeartbeat(e, a)
	return nil
}

func (m *Manager) touchHeartbeat(e *entry, a *Assignment) {
	if e.job.State == StateRunning && !a.session.embedded {
		m.setTimer(e, timerHeartbeat, m.cfg.HeartbeatTimeout, a.attempt)
	}
}

// Complete ends the job. A nil failure means success. The failure's Reason
// is set by the Manager: ReasonJobFailed, or ReasonCancelled when the job
// was cancelled.
func (a *Assignment) Complete(ctx context.Context, result []byte, failure *JobError) error {
	return a.update(ctx, func(c *change) error {
		e, err := a.current()
		if err != nil {
			return err
		}
		if e.job.State != StateRunning {
			return fmt.Errorf("complete job %s: job is %s; acknowledge it first", e.job.ID, e.job.State)
		}
		a.complete(c, e, result, failure)
		return nil
	})
}

func (a *Assignment) complete(c *change, e *entry, result []byte, failure *JobError) {
	switch {
	case e.job.CancelRequested:
		msg := "cancelled by request"
		var code *int
		if failure != nil {
			msg += "; runner reported: " + failure.Message
			code = failure.ExitCode
		}
		c.finish(e.job.ID, result, &JobError{Reason: ReasonCancelled, Message: msg, ExitCode: code})
	case failure != nil:
		f := *failure
		f.Reason = ReasonJobFailed
		c.finish(e.job.ID, result, &f)
	default:
		c.finish(e.job.ID, result, nil)
	}
}

// Abandon records that the runner's connection to the job is gone. A
// job not yet acknowledged is queued again; a running job fails as runner
// lost.
func (a *Assignment) Abandon(cause error) {
	m := a.m
	m.mu.Lock()
	defer m.mu.Unlock()
	e, err := a.current()
	if err != nil {
		return
	}
	c := m.newChange()
	if e.job.State == StateWaiting {
		c.requeue(e.job.ID, a.attempt, fmt.Sprintf("runner %s left before acknowledging: %v", a.session.RunnerID, cause))
	} else {
		c.finish(e.job.ID, nil, &JobError{Reason: ReasonRunnerLost, Message: fmt.Sprintf("runner lost: runner %s disconnected: %v", a.session.RunnerID, cause)})
	}
	c.commitOrLog("abandon job " + e.job.ID)
}

// update applies a runner's report. It returns once the report is stored,
// except for the embedded launcher runner: it lives and dies with this
// process, and restart recovery runs its unfinished jobs again, so storing
// its reports need not hold up the launch.
func (a *Assignment) update(ctx context.Context, fn func(c *change) error) error {
	if !a.session.embedded {
		return a.m.update(ctx, fn)
	}
	_, err := a.m.updateNoWait(fn)
	return err
}

// requestCancel signals the runner to cancel the job. Called with m.mu held.
func (a *Assignment) requestCancel(reason string) {
	select {
	case <-a.cancel:
	default:
		a.cancelReason = reason
		close(a.cancel)
	}
}

// CancelReason returns why cancellation was requested.
func (a *Assignment) CancelReason() string {
	a.m.mu.Lock()
	defer a.m.mu.Unlock()
	return a.cancelReason
}
