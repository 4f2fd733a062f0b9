package runnerapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/runnerapi/runnerpb"
)

// MaxMessageSize is the largest runner API message the server accepts, in
// bytes. Job payloads and output batches must fit in it.
const MaxMessageSize = 4 << 20

// ServerOptions returns the grpc.ServerOption values the runner API needs,
// for hosts that create their grpc.Server for it.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageSize), grpc.MaxSendMsgSize(MaxMessageSize)}
}

// Config configures a Server.
type Config struct {
	// Logger receives the server's log records. Default: discard.
	Logger *slog.Logger
}

// Server implements the runner API on top of an ondemand.Manager.
type Server struct {
	runnerpb.UnimplementedRunnerServiceServer
	mgr    *ondemand.Manager
	logger *slog.Logger
}

// NewServer returns a runner API server that hands out the Manager's jobs.
func NewServer(mgr *ondemand.Manager, cfg Config) *Server {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Server{mgr: mgr, logger: logger.With("component", "runnerapi")}
}

// Register registers the service on a gRPC server.
func (s *Server) Register(reg grpc.ServiceRegistrar) {
	runnerpb.RegisterRunnerServiceServer(reg, s)
}

// JobStream implements runnerpb.RunnerServiceServer: it authenticates the
// runner, waits for a job the runner may take, sends it, and relays the
// runner's progress to the Manager until the job is complete.
func (s *Server) JobStream(stream runnerpb.RunnerService_JobStreamServer) error {
	ctx := stream.Context()
	claims, err := s.authenticate(ctx)
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	open := first.GetOpen()
	if open == nil {
		return status.Error(codes.InvalidArgument, "the first message of a job stream must be Open")
	}
	if open.GetRunnerId() != claims.RunnerID {
		s.logger.Warn("runner presented a token issued for another runner ID", "runner", open.GetRunnerId(), "token_runner", claims.RunnerID)
		return status.Errorf(codes.Unauthenticated, "the token was not issued for runner %q", open.GetRunnerId())
	}
	session := ondemand.RunnerSession{RunnerID: claims.RunnerID, Labels: open.GetLabels(), OnDemand: claims.OnDemand || open.GetOnDemand()}
	if claims.Labels != nil {
		// A token with labels fixes them: the runner cannot claim others.
		session.Labels = claims.Labels
	}
	logger := s.logger.With("runner", session.RunnerID)

	a, err := s.mgr.NextAssignment(ctx, session)
	switch {
	case errors.Is(err, ondemand.ErrRunnerSpent), errors.Is(err, ondemand.ErrUnknownRunner):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, ondemand.ErrClosed):
		return status.Error(codes.Unavailable, "the host is shutting down; retry later")
	case err != nil:
		return status.FromContextError(err).Err()
	}
	logger = logger.With("job", a.Job.ID)
	logger.Debug("job assigned")

	err = stream.Send(&runnerpb.JobStreamResponse{Event: &runnerpb.JobStreamResponse_Assignment_{Assignment: &runnerpb.JobStreamResponse_Assignment{
		Job:                 &runnerpb.Job{Id: a.Job.ID, Kind: a.Job.Kind, Payload: a.Job.Payload},
		HeartbeatIntervalMs: a.HeartbeatInterval.Milliseconds(),
	}}})
	if err != nil {
		a.Abandon(fmt.Errorf("send assignment: %w", err))
		return err
	}
	err = s.relay(ctx, stream, a)
	if err != nil {
		a.Abandon(err)
		logger.Info("job stream ended early", "error", err)
	}
	return err
}

func (s *Server) authenticate(ctx context.Context) (ondemand.RunnerClaims, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get("authorization")
	if len(values) != 1 {
		return ondemand.RunnerClaims{}, status.Error(codes.Unauthenticated, `missing runner token: send one "authorization: Bearer <token>" metadata entry`)
	}
	token, ok := strings.CutPrefix(values[0], "Bearer ")
	if !ok {
		return ondemand.RunnerClaims{}, status.Error(codes.Unauthenticated, `malformed authorization metadata: expected "Bearer <token>"`)
	}
	claims, err := s.mgr.AuthenticateRunner(token)
	if err != nil {
		s.logger.Warn("runner authentication failed", "error", err)
		return claims, status.Error(codes.Unauthenticated, err.Error())
	}
	return claims, nil
}

// relay passes the runner's messages to the Manager, and the Manager's
// cancellation to the runner, until the job is complete.
func (s *Server) relay(ctx context.Context, stream runnerpb.RunnerService_JobStreamServer, a *ondemand.Assignment) error {
	// recvDone ends the reading goroutine's send when relay has returned;
	// the goroutine itself ends when gRPC ends the stream after JobStream
	// returns.
	recvDone := make(chan struct{})
	defer close(recvDone)
	type received struct {
		msg *runnerpb.JobStreamRequest
		err error
	}
	messages := make(chan received)
	go func() {
		for {
			msg, err := stream.Recv()
			select {
			case messages <- received{msg, err}:
			case <-recvDone:
				return
			}
			if err != nil {
				return
			}
		}
	}()

	cancelRequested := a.CancelRequested()
	for {
		select {
		case <-cancelRequested:
			cancelRequested = nil
			err := stream.Send(&runnerpb.JobStreamResponse{Event: &runnerpb.JobStreamResponse_Cancel_{Cancel: &runnerpb.JobStreamResponse_Cancel{Reason: a.CancelReason()}}})
			if err != nil {
				return err
			}
		case <-a.Ended():
			return status.Errorf(codes.Aborted, "the host ended the assignment: %v", a.Err())
		case r := <-messages:
			if r.err == io.EOF {
				return status.Error(codes.InvalidArgument, "the runner closed the stream before completing its job")
			}
			if r.err != nil {
				return r.err
			}
			done, err := s.handle(ctx, a, r.msg)
			if err != nil || done {
				return err
			}
		}
	}
}

// handle applies one runner message. It reports done after Complete.
func (s *Server) handle(ctx context.Context, a *ondemand.Assignment, msg *runnerpb.JobStreamRequest) (done bool, err error) {
	switch ev := msg.GetEvent().(type) {
	case *runnerpb.JobStreamRequest_Ack_:
		err = a.Ack(ctx)
	case *runnerpb.JobStreamRequest_Nack_:
		err = a.Nack(ctx, ev.Nack.GetMessage())
		done = true
	case *runnerpb.JobStreamRequest_Heartbeat_:
		err = a.Heartbeat()
	case *runnerpb.JobStreamRequest_Output_:
		lines := make([]ondemand.OutputLine, 0, len(ev.Output.GetLines()))
		for _, l := range ev.Output.GetLines() {
			lines = append(lines, ondemand.OutputLine{Stream: streamName(l.GetStream()), Line: l.GetLine()})
		}
		err = a.Output(ctx, lines)
	case *runnerpb.JobStreamRequest_Complete_:
		var failure *ondemand.JobError
		if e := ev.Complete.GetError(); e != nil {
			failure = &ondemand.JobError{Message: e.GetMessage()}
			if e.ExitCode != nil {
				code := int(e.GetExitCode())
				failure.ExitCode = &code
			}
		}
		err = a.Complete(ctx, ev.Complete.GetResult(), failure)
		done = true
	case *runnerpb.JobStreamRequest_Open_:
		return false, status.Error(codes.InvalidArgument, "Open is only valid as the first message of a job stream")
	default:
		return false, status.Error(codes.InvalidArgument, "empty or unknown job stream message")
	}
	if err != nil {
		return false, toStatus(err)
	}
	return done, nil
}

func streamName(s runnerpb.Stream) string {
	if s == runnerpb.Stream_STREAM_STDERR {
		return "stderr"
	}
	return "stdout"
}

func toStatus(err error) error {
	switch {
	case errors.Is(err, ondemand.ErrAssignmentEnded):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, ondemand.ErrClosed):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.FailedPrecondition, err.Error())
}
