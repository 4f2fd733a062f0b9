package runnerapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/runnerapi/runner"
	"github.com/odrkit/odrkit/runnerapi/runnerpb"
)

// Limits on what a runner may send. The server ends a stream that breaks
// one: a message over MaxMessageSize, an Output with too many lines, a line
// or an error message that is too long get codes.ResourceExhausted, and an
// invalid runner ID or invalid labels get codes.InvalidArgument.
const (
	// MaxMessageSize is the largest runner API message the server accepts
	// and sends, in bytes. Job payloads, results and output batches must
	// fit in it.
	MaxMessageSize = 4 << 20
	// MaxRunnerIDBytes is the longest runner ID an Open message may carry.
	MaxRunnerIDBytes = 256
	// MaxLabels is the largest number of labels an Open message may carry.
	MaxLabels = 64
	// MaxLabelBytes is the longest label key or value.
	MaxLabelBytes = 256
	// MaxOutputLines is the largest number of lines in one Output message.
	// The runner library sends at most 100.
	MaxOutputLines = 1000
	// MaxOutputLineBytes is the longest output line. It is twice
	// runner.MaxLineBytes, the longest line the runner library sends.
	MaxOutputLineBytes = 2 * runner.MaxLineBytes
	// MaxErrorMessageBytes is the longest message of a Nack or of a
	// Complete's error. The runner library cuts its messages to this size.
	MaxErrorMessageBytes = runner.MaxErrorMessageBytes
)

// ServerOptions returns the grpc.ServerOption values the runner API needs,
// for hosts that create their grpc.Server for it: the message size limit
// MaxMessageSize in both directions. Add grpc.Creds(ServerTLS(...)) for TLS.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageSize), grpc.MaxSendMsgSize(MaxMessageSize)}
}

// ServerTLS returns TLS credentials for the host's grpc.Server, from PEM
// files with the server's certificate chain and private key. When
// clientCAFile is not empty, every runner must present a client
// certificate signed by a CA in that PEM file (mutual TLS), and the
// handshake fails without one. The files are read once, so a renewed
// certificate takes effect when the grpc.Server is created again.
func ServerTLS(certFile, keyFile, clientCAFile string) (credentials.TransportCredentials, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load server certificate %q with key %q: %w: pass a PEM certificate chain and its matching private key", certFile, keyFile, err)
	}
	config := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
	}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("read client CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client CA file %q contains no PEM certificate: pass a PEM file with the CA certificates that sign the runners' client certificates", clientCAFile)
		}
		config.ClientCAs = pool
		config.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return credentials.NewTLS(config), nil
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
// runner's progress to the Manager until the job is complete. A message
// that breaks the protocol or a limit ends the stream with
// codes.InvalidArgument or codes.ResourceExhausted. A job assigned to the
// stream is then queued again if the runner had not acknowledged it, and
// fails as runner lost if it had.
func (s *Server) JobStream(stream runnerpb.RunnerService_JobStreamServer) error {
	ctx := stream.Context()
	claims, err := s.authenticate(ctx)
	if err != nil {
		return err
	}
	// Bytes that do not decode as a JobStreamRequest end the stream in
	// Recv: gRPC itself sends codes.Internal to the runner.
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	session, err := s.openSession(ctx, claims, first)
	if err != nil {
		return err
	}
	logger := s.logger.With("runner", session.RunnerID)

	// One goroutine reads the stream from here on, also while the stream
	// waits for a job, so that a message sent too early ends the wait.
	// It stops when JobStream has returned and gRPC has ended the stream.
	done := make(chan struct{})
	defer close(done)
	messages := receive(stream, done)

	a, err := s.awaitAssignment(ctx, session, messages)
	if err != nil {
		return err
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
	err = s.relay(ctx, stream, a, messages)
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
		// The error never contains the token (ondemand.ErrInvalidToken).
		s.logger.Warn("runner authentication failed", "error", err, "peer", peerAddr(ctx))
		return claims, status.Error(codes.Unauthenticated, err.Error())
	}
	return claims, nil
}

// peerAddr returns the network address of the stream's client, or "" when
// gRPC does not know it.
func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// openSession checks the stream's first message against the limits and the
// token's claims, and returns the session the runner may take jobs as.
func (s *Server) openSession(ctx context.Context, claims ondemand.RunnerClaims, first *runnerpb.JobStreamRequest) (ondemand.RunnerSession, error) {
	open := first.GetOpen()
	if open == nil {
		return ondemand.RunnerSession{}, status.Errorf(codes.InvalidArgument, "the first message of a job stream must be Open, not %s", messageName(first))
	}
	if err := checkOpen(open); err != nil {
		return ondemand.RunnerSession{}, err
	}
	if open.GetRunnerId() != claims.RunnerID {
		s.logger.Warn("runner presented a token issued for another runner ID", "runner", open.GetRunnerId(), "token_runner", claims.RunnerID, "peer", peerAddr(ctx))
		return ondemand.RunnerSession{}, status.Errorf(codes.Unauthenticated, "the token was not issued for runner %q", open.GetRunnerId())
	}
	session := ondemand.RunnerSession{RunnerID: claims.RunnerID, Labels: open.GetLabels(), OnDemand: claims.OnDemand || open.GetOnDemand()}
	if claims.Labels != nil {
		// A token with labels fixes them: the runner cannot claim others.
		session.Labels = claims.Labels
	}
	return session, nil
}

// received is one result of stream.Recv.
type received struct {
	msg *runnerpb.JobStreamRequest
	err error
}

// receive starts the goroutine that reads the stream and returns the
// channel it delivers to. The goroutine returns after the first error, or
// once done is closed and Recv has returned.
func receive(stream runnerpb.RunnerService_JobStreamServer, done <-chan struct{}) <-chan received {
	messages := make(chan received)
	go func() {
		for {
			msg, err := stream.Recv()
			select {
			case messages <- received{msg, err}:
			case <-done:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return messages
}

// awaitAssignment waits for a job the session may take. A message from
// the runner before the assignment, or the end of its side of the stream,
// ends the wait with an error, and a job assigned meanwhile is queued
// again.
func (s *Server) awaitAssignment(ctx context.Context, session ondemand.RunnerSession, messages <-chan received) (*ondemand.Assignment, error) {
	waitCtx, stopWaiting := context.WithCancel(ctx)
	defer stopWaiting()
	early := make(chan received, 1)
	stopWatching := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		select {
		case r := <-messages:
			early <- r
			stopWaiting()
		case <-stopWatching:
		}
	}()

	a, err := s.mgr.NextAssignment(waitCtx, session)
	close(stopWatching)
	<-watchDone

	select {
	case r := <-early:
		// NextAssignment ended because of the early message, or it
		// assigned a job that the runner cannot have seen yet.
		if a != nil || ctx.Err() == nil {
			earlyErr := earlyMessageError(r)
			if a != nil {
				a.Abandon(earlyErr)
			}
			return nil, earlyErr
		}
	default:
	}
	switch {
	case err == nil:
		return a, nil
	case errors.Is(err, ondemand.ErrRunnerSpent), errors.Is(err, ondemand.ErrUnknownRunner):
		return nil, status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, ondemand.ErrClosed):
		return nil, status.Error(codes.Unavailable, "the host is shutting down; retry later")
	default:
		return nil, status.FromContextError(err).Err()
	}
}

// earlyMessageError is the status for a message or the end of the
// runner's side of the stream before the host assigned a job.
func earlyMessageError(r received) error {
	switch {
	case errors.Is(r.err, io.EOF):
		return status.Error(codes.InvalidArgument, "the runner closed its side of the job stream before a job was assigned: keep it open until the job is complete")
	case r.err != nil:
		return r.err
	}
	return status.Errorf(codes.InvalidArgument, "%s arrived before the host assigned a job: send nothing after Open until the Assignment arrives", messageName(r.msg))
}

// relay passes the runner's messages to the Manager, and the Manager's
// cancellation to the runner, until the job is complete.
func (s *Server) relay(ctx context.Context, stream runnerpb.RunnerService_JobStreamServer, a *ondemand.Assignment, messages <-chan received) error {
	acked := false
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
			if err := checkMessage(r.msg, acked); err != nil {
				return err
			}
			done, err := s.handle(ctx, a, r.msg)
			if err != nil || done {
				return err
			}
			if r.msg.GetAck() != nil {
				acked = true
			}
		}
	}
}

// messageName names the event of msg for error messages.
func messageName(msg *runnerpb.JobStreamRequest) string {
	switch msg.GetEvent().(type) {
	case *runnerpb.JobStreamRequest_Open_:
		return "Open"
	case *runnerpb.JobStreamRequest_Ack_:
		return "Ack"
	case *runnerpb.JobStreamRequest_Nack_:
		return "Nack"
	case *runnerpb.JobStreamRequest_Heartbeat_:
		return "Heartbeat"
	case *runnerpb.JobStreamRequest_Output_:
		return "Output"
	case *runnerpb.JobStreamRequest_Complete_:
		return "Complete"
	default:
		return "an empty or unknown message"
	}
}

// checkOpen returns codes.InvalidArgument when Open's runner ID or labels
// break a limit.
func checkOpen(open *runnerpb.JobStreamRequest_Open) error {
	id := open.GetRunnerId()
	switch {
	case id == "":
		return status.Error(codes.InvalidArgument, "Open has an empty runner_id: set it to the runner ID the token was issued for")
	case len(id) > MaxRunnerIDBytes:
		return status.Errorf(codes.InvalidArgument, "Open has a runner_id of %d bytes, more than the limit of %d: use a shorter runner ID", len(id), MaxRunnerIDBytes)
	}
	labels := open.GetLabels()
	if len(labels) > MaxLabels {
		return status.Errorf(codes.InvalidArgument, "Open has %d labels, more than the limit of %d: send fewer labels", len(labels), MaxLabels)
	}
	for key, value := range labels {
		switch {
		case key == "":
			return status.Error(codes.InvalidArgument, "Open has a label with an empty key: give every label a non-empty key")
		case len(key) > MaxLabelBytes:
			return status.Errorf(codes.InvalidArgument, "Open has a label key of %d bytes, more than the limit of %d: use shorter label keys", len(key), MaxLabelBytes)
		case len(value) > MaxLabelBytes:
			return status.Errorf(codes.InvalidArgument, "Open has a value of %d bytes for label %q, more than the limit of %d: use shorter label values", len(value), key, MaxLabelBytes)
		}
	}
	return nil
}

// checkMessage returns the status for a message that arrived after the
// assignment and breaks the protocol (codes.InvalidArgument) or a limit
// (codes.ResourceExhausted). acked reports whether the runner has sent Ack.
func checkMessage(msg *runnerpb.JobStreamRequest, acked bool) error {
	name := messageName(msg)
	switch ev := msg.GetEvent().(type) {
	case *runnerpb.JobStreamRequest_Open_:
		return status.Error(codes.InvalidArgument, "Open is only valid as the first message of a job stream")
	case *runnerpb.JobStreamRequest_Ack_:
		if acked {
			return status.Error(codes.InvalidArgument, "Ack arrived a second time: acknowledge an assignment once")
		}
	case *runnerpb.JobStreamRequest_Nack_:
		if acked {
			return status.Error(codes.InvalidArgument, "Nack arrived after Ack: end a job that was acknowledged with Complete")
		}
		return checkErrorMessage("Nack message", ev.Nack.GetMessage())
	case *runnerpb.JobStreamRequest_Heartbeat_, *runnerpb.JobStreamRequest_Output_, *runnerpb.JobStreamRequest_Complete_:
		if !acked {
			return status.Errorf(codes.InvalidArgument, "%s arrived before Ack: acknowledge the assignment first", name)
		}
		if out := msg.GetOutput(); out != nil {
			return checkOutput(out)
		}
		if e := msg.GetComplete().GetError(); e != nil {
			return checkErrorMessage("Complete error message", e.GetMessage())
		}
	default:
		return status.Error(codes.InvalidArgument, "empty or unknown job stream message: set one of open, ack, nack, output, heartbeat or complete")
	}
	return nil
}

// checkOutput returns the status for an Output that breaks a limit or
// names an unknown stream.
func checkOutput(out *runnerpb.JobStreamRequest_Output) error {
	lines := out.GetLines()
	if len(lines) > MaxOutputLines {
		return status.Errorf(codes.ResourceExhausted, "Output has %d lines, more than the limit of %d: send at most %d lines per Output", len(lines), MaxOutputLines, MaxOutputLines)
	}
	for i, l := range lines {
		if n := len(l.GetLine()); n > MaxOutputLineBytes {
			return status.Errorf(codes.ResourceExhausted, "output line %d is %d bytes, more than the limit of %d: split long lines", i+1, n, MaxOutputLineBytes)
		}
		switch l.GetStream() {
		case runnerpb.Stream_STREAM_UNSPECIFIED, runnerpb.Stream_STREAM_STDOUT, runnerpb.Stream_STREAM_STDERR:
		default:
			return status.Errorf(codes.InvalidArgument, "output line %d names unknown stream %d: use STREAM_STDOUT or STREAM_STDERR", i+1, l.GetStream())
		}
	}
	return nil
}

// checkErrorMessage returns codes.ResourceExhausted when an error message
// is longer than MaxErrorMessageBytes.
func checkErrorMessage(field, message string) error {
	if len(message) > MaxErrorMessageBytes {
		return status.Errorf(codes.ResourceExhausted, "%s is %d bytes, more than the limit of %d: shorten it", field, len(message), MaxErrorMessageBytes)
	}
	return nil
}

// handle applies one runner message that checkMessage accepted. It reports
// done after Nack and Complete.
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
	default:
		return false, status.Errorf(codes.InvalidArgument, "%s is not valid here", messageName(msg))
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
