package runnerapi_test

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/exec"
)

// launcherFaults injects failures into faultyLauncher.
type launcherFaults struct {
	// startDelay is waited before each StartTask.
	startDelay time.Duration
	// transientStarts is the number of StartTask calls that fail with a
	// transient error before the real launcher is called.
	transientStarts atomic.Int32
	// failStops makes every StopTask fail without stopping anything.
	failStops atomic.Bool
	// stopCalls counts StopTask calls.
	stopCalls atomic.Int32
}

// faultyLauncher is a test double around the real exec launcher that fails
// or slows down on command.
type faultyLauncher struct {
	*exec.Launcher
	faults *launcherFaults
}

func (f *launcherFaults) plugin() tasklauncher.Plugin {
	real := exec.Plugin()
	return tasklauncher.Plugin{
		Name:      "faulty-exec",
		NewConfig: real.NewConfig,
		New: func(config any, opts tasklauncher.Options) (tasklauncher.Launcher, error) {
			l, err := exec.New(config.(*exec.Config), opts)
			if err != nil {
				return nil, err
			}
			return &faultyLauncher{Launcher: l, faults: f}, nil
		},
	}
}

func (l *faultyLauncher) StartTask(ctx context.Context, info *tasklauncher.LaunchInfo) ([]byte, error) {
	select {
	case <-time.After(l.faults.startDelay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if l.faults.transientStarts.Add(-1) >= 0 {
		return nil, tasklauncher.Transient(errors.New("platform API timed out (injected)"))
	}
	return l.Launcher.StartTask(ctx, info)
}

func (l *faultyLauncher) StopTask(ctx context.Context, state []byte) error {
	l.faults.stopCalls.Add(1)
	if l.faults.failStops.Load() {
		return errors.New("platform refused to delete the resource (injected)")
	}
	return l.Launcher.StopTask(ctx, state)
}

func tasklauncherOptions() tasklauncher.Options {
	return tasklauncher.Options{}
}
