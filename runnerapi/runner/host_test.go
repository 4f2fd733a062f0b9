package runner

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/odrkit/odrkit/runnerapi/runnerpb"
)

const (
	testRunnerID = "runner-1"
	testToken    = "s3cret-token-value"
	// testTimeout bounds every wait in these tests, so that a bug fails a
	// test instead of hanging it.
	testTimeout = 10 * time.Second
)

// scriptedJob is a job the scriptedHost hands out, with what the host does
// while it runs.
type scriptedJob struct {
	id, kind    string
	payload     []byte
	heartbeatMS int64
	// cancelReason, when set, makes the host send Cancel right after Ack.
	cancelReason string
	// abortAfterAck makes the host end the stream with codes.Aborted right
	// after Ack, as when it gives the job up.
	abortAfterAck bool
}

// streamRecord is what the scriptedHost saw on one JobStream call.
type streamRecord struct {
	authorization []string
	open          *runnerpb.JobStreamRequest_Open
	jobID         string
	// requests are the messages after Open, in the order they arrived.
	requests []*runnerpb.JobStreamRequest
}

// scriptedHost is a test double of the host's runner API. It hands out the
// jobs sent to its jobs channel, one per stream, and records what the
// runner sent. A stream ends after Complete or Nack, as on the real host.
type scriptedHost struct {
	runnerpb.UnimplementedRunnerServiceServer

	jobs chan scriptedJob
	// rejectCode, when not OK, ends every stream with this status.
	rejectCode codes.Code
	// unavailableStreams is the number of first streams that end with
	// codes.Unavailable, as when the host is restarting.
	unavailableStreams int
	// finished receives each stream's record after Complete or Nack.
	finished chan *streamRecord
	// heartbeats receives the job ID of every Heartbeat.
	heartbeats chan string

	mu      sync.Mutex
	streams int
}

func newScriptedHost() *scriptedHost {
	return &scriptedHost{
		jobs:       make(chan scriptedJob, 10),
		finished:   make(chan *streamRecord, 10),
		heartbeats: make(chan string, 1000),
	}
}

func (h *scriptedHost) streamCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.streams
}

// JobStream implements runnerpb.RunnerServiceServer.
func (h *scriptedHost) JobStream(stream runnerpb.RunnerService_JobStreamServer) error {
	h.mu.Lock()
	h.streams++
	n := h.streams
	h.mu.Unlock()

	md, _ := metadata.FromIncomingContext(stream.Context())
	rec := &streamRecord{authorization: md.Get("authorization")}
	if h.rejectCode != codes.OK {
		return status.Error(h.rejectCode, "the token is not valid for this runner ID")
	}
	if n <= h.unavailableStreams {
		return status.Error(codes.Unavailable, "the host is restarting")
	}

	first, err := stream.Recv()
	if err != nil {
		return err
	}
	rec.open = first.GetOpen()
	if rec.open == nil {
		return status.Error(codes.InvalidArgument, "first message is not Open")
	}

	var job scriptedJob
	select {
	case job = <-h.jobs:
	case <-stream.Context().Done():
		return status.FromContextError(stream.Context().Err()).Err()
	}
	rec.jobID = job.id
	err = stream.Send(&runnerpb.JobStreamResponse{Event: &runnerpb.JobStreamResponse_Assignment_{Assignment: &runnerpb.JobStreamResponse_Assignment{
		Job:                 &runnerpb.Job{Id: job.id, Kind: job.kind, Payload: job.payload},
		HeartbeatIntervalMs: job.heartbeatMS,
	}}})
	if err != nil {
		return err
	}

	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return status.Error(codes.InvalidArgument, "runner closed the stream before Complete")
		}
		if err != nil {
			return err
		}
		rec.requests = append(rec.requests, msg)
		switch msg.GetEvent().(type) {
		case *runnerpb.JobStreamRequest_Ack_:
			if job.abortAfterAck {
				return status.Error(codes.Aborted, "the host ended the assignment")
			}
			if job.cancelReason != "" {
				cancel := &runnerpb.JobStreamResponse_Cancel{Reason: job.cancelReason}
				if err := stream.Send(&runnerpb.JobStreamResponse{Event: &runnerpb.JobStreamResponse_Cancel_{Cancel: cancel}}); err != nil {
					return err
				}
			}
		case *runnerpb.JobStreamRequest_Heartbeat_:
			select {
			case h.heartbeats <- job.id:
			default:
			}
		case *runnerpb.JobStreamRequest_Complete_, *runnerpb.JobStreamRequest_Nack_:
			h.finished <- rec
			return nil
		}
	}
}

// awaitFinished returns the record of the next stream that ended with
// Complete or Nack.
func (h *scriptedHost) awaitFinished(t *testing.T) *streamRecord {
	t.Helper()
	select {
	case rec := <-h.finished:
		return rec
	case <-time.After(testTimeout):
		t.Fatal("timed out waiting for the runner to complete a job")
		return nil
	}
}

// serveHost serves h on a loopback port until the test ends and returns
// its address.
func serveHost(t *testing.T, h *scriptedHost) string {
	t.Helper()
	return serveHostAt(t, h, "127.0.0.1:0")
}

// serveHostAt serves h on addr, with the given server options such as TLS
// credentials, until the test ends and returns the address it listens on.
func serveHostAt(t *testing.T, h *scriptedHost, addr string, opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	srv := grpc.NewServer(opts...)
	runnerpb.RegisterRunnerServiceServer(srv, h)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return lis.Addr().String()
}

// unusedAddr returns a loopback address on which nothing listens.
func unusedAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	return addr
}

// syncBuffer is a bytes.Buffer that is safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testConfig returns an on-demand Config for addr whose logs go to logs.
func testConfig(addr string, logs io.Writer) Config {
	return Config{
		ServerAddr: addr,
		RunnerID:   testRunnerID,
		Token:      testToken,
		Labels:     map[string]string{"zone": "test"},
		OnDemand:   true,
		Logger:     slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// startRunner runs r in a goroutine and returns the function that cancels
// Run's context and a channel that receives Run's error. When the test ends,
// it cancels Run and waits for it to return.
func startRunner(t *testing.T, r *Runner) (context.CancelFunc, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		done <- r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-stopped:
		case <-time.After(testTimeout):
			t.Error("Run did not return after its context was cancelled")
		}
	})
	return cancel, done
}

// awaitRun waits for the error of a Run started by startRunner.
func awaitRun(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(testTimeout):
		t.Fatal("timed out waiting for Run to return")
		return nil
	}
}
