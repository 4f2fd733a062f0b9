package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/odrkit/odrkit/runnerapi/runnerpb"
)

// MaxErrorMessageBytes is the longest error message, in bytes, that a
// runner sends in Complete or Nack. The runner cuts longer messages at a
// rune boundary and marks the cut, because the host rejects them.
const MaxErrorMessageBytes = 16 << 10

// truncationMark ends an error message that was cut to MaxErrorMessageBytes.
const truncationMark = " ... (truncated)"

// truncateMessage cuts message to at most MaxErrorMessageBytes.
func truncateMessage(message string) string {
	if len(message) <= MaxErrorMessageBytes {
		return message
	}
	return message[:runeCut(message, MaxErrorMessageBytes-len(truncationMark))] + truncationMark
}

// streamResult describes how far one JobStream got.
type streamResult struct {
	// connected is set once Open was sent, which proves the host was
	// reachable.
	connected bool
	// assigned is set once an Assignment arrived. jobID and kind are then
	// the job's.
	assigned bool
	jobID    string
	kind     string
	// rejected is set when the runner rejected the Assignment with Nack.
	rejected bool
}

// hostCancelError is the cause of a job context that the host cancelled.
type hostCancelError struct {
	reason string
}

func (e *hostCancelError) Error() string {
	if e.reason == "" {
		return "job cancelled by the host"
	}
	return "job cancelled by the host: " + e.reason
}

// errHostClosedEarly is the cause of a job context whose stream the host
// closed before the job completed.
var errHostClosedEarly = errors.New("host closed the job stream before the job completed")

// takeJob opens one JobStream, waits for an assignment and runs the job. It
// returns a nil error when the job was delivered or rejected with Nack.
func (r *Runner) takeJob(ctx context.Context, client runnerpb.RunnerServiceClient, slot int) (streamResult, error) {
	var res streamResult

	// The stream's context does not end with ctx, so that a running job can
	// still report its completion during shutdown. Until a job is assigned,
	// stopWaiting cancels the stream as soon as ctx is done.
	streamCtx, cancelStream := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelStream()
	stopWaiting := context.AfterFunc(ctx, cancelStream)
	defer stopWaiting()

	stream, err := client.JobStream(streamCtx)
	if err != nil {
		return res, fmt.Errorf("open job stream: %w", err)
	}
	open := &runnerpb.JobStreamRequest_Open{
		RunnerId: r.cfg.RunnerID,
		Labels:   r.cfg.Labels,
		OnDemand: r.cfg.OnDemand,
	}
	if err := sendBeforeJob(stream, &runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Open_{Open: open}}); err != nil {
		return res, fmt.Errorf("send Open: %w", err)
	}
	res.connected = true
	r.logger.Debug("waiting for a job", "slot", slot)

	assignment, err := r.awaitAssignment(stream)
	if err != nil {
		return res, err
	}
	if !stopWaiting() {
		// ctx was done as the job arrived, and the stream is already
		// cancelled, so the host queues the job again.
		return res, fmt.Errorf("runner stopped as job %s arrived: %w", assignment.GetJob().GetId(), context.Cause(ctx))
	}

	job := &Job{
		ID:      assignment.GetJob().GetId(),
		Kind:    assignment.GetJob().GetKind(),
		Payload: assignment.GetJob().GetPayload(),
	}
	res.assigned, res.jobID, res.kind = true, job.ID, job.Kind
	r.logger.Info("job assigned", "slot", slot, "job_id", job.ID, "kind", job.Kind)

	handler, ok := r.handler(job.Kind)
	if !ok {
		res.rejected = true
		return res, r.rejectJob(stream, cancelStream, job)
	}
	return res, r.runJob(ctx, streamCtx, stream, cancelStream, assignment, handler, job)
}

// awaitAssignment reads until the host assigns a job.
func (r *Runner) awaitAssignment(stream runnerpb.RunnerService_JobStreamClient) (*runnerpb.JobStreamResponse_Assignment, error) {
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, errors.New("host closed the job stream before it assigned a job")
		}
		if err != nil {
			return nil, fmt.Errorf("wait for a job: %w", err)
		}
		switch event := msg.GetEvent().(type) {
		case *runnerpb.JobStreamResponse_Assignment_:
			return event.Assignment, nil
		case *runnerpb.JobStreamResponse_Cancel_:
			r.logger.Warn("ignoring Cancel that arrived before an assignment", "reason", event.Cancel.GetReason())
		default:
			r.logger.Warn("ignoring unknown message from the host", "message_type", fmt.Sprintf("%T", event))
		}
	}
}

// rejectJob rejects an assignment with Nack and waits for the host to close
// the stream.
func (r *Runner) rejectJob(stream runnerpb.RunnerService_JobStreamClient, cancelStream context.CancelFunc, job *Job) error {
	message := fmt.Sprintf("no handler registered for job kind %q", job.Kind)
	r.logger.Warn("rejecting job", "job_id", job.ID, "kind", job.Kind, "reason", message)
	nack := &runnerpb.JobStreamRequest_Nack{Message: truncateMessage(message)}
	if err := sendBeforeJob(stream, &runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Nack_{Nack: nack}}); err != nil {
		return fmt.Errorf("send Nack for job %s: %w", job.ID, err)
	}
	if err := stream.CloseSend(); err != nil {
		return fmt.Errorf("close the job stream of job %s: %w", job.ID, err)
	}
	timer := time.AfterFunc(closeTimeout, cancelStream)
	defer timer.Stop()
	for {
		_, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("wait for the host to close the job stream of rejected job %s: %w", job.ID, err)
		}
	}
}

// runJob acknowledges an assignment, runs the handler and reports its
// completion. ctx is Run's context and streamCtx the stream's. It returns nil when the host closed the stream after
// Complete, which means the job was delivered.
func (r *Runner) runJob(
	ctx, streamCtx context.Context,
	stream runnerpb.RunnerService_JobStreamClient,
	cancelStream context.CancelFunc,
	assignment *runnerpb.JobStreamResponse_Assignment,
	handler HandlerFunc,
	job *Job,
) error {
	log := r.logger.With("job_id", job.ID, "kind", job.Kind)
	ack := &runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Ack_{Ack: &runnerpb.JobStreamRequest_Ack{}}}
	if err := sendBeforeJob(stream, ack); err != nil {
		return fmt.Errorf("send Ack for job %s: %w", job.ID, err)
	}
	log.Info("job started")
	started := time.Now()

	// Derived from streamCtx, not stream.Context(), because gRPC cancels
	// the latter without a cause as soon as the stream ends.
	jobCtx, cancelJob := context.WithCancelCause(streamCtx)
	defer cancelJob(nil)
	stopShutdown := afterGrace(ctx, shutdownGrace,
		func() { cancelJob(fmt.Errorf("runner is stopping: %w", context.Cause(ctx))) },
		cancelStream)
	defer stopShutdown()

	var completeSent atomic.Bool
	recvDone := make(chan error, 1)
	go func() {
		recvDone <- r.receiveDuringJob(stream, log, cancelJob, &completeSent)
	}()

	heartbeat := time.Duration(assignment.GetHeartbeatIntervalMs()) * time.Millisecond
	if heartbeat <= 0 {
		heartbeat = defaultHeartbeatInterval
	}
	out := newOutput()
	s := &sender{stream: stream, out: out, heartbeat: heartbeat, completeSent: &completeSent}
	complete := make(chan *runnerpb.JobStreamRequest_Complete, 1)
	sendDone := make(chan error, 1)
	go func() {
		err := s.run(complete)
		if err != nil {
			cancelJob(fmt.Errorf("send to the host failed: %w", err))
		}
		sendDone <- err
	}()

	result, jobErr := r.callHandler(jobCtx, log, handler, job, out)
	complete <- completion(jobCtx, result, jobErr)
	if err := <-sendDone; err != nil {
		cancelStream()
		recvErr := <-recvDone
		if errors.Is(err, io.EOF) && recvErr != nil && !errors.Is(recvErr, io.EOF) {
			// Send reports a broken stream only as io.EOF, so the
			// status comes from Recv.
			err = recvErr
		}
		log.Warn("job completed but its completion was not delivered", "error", err)
		return fmt.Errorf("send to the host during job %s: %w", job.ID, err)
	}

	// Complete is sent. The host closes the stream once it has recorded it.
	timer := time.AfterFunc(closeTimeout, cancelStream)
	recvErr := <-recvDone
	timer.Stop()
	if !errors.Is(recvErr, io.EOF) {
		log.Warn("job completed but the host did not confirm its completion", "error", recvErr)
		return fmt.Errorf("wait for the host to close the job stream of job %s: %w", job.ID, recvErr)
	}

	duration := time.Since(started)
	if jobErr != nil {
		log.Warn("job failed", "duration", duration, "error", jobErr)
	} else {
		log.Info("job succeeded", "duration", duration)
	}
	return nil
}

// receiveDuringJob reads messages from the host until the stream ends and
// returns the error that ended it: io.EOF when the host closed it. A Cancel
// cancels the job's context, and so does the end of the stream before
// Complete was sent.
func (r *Runner) receiveDuringJob(
	stream runnerpb.RunnerService_JobStreamClient,
	log *slog.Logger,
	cancelJob context.CancelCauseFunc,
	completeSent *atomic.Bool,
) error {
	for {
		msg, err := stream.Recv()
		if err != nil {
			switch {
			case completeSent.Load():
			case errors.Is(err, io.EOF):
				err = errHostClosedEarly
				cancelJob(err)
			default:
				cancelJob(fmt.Errorf("job stream broke: %w", err))
			}
			return err
		}
		switch event := msg.GetEvent().(type) {
		case *runnerpb.JobStreamResponse_Cancel_:
			if !completeSent.Load() {
				log.Info("host cancelled the job", "reason", event.Cancel.GetReason())
				cancelJob(&hostCancelError{reason: event.Cancel.GetReason()})
			}
		case *runnerpb.JobStreamResponse_Assignment_:
			log.Warn("ignoring a second assignment on a job stream", "second_job_id", event.Assignment.GetJob().GetId())
		default:
			log.Warn("ignoring unknown message from the host", "message_type", fmt.Sprintf("%T", event))
		}
	}
}

// callHandler runs h and turns a panic into a job error.
func (r *Runner) callHandler(ctx context.Context, log *slog.Logger, h HandlerFunc, job *Job, out *Output) (result []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("job handler panicked", "panic", p, "stack", string(debug.Stack()))
			result, err = nil, fmt.Errorf("job handler panicked: %v", p)
		}
	}()
	return h(ctx, job, out)
}

// completion builds the Complete message for a handler's return values.
func completion(jobCtx context.Context, result []byte, jobErr error) *runnerpb.JobStreamRequest_Complete {
	if jobErr == nil {
		return &runnerpb.JobStreamRequest_Complete{Result: result}
	}

	message := jobErr.Error()
	// A handler that returns ctx.Err() reports only "context canceled", so
	// the message starts with the cause, which names who cancelled the job.
	cause := context.Cause(jobCtx)
	if cause != nil && errors.Is(jobErr, context.Canceled) && !errors.Is(context.Canceled, cause) {
		switch {
		case message == context.Canceled.Error():
			message = cause.Error()
		case !strings.Contains(message, cause.Error()):
			message = cause.Error() + ": " + message
		}
	}
	jobError := &runnerpb.JobError{Message: truncateMessage(message)}
	var exitErr *ExitError
	if errors.As(jobErr, &exitErr) {
		code := int32(exitErr.Code) //nolint:gosec // Exit codes fit in 32 bits.
		jobError.ExitCode = &code
	}
	return &runnerpb.JobStreamRequest_Complete{Error: jobError}
}

// sendBeforeJob sends msg on a stream that has no receiving goroutine yet.
// Send reports a broken stream only as io.EOF, so it reads the status from
// Recv in that case.
func sendBeforeJob(stream runnerpb.RunnerService_JobStreamClient, msg *runnerpb.JobStreamRequest) error {
	err := stream.Send(msg)
	if !errors.Is(err, io.EOF) {
		return err
	}
	if _, recvErr := stream.Recv(); recvErr != nil && !errors.Is(recvErr, io.EOF) {
		return recvErr
	}
	return errors.New("host closed the job stream")
}

// afterGrace calls now as soon as ctx is done, and later grace after that.
// The returned stop prevents the calls that have not started yet and waits
// for those that have.
func afterGrace(ctx context.Context, grace time.Duration, now, later func()) (stop func()) {
	var (
		mu        sync.Mutex
		stopped   bool
		timer     *time.Timer
		nowDone   = make(chan struct{})
		laterDone = make(chan struct{})
	)
	stopAfter := context.AfterFunc(ctx, func() {
		defer close(nowDone)
		now()
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			timer = time.AfterFunc(grace, func() {
				defer close(laterDone)
				later()
			})
		}
	})
	return func() {
		if !stopAfter() {
			<-nowDone
		}
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		if timer != nil && !timer.Stop() {
			<-laterDone
		}
	}
}

// sender is the only goroutine that sends on a job stream while the job
// runs, because gRPC allows one sender at a time.
type sender struct {
	stream       runnerpb.RunnerService_JobStreamClient
	out          *Output
	heartbeat    time.Duration
	completeSent *atomic.Bool
}

// run sends heartbeats and batches of output until it receives the
// completion, which it sends after the remaining output. It then closes the
// sending side of the stream. It closes out when it returns, so that later
// lines are dropped instead of blocking the handler.
func (s *sender) run(complete <-chan *runnerpb.JobStreamRequest_Complete) error {
	defer s.out.close()
	heartbeat := time.NewTicker(s.heartbeat)
	defer heartbeat.Stop()
	var (
		flushTimer *time.Timer
		flushC     <-chan time.Time
	)
	defer func() {
		if flushTimer != nil {
			flushTimer.Stop()
		}
	}()

	for {
		select {
		case <-s.out.ready:
			if s.out.pendingCount() >= maxBatchLines {
				if err := s.flush(); err != nil {
					return err
				}
			} else if flushC == nil {
				flushTimer = time.NewTimer(flushDelay)
				flushC = flushTimer.C
			}
		case <-flushC:
			flushC = nil
			if err := s.flush(); err != nil {
				return err
			}
		case <-heartbeat.C:
			msg := &runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Heartbeat_{Heartbeat: &runnerpb.JobStreamRequest_Heartbeat{}}}
			if err := s.stream.Send(msg); err != nil {
				return fmt.Errorf("send Heartbeat: %w", err)
			}
		case c := <-complete:
			if err := s.flush(); err != nil {
				return err
			}
			s.completeSent.Store(true)
			if err := s.stream.Send(&runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Complete_{Complete: c}}); err != nil {
				return fmt.Errorf("send Complete: %w", err)
			}
			if err := s.stream.CloseSend(); err != nil {
				return fmt.Errorf("close the sending side of the job stream: %w", err)
			}
			return nil
		}
	}
}

// flush sends every pending output line, in batches.
func (s *sender) flush() error {
	for {
		batch := s.out.takeBatch()
		if batch == nil {
			return nil
		}
		msg := &runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Output_{Output: &runnerpb.JobStreamRequest_Output{Lines: batch}}}
		if err := s.stream.Send(msg); err != nil {
			return fmt.Errorf("send Output: %w", err)
		}
	}
}
