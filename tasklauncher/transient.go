package tasklauncher

import "errors"

// transientError marks an error a launcher expects to go away when the
// operation is tried again.
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// Transient marks err as transient: the platform may accept the same
// request later, for example after an API timeout or a throttled request.
// odrkit retries a StartTask that fails with a transient error as often as
// the profile's launch_retries allows. Transient(nil) returns nil.
func Transient(err error) error {
	if err == nil {
		return nil
	}
	return &transientError{err: err}
}

// IsTransient reports whether err or an error it wraps was marked with
// Transient.
func IsTransient(err error) bool {
	var t *transientError
	return errors.As(err, &t)
}
