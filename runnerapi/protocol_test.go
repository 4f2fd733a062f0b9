package runnerapi_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/runnerapi"
	"github.com/odrkit/odrkit/runnerapi/runner"
	"github.com/odrkit/odrkit/runnerapi/runnerpb"
)

// rawCodec sends and receives message bytes as they are, so that tests can
// send bytes that are not a valid JobStreamRequest. It keeps the name
// "proto", so the server decodes them with its protobuf codec.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = bytes.Clone(data)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// frameStream is a job stream that sends frames of raw bytes.
type frameStream struct {
	grpc.ClientStream
}

// dialRaw returns a client connection to addr that the test closes.
func dialRaw(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// openRaw starts a JobStream call with the given authorization metadata
// entries.
func openRaw(ctx context.Context, conn *grpc.ClientConn, authorization ...string) (*frameStream, error) {
	for _, a := range authorization {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", a)
	}
	desc := &runnerpb.RunnerService_ServiceDesc.Streams[0]
	s, err := conn.NewStream(ctx, desc, runnerpb.RunnerService_JobStream_FullMethodName, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return nil, err
	}
	return &frameStream{s}, nil
}

// sendBytes sends one frame. An io.EOF means the server has ended the
// stream, and the status comes from recv.
func (s *frameStream) sendBytes(frame []byte) error {
	err := s.SendMsg(&frame)
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

func (s *frameStream) send(msg *runnerpb.JobStreamRequest) error {
	frame, err := proto.Marshal(msg)
	if err != nil {
		return err
	}
	return s.sendBytes(frame)
}

func (s *frameStream) recv() (*runnerpb.JobStreamResponse, error) {
	var frame []byte
	if err := s.RecvMsg(&frame); err != nil {
		return nil, err
	}
	resp := &runnerpb.JobStreamResponse{}
	if err := proto.Unmarshal(frame, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// recvEnd reads until the stream ends and returns the status error, or nil
// when the server closed the stream with OK.
func (s *frameStream) recvEnd() error {
	for {
		_, err := s.recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func openMsg(runnerID string, labels map[string]string) *runnerpb.JobStreamRequest {
	return &runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Open_{Open: &runnerpb.JobStreamRequest_Open{RunnerId: runnerID, Labels: labels}}}
}

func ackMsg() *runnerpb.JobStreamRequest {
	return &runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Ack_{Ack: &runnerpb.JobStreamRequest_Ack{}}}
}

func nackMsg(message string) *runnerpb.JobStreamRequest {
	return &runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Nack_{Nack: &runnerpb.JobStreamRequest_Nack{Message: message}}}
}

func heartbeatMsg() *runnerpb.JobStreamRequest {
	return &runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Heartbeat_{Heartbeat: &runnerpb.JobStreamRequest_Heartbeat{}}}
}

func outputMsg(stream runnerpb.Stream, lines ...string) *runnerpb.JobStreamRequest {
	out := &runnerpb.JobStreamRequest_Output{}
	for _, l := range lines {
		out.Lines = append(out.Lines, &runnerpb.OutputLine{Stream: stream, Line: l})
	}
	return &runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Output_{Output: out}}
}

func completeMsg(errMessage string) *runnerpb.JobStreamRequest {
	c := &runnerpb.JobStreamRequest_Complete{Result: []byte("ok")}
	if errMessage != "" {
		c.Error = &runnerpb.JobError{Message: errMessage}
	}
	return &runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Complete_{Complete: c}}
}

// heldJob submits a job held for a new runner ID and returns the job, the
// runner ID and a token for it.
func heldJob(t *testing.T, h *testHost) (*ondemand.Job, string, string) {
	t.Helper()
	runnerID := fmt.Sprintf("static-%d", time.Now().UnixNano())
	job, err := h.mgr.Submit(t.Context(), ondemand.JobSpec{Kind: kindLines, Target: &ondemand.Target{RunnerID: runnerID}})
	require.NoError(t, err)
	token, err := h.mgr.IssueRunnerToken(runnerID, nil, time.Minute)
	require.NoError(t, err)
	return job, runnerID, token
}

// forgeSignature returns token with one character of its signature
// changed. It changes a character in the middle, because the last one
// carries unused bits that a base64 decoder may ignore.
func forgeSignature(token string) string {
	i := len(token) - 10
	replacement := byte('A')
	if token[i] == 'A' {
		replacement = 'B'
	}
	return token[:i] + string(replacement) + token[i+1:]
}

// manyLines returns n output lines.
func manyLines(n int) []string {
	lines := make([]string, n)
	for i := range lines {
		lines[i] = "line"
	}
	return lines
}

func TestJobStreamRejectsBadMessages(t *testing.T) {
	tooLong := strings.Repeat("x", runnerapi.MaxErrorMessageBytes+1)
	tests := []struct {
		name string
		// messages are sent after the assignment arrived.
		messages []*runnerpb.JobStreamRequest
		// frame, when set, is sent after messages as raw bytes.
		frame    []byte
		wantCode codes.Code
		wantText string
		// wantState is the job's state after the stream ended.
		wantState ondemand.State
	}{
		{
			name:      "valid sequence",
			messages:  []*runnerpb.JobStreamRequest{ackMsg(), outputMsg(runnerpb.Stream_STREAM_STDOUT, "a"), heartbeatMsg(), completeMsg("")},
			wantCode:  codes.OK,
			wantState: ondemand.StateSuccess,
		},
		{
			name:      "second Open",
			messages:  []*runnerpb.JobStreamRequest{openMsg("x", nil)},
			wantCode:  codes.InvalidArgument,
			wantText:  "Open is only valid as the first message",
			wantState: ondemand.StateQueued,
		},
		{
			name:      "Ack twice",
			messages:  []*runnerpb.JobStreamRequest{ackMsg(), ackMsg()},
			wantCode:  codes.InvalidArgument,
			wantText:  "Ack arrived a second time",
			wantState: ondemand.StateError,
		},
		{
			name:      "Output before Ack",
			messages:  []*runnerpb.JobStreamRequest{outputMsg(runnerpb.Stream_STREAM_STDOUT, "early")},
			wantCode:  codes.InvalidArgument,
			wantText:  "Output arrived before Ack",
			wantState: ondemand.StateQueued,
		},
		{
			name:      "Complete before Ack",
			messages:  []*runnerpb.JobStreamRequest{completeMsg("")},
			wantCode:  codes.InvalidArgument,
			wantText:  "Complete arrived before Ack",
			wantState: ondemand.StateQueued,
		},
		{
			name:      "Heartbeat before Ack",
			messages:  []*runnerpb.JobStreamRequest{heartbeatMsg()},
			wantCode:  codes.InvalidArgument,
			wantText:  "Heartbeat arrived before Ack",
			wantState: ondemand.StateQueued,
		},
		{
			name:      "Nack after Ack",
			messages:  []*runnerpb.JobStreamRequest{ackMsg(), nackMsg("changed my mind")},
			wantCode:  codes.InvalidArgument,
			wantText:  "Nack arrived after Ack",
			wantState: ondemand.StateError,
		},
		{
			name:      "empty event",
			messages:  []*runnerpb.JobStreamRequest{ackMsg(), {}},
			wantCode:  codes.InvalidArgument,
			wantText:  "empty or unknown job stream message",
			wantState: ondemand.StateError,
		},
		{
			name:      "unknown event field",
			messages:  []*runnerpb.JobStreamRequest{ackMsg()},
			frame:     []byte{0x3a, 0x00}, // field 7, an empty message: no such oneof case
			wantCode:  codes.InvalidArgument,
			wantText:  "empty or unknown job stream message",
			wantState: ondemand.StateError,
		},
		{
			// gRPC rejects bytes that do not decode before the service
			// receives them, and sends codes.Internal itself.
			name:      "malformed bytes",
			messages:  []*runnerpb.JobStreamRequest{ackMsg()},
			frame:     []byte{0x22, 0xff, 0xff}, // field 4 with a length past the end
			wantCode:  codes.Internal,
			wantText:  "failed to unmarshal",
			wantState: ondemand.StateError,
		},
		{
			name:      "too many output lines",
			messages:  []*runnerpb.JobStreamRequest{ackMsg(), outputMsg(runnerpb.Stream_STREAM_STDOUT, manyLines(runnerapi.MaxOutputLines+1)...)},
			wantCode:  codes.ResourceExhausted,
			wantText:  fmt.Sprintf("more than the limit of %d", runnerapi.MaxOutputLines),
			wantState: ondemand.StateError,
		},
		{
			name:      "output line too long",
			messages:  []*runnerpb.JobStreamRequest{ackMsg(), outputMsg(runnerpb.Stream_STREAM_STDOUT, "ok", strings.Repeat("x", 2*runner.MaxLineBytes+1))},
			wantCode:  codes.ResourceExhausted,
			wantText:  "output line 2 is",
			wantState: ondemand.StateError,
		},
		{
			name:      "output line of unknown stream",
			messages:  []*runnerpb.JobStreamRequest{ackMsg(), outputMsg(runnerpb.Stream(9), "x")},
			wantCode:  codes.InvalidArgument,
			wantText:  "unknown stream 9",
			wantState: ondemand.StateError,
		},
		{
			name:      "message over the size limit",
			messages:  []*runnerpb.JobStreamRequest{ackMsg(), outputMsg(runnerpb.Stream_STREAM_STDOUT, strings.Repeat("x", runnerapi.MaxMessageSize))},
			wantCode:  codes.ResourceExhausted,
			wantState: ondemand.StateError,
		},
		{
			name:      "Complete error message too long",
			messages:  []*runnerpb.JobStreamRequest{ackMsg(), completeMsg(tooLong)},
			wantCode:  codes.ResourceExhausted,
			wantText:  "Complete error message is",
			wantState: ondemand.StateError,
		},
		{
			name:      "Nack message too long",
			messages:  []*runnerpb.JobStreamRequest{nackMsg(tooLong)},
			wantCode:  codes.ResourceExhausted,
			wantText:  "Nack message is",
			wantState: ondemand.StateQueued,
		},
		{
			name:      "closed before Complete",
			messages:  []*runnerpb.JobStreamRequest{ackMsg()},
			wantCode:  codes.InvalidArgument,
			wantText:  "closed the stream before completing its job",
			wantState: ondemand.StateError,
		},
	}
	h := startHost(t, hostOptions{})
	conn := dialRaw(t, h.addr)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job, runnerID, token := heldJob(t, h)
			stream, err := openRaw(waitCtx(t), conn, "Bearer "+token)
			require.NoError(t, err)
			require.NoError(t, stream.send(openMsg(runnerID, nil)))
			resp, err := stream.recv()
			require.NoError(t, err)
			require.Equal(t, job.ID, resp.GetAssignment().GetJob().GetId())

			for _, msg := range tt.messages {
				require.NoError(t, stream.send(msg))
			}
			if tt.frame != nil {
				require.NoError(t, stream.sendBytes(tt.frame))
			}
			require.NoError(t, stream.CloseSend())
			err = stream.recvEnd()
			require.Equal(t, tt.wantCode, status.Code(err), "stream error: %v", err)
			if tt.wantText != "" {
				require.ErrorContains(t, err, tt.wantText)
			}

			got, err := h.mgr.Get(t.Context(), job.ID)
			require.NoError(t, err)
			require.Equal(t, tt.wantState, got.State)
			if tt.wantState == ondemand.StateError {
				require.Equal(t, ondemand.ReasonRunnerLost, got.Error.Reason)
			}
			if !got.State.Terminal() {
				require.NoError(t, h.mgr.Cancel(t.Context(), job.ID))
			}
		})
	}
}

func TestJobStreamRejectsBadOpen(t *testing.T) {
	manyLabels := make(map[string]string)
	for i := range runnerapi.MaxLabels + 1 {
		manyLabels[fmt.Sprintf("k%d", i)] = "v"
	}
	long := strings.Repeat("x", runnerapi.MaxLabelBytes+1)
	tests := []struct {
		name     string
		first    func(runnerID string) *runnerpb.JobStreamRequest
		wantCode codes.Code
		wantText string
	}{
		{
			name:     "first message not Open",
			first:    func(string) *runnerpb.JobStreamRequest { return ackMsg() },
			wantCode: codes.InvalidArgument,
			wantText: "must be Open, not Ack",
		},
		{
			name:     "empty first message",
			first:    func(string) *runnerpb.JobStreamRequest { return &runnerpb.JobStreamRequest{} },
			wantCode: codes.InvalidArgument,
			wantText: "must be Open",
		},
		{
			name:     "empty runner ID",
			first:    func(string) *runnerpb.JobStreamRequest { return openMsg("", nil) },
			wantCode: codes.InvalidArgument,
			wantText: "empty runner_id",
		},
		{
			name: "runner ID too long",
			first: func(id string) *runnerpb.JobStreamRequest {
				return openMsg(id+strings.Repeat("x", runnerapi.MaxRunnerIDBytes), nil)
			},
			wantCode: codes.InvalidArgument,
			wantText: fmt.Sprintf("more than the limit of %d", runnerapi.MaxRunnerIDBytes),
		},
		{
			name:     "too many labels",
			first:    func(id string) *runnerpb.JobStreamRequest { return openMsg(id, manyLabels) },
			wantCode: codes.InvalidArgument,
			wantText: fmt.Sprintf("%d labels", runnerapi.MaxLabels+1),
		},
		{
			name:     "label key too long",
			first:    func(id string) *runnerpb.JobStreamRequest { return openMsg(id, map[string]string{long: "v"}) },
			wantCode: codes.InvalidArgument,
			wantText: "label key of",
		},
		{
			name:     "label value too long",
			first:    func(id string) *runnerpb.JobStreamRequest { return openMsg(id, map[string]string{"zone": long}) },
			wantCode: codes.InvalidArgument,
			wantText: `for label "zone"`,
		},
		{
			name:     "empty label key",
			first:    func(id string) *runnerpb.JobStreamRequest { return openMsg(id, map[string]string{"": "v"}) },
			wantCode: codes.InvalidArgument,
			wantText: "empty key",
		},
		{
			name:     "other runner ID",
			first:    func(id string) *runnerpb.JobStreamRequest { return openMsg(id+"-other", nil) },
			wantCode: codes.Unauthenticated,
			wantText: "the token was not issued for runner",
		},
	}
	h := startHost(t, hostOptions{})
	conn := dialRaw(t, h.addr)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job, runnerID, token := heldJob(t, h)
			stream, err := openRaw(waitCtx(t), conn, "Bearer "+token)
			require.NoError(t, err)
			require.NoError(t, stream.send(tt.first(runnerID)))
			err = stream.recvEnd()
			require.Equal(t, tt.wantCode, status.Code(err), "stream error: %v", err)
			require.ErrorContains(t, err, tt.wantText)
			require.NotContains(t, err.Error(), token)

			got, err := h.mgr.Get(t.Context(), job.ID)
			require.NoError(t, err)
			require.Equal(t, ondemand.StateQueued, got.State)
			require.Zero(t, got.Attempt, "the job was assigned")
			require.NoError(t, h.mgr.Cancel(t.Context(), job.ID))
		})
	}
}

func TestJobStreamRejectsMessagesBeforeAssignment(t *testing.T) {
	tests := []struct {
		name     string
		message  *runnerpb.JobStreamRequest // nil closes the sending side
		wantText string
	}{
		{name: "second Open", message: openMsg("idle", nil), wantText: "Open arrived before the host assigned a job"},
		{name: "Ack", message: ackMsg(), wantText: "Ack arrived before the host assigned a job"},
		{name: "Output", message: outputMsg(runnerpb.Stream_STREAM_STDOUT, "x"), wantText: "Output arrived before"},
		{name: "Complete", message: completeMsg(""), wantText: "Complete arrived before"},
		{name: "closed sending side", wantText: "closed its side of the job stream before a job was assigned"},
	}
	h := startHost(t, hostOptions{})
	conn := dialRaw(t, h.addr)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// No job is held for this runner, so the stream waits until
			// the early message ends it.
			runnerID := fmt.Sprintf("idle-%d", time.Now().UnixNano())
			token, err := h.mgr.IssueRunnerToken(runnerID, nil, time.Minute)
			require.NoError(t, err)
			stream, err := openRaw(waitCtx(t), conn, "Bearer "+token)
			require.NoError(t, err)
			require.NoError(t, stream.send(openMsg(runnerID, nil)))
			if tt.message != nil {
				require.NoError(t, stream.send(tt.message))
			} else {
				require.NoError(t, stream.CloseSend())
			}
			err = stream.recvEnd()
			require.Equal(t, codes.InvalidArgument, status.Code(err), "stream error: %v", err)
			require.ErrorContains(t, err, tt.wantText)

			// The runner's job, submitted now, waits for another stream.
			job, err := h.mgr.Submit(t.Context(), ondemand.JobSpec{Kind: kindLines, Target: &ondemand.Target{RunnerID: runnerID}})
			require.NoError(t, err)
			got, err := h.mgr.Get(t.Context(), job.ID)
			require.NoError(t, err)
			require.Zero(t, got.Attempt, "the job was assigned to a closed stream")
			require.NoError(t, h.mgr.Cancel(t.Context(), job.ID))
		})
	}
}

func TestJobStreamAuthFailures(t *testing.T) {
	var logs syncBuffer
	h := startHost(t, hostOptions{logs: &logs})
	job, runnerID, token := heldJob(t, h)
	otherToken, err := h.mgr.IssueRunnerToken(runnerID+"-other", nil, time.Minute)
	require.NoError(t, err)
	expired, err := h.mgr.IssueRunnerToken(runnerID, nil, time.Millisecond)
	require.NoError(t, err)
	time.Sleep(10 * time.Millisecond)
	forged := forgeSignature(token)

	tests := []struct {
		name          string
		authorization []string
		wantCode      codes.Code
		wantText      string
	}{
		{name: "no token", wantCode: codes.Unauthenticated, wantText: "missing runner token"},
		{name: "two tokens", authorization: []string{"Bearer " + token, "Bearer " + otherToken}, wantCode: codes.Unauthenticated, wantText: "missing runner token"},
		{name: "not a bearer token", authorization: []string{"Basic " + token}, wantCode: codes.Unauthenticated, wantText: "malformed authorization metadata"},
		{name: "garbage token", authorization: []string{"Bearer garbage-token-value"}, wantCode: codes.Unauthenticated, wantText: "invalid runner token"},
		{name: "forged signature", authorization: []string{"Bearer " + forged}, wantCode: codes.Unauthenticated, wantText: "bad signature"},
		{name: "expired token", authorization: []string{"Bearer " + expired}, wantCode: codes.Unauthenticated, wantText: "expired"},
		{name: "token of another runner", authorization: []string{"Bearer " + otherToken}, wantCode: codes.Unauthenticated, wantText: "not issued for runner"},
	}
	conn := dialRaw(t, h.addr)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream, err := openRaw(waitCtx(t), conn, tt.authorization...)
			require.NoError(t, err)
			require.NoError(t, stream.send(openMsg(runnerID, nil)))
			err = stream.recvEnd()
			require.Equal(t, tt.wantCode, status.Code(err), "stream error: %v", err)
			require.ErrorContains(t, err, tt.wantText)
			for _, secret := range []string{token, otherToken, expired, forged, "garbage-token-value"} {
				require.NotContains(t, err.Error(), secret)
				require.NotContains(t, logs.String(), secret)
			}
		})
	}
	require.Contains(t, logs.String(), "runner authentication failed", "the host logged no failure")

	got, err := h.mgr.Get(t.Context(), job.ID)
	require.NoError(t, err)
	require.Equal(t, ondemand.StateQueued, got.State)
	require.Zero(t, got.Attempt, "the job was assigned to a stream that failed authentication")
	require.NoError(t, h.mgr.Cancel(t.Context(), job.ID))
}
