package odrkit_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/odrkit/odrkit/runnerapi/runner"
)

// TestMain runs the test binary as an on-demand runner when the example's
// host launches it, and as the test program otherwise.
func TestMain(m *testing.M) {
	if os.Getenv(runner.EnvRunnerID) != "" {
		os.Exit(runGreeter())
	}
	goleak.VerifyTestMain(m)
}

// runGreeter is the runner the example launches: it executes "greet" jobs.
func runGreeter() int {
	cfg, err := runner.ConfigFromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	r, err := runner.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	r.Handle("greet", func(ctx context.Context, job *runner.Job, out *runner.Output) ([]byte, error) {
		out.Line(runner.Stdout, "hello, "+string(job.Payload))
		return nil, nil
	})
	if err := r.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
