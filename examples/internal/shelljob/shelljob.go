// Package shelljob is the job handler the examples share: it runs the job's
// payload as a shell command and streams the command's output.
package shelljob

import (
	"context"
	"errors"
	"fmt"
	"os/exec"

	"github.com/odrkit/odrkit/runnerapi/runner"
)

// Kind is the job kind Handler executes.
const Kind = "shell"

// Handler runs the job's payload with `sh -c`. It fails with a
// *runner.ExitError carrying the command's exit code when the command
// fails.
func Handler(ctx context.Context, job *runner.Job, out *runner.Output) ([]byte, error) {
	stdout, stderr := out.Writer(runner.Stdout), out.Writer(runner.Stderr)
	cmd := exec.CommandContext(ctx, "sh", "-c", string(job.Payload))
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err := cmd.Run()
	_ = stdout.Close()
	_ = stderr.Close()

	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr):
		return nil, &runner.ExitError{Code: exitErr.ExitCode(), Err: fmt.Errorf("command failed: %w", err)}
	case err != nil:
		return nil, fmt.Errorf("run command: %w", err)
	}
	return nil, nil
}
