package runnerapi_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/odrkit/odrkit/runnerapi/runner"
	"github.com/odrkit/odrkit/runnerapi/runnerpb"
)

// envTestMode selects how the test binary behaves when the exec launcher
// starts it as an on-demand runner.
const envTestMode = "ODRKIT_TEST_RUNNER_MODE"

// Runner modes of the test binary.
const (
	modeRunner       = ""              // connect and run the job
	modeExitEarly    = "exit-early"    // print a line and exit with code 7 without connecting
	modeNeverConnect = "never-connect" // sleep without connecting
	modeNackOnce     = "nack-once"     // reject the job once, then sleep without reconnecting
)

func TestMain(m *testing.M) {
	if os.Getenv(runner.EnvRunnerID) != "" {
		os.Exit(runAsRunner())
	}
	goleak.VerifyTestMain(m)
}

// runAsRunner is the on-demand runner side of the test binary.
func runAsRunner() int {
	switch os.Getenv(envTestMode) {
	case modeExitEarly:
		fmt.Println("runner cannot start: configuration missing")
		return 7
	case modeNeverConnect:
		time.Sleep(time.Hour)
		return 0
	case modeNackOnce:
		return nackOnce()
	}
	cfg, err := runner.ConfigFromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	r, err := runner.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	registerTestHandlers(r)
	if err := r.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// Job kinds the test runners execute.
const (
	kindLines = "lines" // writes each payload line as an output line
	kindFail  = "fail"  // fails with the exit code in the payload
	kindBlock = "block" // waits until cancelled
	// kindSecondStream requests a second job while the first runs.
	kindSecondStream = "second-stream"
)

func registerTestHandlers(r *runner.Runner) {
	r.Handle(kindSecondStream, secondStream)
	r.Handle(kindLines, func(ctx context.Context, job *runner.Job, out *runner.Output) ([]byte, error) {
		for line := range strings.SplitSeq(string(job.Payload), "\n") {
			out.Line(runner.Stdout, line)
		}
		return []byte("done"), nil
	})
	r.Handle(kindFail, func(ctx context.Context, job *runner.Job, out *runner.Output) ([]byte, error) {
		var code int
		if _, err := fmt.Sscan(string(job.Payload), &code); err != nil {
			return nil, err
		}
		out.Line(runner.Stderr, "failing on purpose")
		return nil, &runner.ExitError{Code: code, Err: fmt.Errorf("the job failed on purpose")}
	})
	r.Handle(kindBlock, func(ctx context.Context, job *runner.Job, out *runner.Output) ([]byte, error) {
		out.Line(runner.Stdout, "blocking")
		<-ctx.Done()
		return nil, ctx.Err()
	})
}

// rawStream opens a job stream with the runner's own token and sends Open,
// as the runner library would, so that a test runner can misbehave.
func rawStream(ctx context.Context) (runnerpb.RunnerService_JobStreamClient, func(), error) {
	conn, err := grpc.NewClient(os.Getenv(runner.EnvServerAddr), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+os.Getenv(runner.EnvRunnerToken))
	stream, err := runnerpb.NewRunnerServiceClient(conn).JobStream(ctx)
	if err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	open := &runnerpb.JobStreamRequest_Open{RunnerId: os.Getenv(runner.EnvRunnerID), OnDemand: true}
	if err := stream.Send(&runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Open_{Open: open}}); err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	return stream, func() { _ = conn.Close() }, nil
}

// nackOnce takes its job, rejects it, and then stays alive without
// connecting again.
func nackOnce() int {
	stream, closeConn, err := rawStream(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer closeConn()
	if _, err := stream.Recv(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	nack := &runnerpb.JobStreamRequest_Nack{Message: "rejected on purpose"}
	if err := stream.Send(&runnerpb.JobStreamRequest{Event: &runnerpb.JobStreamRequest_Nack_{Nack: nack}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	time.Sleep(time.Hour)
	return 0
}

// secondStream opens a second job stream while the runner's job runs and
// reports the status code the host returned.
func secondStream(ctx context.Context, job *runner.Job, out *runner.Output) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stream, closeConn, err := rawStream(ctx)
	if err != nil {
		return nil, err
	}
	defer closeConn()
	_, err = stream.Recv()
	out.Line(runner.Stdout, "second job stream: "+status.Code(err).String())
	return nil, nil
}
