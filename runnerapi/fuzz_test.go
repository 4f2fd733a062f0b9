package runnerapi_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/runnerapi"
	"github.com/odrkit/odrkit/runnerapi/runnerpb"
)

// Token choices of FuzzJobStream.
const (
	fuzzTokenValid  = iota // issued for the runner the job is held for
	fuzzTokenOther         // issued for another runner ID
	fuzzTokenForged        // the valid token with its signature changed
	fuzzTokenNone          // no authorization metadata
	fuzzTokenChoices
)

// fuzzFrames turns fuzz bytes into the frames of one job stream. Each
// frame is a length byte followed by that many bytes. The first byte of a
// frame picks a message kind, and the rest fills the message's fields, so
// that most frames are well-formed messages in an arbitrary order. Kind 6
// sends the bytes as they are, which may not decode at all.
func fuzzFrames(data []byte, runnerID string) [][]byte {
	var frames [][]byte
	for len(data) > 0 {
		n := min(int(data[0]), len(data)-1)
		chunk := data[1 : 1+n]
		data = data[1+n:]
		if len(chunk) == 0 {
			chunk = []byte{0}
		}
		kind, rest := chunk[0]%8, chunk[1:]
		var msg *runnerpb.JobStreamRequest
		switch kind {
		case 0:
			msg = openMsg(string(rest), map[string]string{"k": string(rest)})
		case 1:
			msg = ackMsg()
		case 2:
			msg = nackMsg(string(rest))
		case 3:
			msg = heartbeatMsg()
		case 4:
			var stream runnerpb.Stream
			if len(rest) > 0 {
				stream = runnerpb.Stream(rest[0] % 4)
			}
			msg = outputMsg(stream, string(rest))
		case 5:
			msg = completeMsg(string(rest))
		case 6:
			frames = append(frames, rest)
			continue
		default:
			msg = openMsg(runnerID, nil)
		}
		frame, err := proto.Marshal(msg)
		if err != nil {
			// Invalid UTF-8 in a string field: send the bytes raw.
			frame = rest
		}
		frames = append(frames, frame)
	}
	return frames
}

// FuzzJobStream sends arbitrary sequences of messages over a real gRPC
// connection, with a valid, foreign, forged or missing token. The server
// must not panic, every stream must end, and a job held for a runner goes
// only to a stream whose token and Open are both that runner's.
func FuzzJobStream(f *testing.F) {
	mgr, err := ondemand.New(context.Background(), ondemand.Config{AckTimeout: time.Minute, HeartbeatTimeout: time.Minute})
	require.NoError(f, err)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(f, err)
	srv := grpc.NewServer(runnerapi.ServerOptions()...)
	runnerapi.NewServer(mgr, runnerapi.Config{}).Register(srv)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	f.Cleanup(func() {
		srv.Stop()
		<-served
		require.NoError(f, mgr.Close())
	})
	conn := dialRaw(f, lis.Addr().String())

	f.Add(byte(fuzzTokenValid), []byte{1, 7, 1, 1, 2, 4, 'a', 2, 5, 0})   // Open, Ack, Output, Complete
	f.Add(byte(fuzzTokenValid), []byte{1, 7, 1, 1, 1, 1})                 // Open, Ack, Ack
	f.Add(byte(fuzzTokenValid), []byte{1, 7, 1, 3})                       // Open, Heartbeat
	f.Add(byte(fuzzTokenValid), []byte{1, 1, 1, 7})                       // Ack, Open
	f.Add(byte(fuzzTokenOther), []byte{1, 7, 1, 1})                       // Open as the held runner
	f.Add(byte(fuzzTokenOther), []byte{3, 0, 'x', 'y'})                   // Open as someone else
	f.Add(byte(fuzzTokenForged), []byte{1, 7, 1, 1, 2, 5, 0})             // forged token
	f.Add(byte(fuzzTokenNone), []byte{1, 7})                              // no token
	f.Add(byte(fuzzTokenValid), []byte{1, 7, 4, 6, 0x22, 0xff, 0xff})     // Open, malformed bytes
	f.Add(byte(fuzzTokenValid), []byte{1, 7, 1, 1, 3, 2, 'n', 'o', 1, 0}) // Open, Ack, Nack, Open

	var counter atomic.Int64
	f.Fuzz(func(t *testing.T, tokenChoice byte, data []byte) {
		runJobStreamInput(t, mgr, conn, &counter, tokenChoice, data)
	})
}

// runJobStreamInput runs one input of FuzzJobStream.
func runJobStreamInput(t *testing.T, mgr *ondemand.Manager, conn *grpc.ClientConn, counter *atomic.Int64, tokenChoice byte, data []byte) {
	{
		runnerID := fmt.Sprintf("fuzz-%d", counter.Add(1))
		job, err := mgr.Submit(t.Context(), ondemand.JobSpec{Kind: "fuzz", Target: &ondemand.Target{RunnerID: runnerID}})
		require.NoError(t, err)
		defer func() {
			if got, err := mgr.Get(context.Background(), job.ID); err == nil && !got.State.Terminal() {
				require.NoError(t, mgr.Cancel(context.Background(), job.ID))
			}
		}()

		valid, err := mgr.IssueRunnerToken(runnerID, nil, time.Minute)
		require.NoError(t, err)
		var authorization []string
		switch tokenChoice % fuzzTokenChoices {
		case fuzzTokenValid:
			authorization = []string{"Bearer " + valid}
		case fuzzTokenOther:
			other, err := mgr.IssueRunnerToken(runnerID+"-other", nil, time.Minute)
			require.NoError(t, err)
			authorization = []string{"Bearer " + other}
		case fuzzTokenForged:
			authorization = []string{"Bearer " + forgeSignature(valid)}
		}

		frames := fuzzFrames(data, runnerID)
		first := &runnerpb.JobStreamRequest{}
		mayAssign := tokenChoice%fuzzTokenChoices == fuzzTokenValid && len(frames) > 0 &&
			proto.Unmarshal(frames[0], first) == nil && first.GetOpen().GetRunnerId() == runnerID

		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		stream, err := openRaw(ctx, conn, authorization...)
		require.NoError(t, err)
		for _, frame := range frames {
			if err := stream.sendBytes(frame); err != nil {
				break
			}
		}
		_ = stream.CloseSend()
		for {
			resp, err := stream.recv()
			if err != nil {
				// io.EOF or the status that ended the stream.
				require.NotErrorIs(t, ctx.Err(), context.DeadlineExceeded, "the stream did not end")
				break
			}
			if a := resp.GetAssignment(); a != nil {
				require.True(t, mayAssign, "job %s was assigned to a stream without the runner's token and Open", a.GetJob().GetId())
				require.Equal(t, job.ID, a.GetJob().GetId())
			}
		}

		got, err := mgr.Get(context.Background(), job.ID)
		require.NoError(t, err)
		if !mayAssign {
			require.Equal(t, ondemand.StateQueued, got.State)
			require.Zero(t, got.Attempt, "the job was assigned")
		}
	}
}
