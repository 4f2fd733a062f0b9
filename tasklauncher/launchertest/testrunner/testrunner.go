// Package testrunner is the runner side of the launchertest conformance
// suite: the program that a launcher under test starts. A launcher author
// calls [Main] from the binary that the launcher runs, such as the test
// binary itself (from TestMain) or a small static binary inside an image.
//
// The suite selects what the program does through the environment variable
// [EnvMode]:
//
//   - [ModeJob]: connect to the runner API as a static runner, take one job
//     of kind [JobKind], complete it with the result [JobResult], and exit 0.
//   - [ModeSleep]: connect to nothing and wait until SIGTERM or SIGINT, then
//     exit 0.
//   - [ModeExit] followed by a number, such as "exit:3": exit with that code
//     at once, without connecting.
//
// In every mode the program first writes [StdoutLine] to stdout and
// [StderrLine] to stderr, so that a launcher's WatchTask can be checked to
// keep the two streams apart.
package testrunner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/odrkit/odrkit/runnerapi/runner"
)

// EnvMode is the environment variable that selects the program's mode.
const EnvMode = "ODRKIT_LAUNCHERTEST_MODE"

// Modes of the program. ModeExit is a prefix: "exit:3" exits with code 3.
const (
	ModeJob   = "job"
	ModeSleep = "sleep"
	ModeExit  = "exit:"
)

// JobKind is the kind of the job that a runner in ModeJob takes.
const JobKind = "odrkit.launchertest.job"

// jobTimeout bounds how long a runner in ModeJob waits for its job, so that
// a runner whose host is gone does not run forever.
const jobTimeout = 2 * time.Minute

// ExitMode returns the mode that exits with code.
func ExitMode(code int) string {
	return ModeExit + strconv.Itoa(code)
}

// StdoutLine is the line the program writes to stdout when it starts.
func StdoutLine(runnerID string) string {
	return "launchertest runner " + runnerID + " writes to stdout"
}

// StderrLine is the line the program writes to stderr when it starts.
func StderrLine(runnerID string) string {
	return "launchertest runner " + runnerID + " writes to stderr"
}

// JobResult is the result with which a runner in ModeJob completes a job
// with the given payload.
func JobResult(payload []byte) []byte {
	return []byte("done: " + string(payload))
}

// Main runs the program in the mode that EnvMode selects and returns the
// exit code for os.Exit. It reads the runner's ID, token and host address
// from the ODRKIT_* variables that runner.ConfigFromEnv reads.
func Main() int {
	mode := os.Getenv(EnvMode)
	runnerID := os.Getenv(runner.EnvRunnerID)
	fmt.Fprintln(os.Stdout, StdoutLine(runnerID))
	fmt.Fprintln(os.Stderr, StderrLine(runnerID))

	// A process that is PID 1 in a container gets no default action for
	// SIGTERM, so the program handles it itself.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	switch {
	case mode == ModeJob:
		if err := runOneJob(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "launchertest runner:", err)
			return 1
		}
		return 0
	case mode == ModeSleep:
		<-ctx.Done()
		return 0
	case strings.HasPrefix(mode, ModeExit):
		code, err := strconv.Atoi(strings.TrimPrefix(mode, ModeExit))
		if err != nil || code < 0 || code > 255 {
			fmt.Fprintf(os.Stderr, "launchertest runner: invalid %s %q: use %q followed by an exit code from 0 to 255\n", EnvMode, mode, ModeExit)
			return 2
		}
		return code
	default:
		fmt.Fprintf(os.Stderr, "launchertest runner: invalid %s %q: use %q, %q or %q followed by an exit code\n", EnvMode, mode, ModeJob, ModeSleep, ModeExit)
		return 2
	}
}

// runOneJob runs a static runner until it has completed one job. The host
// issues the runner a static token and holds the job for its runner ID. An
// on-demand session would be rejected, because the host launched no task
// for that ID.
func runOneJob(ctx context.Context) error {
	cfg, err := runner.ConfigFromEnv()
	if err != nil {
		return err
	}
	if cfg.OnDemand {
		return fmt.Errorf("%s is set, but the suite issues a static token: unset it", runner.EnvRunnerOnDemand)
	}
	cfg.Concurrency = 1
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	r, err := runner.New(cfg)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeoutCause(ctx, jobTimeout, fmt.Errorf("no job arrived within %s", jobTimeout))
	defer cancel()
	var done atomic.Bool
	r.Handle(JobKind, func(jobCtx context.Context, job *runner.Job, out *runner.Output) ([]byte, error) {
		out.Line(runner.Stdout, "running job "+job.ID)
		done.Store(true)
		// Stopping Run here ends the runner after this job: Run still
		// delivers the completion of a job whose handler has returned.
		cancel()
		return JobResult(job.Payload), nil
	})
	if err := r.Run(ctx); err != nil {
		return err
	}
	if !done.Load() {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return cause
		}
		return errors.New("stopped before a job arrived")
	}
	return nil
}
