package runner

import (
	"context"
	"fmt"
)

// Job is the part of an assigned job that its handler receives.
type Job struct {
	// ID is the host's job ID.
	ID string
	// Kind names the operation and selected the handler.
	Kind string
	// Payload is the job's input, in a format the host defines for Kind.
	Payload []byte
}

// HandlerFunc runs one job. It writes output lines to out and returns the
// job's result, or an error that fails the job. An error that is or wraps an
// *ExitError also reports a process exit code to the host.
//
// ctx is cancelled when the host cancels the job, when the stream to the host
// breaks, or when Run's context is done. A handler must return soon after,
// because Run waits for its handlers before it returns.
type HandlerFunc func(ctx context.Context, job *Job, out *Output) (result []byte, err error)

// ExitError is a job failure with the exit code of the process the job ran.
// The host receives the code in its own field, so Error does not repeat it
// when Err describes the failure.
type ExitError struct {
	// Code is the process exit code.
	Code int
	// Err describes the failure. It may be nil.
	Err error
}

// Error returns Err's message, or "exit code N" when Err is nil.
func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit code %d", e.Code)
	}
	return e.Err.Error()
}

// Unwrap returns Err.
func (e *ExitError) Unwrap() error {
	return e.Err
}
