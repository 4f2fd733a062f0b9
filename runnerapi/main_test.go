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

	"github.com/odrkit/odrkit/runnerapi/runner"
)

// envTestMode selects how the test binary behaves when the exec launcher
// starts it as an on-demand runner.
const envTestMode = "ODRKIT_TEST_RUNNER_MODE"

// Runner modes of the test binary.
const (
	modeRunner       = ""             // connect and run the job
	modeExitEarly    = "exit-early"   // print a line and exit with code 7 without connecting
	modeNeverConnect = "never-connect" // sleep without connecting
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
)

func registerTestHandlers(r *runner.Runner) {
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
