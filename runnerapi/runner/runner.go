package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/odrkit/odrkit/runnerapi/runnerpb"
)

// Timing of the runner's retries and shutdown.
const (
	// minBackoff and maxBackoff bound the wait before a failed stream is
	// opened again. The wait doubles after each failure in a row.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second

	// defaultHeartbeatInterval applies when an Assignment sets no interval.
	defaultHeartbeatInterval = 5 * time.Second

	// flushDelay is how long output lines may wait to be batched with the
	// lines that follow them.
	flushDelay = 10 * time.Millisecond

	// closeTimeout bounds the wait for the host to close a stream after
	// Complete or Nack.
	closeTimeout = 10 * time.Second

	// shutdownGrace is how long a running job may take, once Run's context
	// is done, to return and report its completion before its stream is
	// cancelled.
	shutdownGrace = 10 * time.Second
)

// Runner takes jobs from an odrkit host and runs them with the handlers
// registered for their kinds.
type Runner struct {
	cfg       Config
	logger    *slog.Logger
	transport credentials.TransportCredentials

	mu       sync.Mutex
	handlers map[string]HandlerFunc
}

// New validates cfg, reads its CA file and client certificate, and returns
// a Runner. Register handlers with Handle, then call Run.
func New(cfg Config) (*Runner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 1
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	cfg.Labels = maps.Clone(cfg.Labels)
	cfg.DialOptions = slices.Clone(cfg.DialOptions)

	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("runner_id", cfg.RunnerID)
	transport, err := transportCredentials(cfg, logger)
	if err != nil {
		return nil, err
	}
	return &Runner{
		cfg:       cfg,
		logger:    logger,
		transport: transport,
		handlers:  make(map[string]HandlerFunc),
	}, nil
}

// Handle registers h for jobs of the given kind. Register handlers before
// Run. A job whose kind has no handler is rejected with Nack. Handle panics
// when kind is empty, h is nil, or kind already has a handler.
func (r *Runner) Handle(kind string, h HandlerFunc) {
	if kind == "" {
		panic("runner: Handle called with an empty job kind")
	}
	if h == nil {
		panic(fmt.Sprintf("runner: Handle called with a nil handler for job kind %q", kind))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.handlers[kind]; dup {
		panic(fmt.Sprintf("runner: a handler for job kind %q is already registered", kind))
	}
	r.handlers[kind] = h
}

func (r *Runner) handler(kind string) (HandlerFunc, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h, ok := r.handlers[kind]
	return h, ok
}

func (r *Runner) kinds() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.handlers))
}

// Run connects to the host and runs jobs.
//
// An on-demand runner takes exactly one job, runs it and returns nil once
// the host has received its completion, also when the job failed. It
// returns an error when it could not take or deliver the job. That happens
// when the host stayed unreachable for Config.ConnectTimeout, the host
// rejected the credentials, the job's kind has no handler, the stream broke
// while the job ran, or ctx was done before a job arrived.
//
// A static runner takes job after job on Config.Concurrency streams and
// retries with backoff when the host is unreachable or a stream fails. It
// returns nil when ctx is done, or an error when the host rejects the
// credentials (codes.Unauthenticated or codes.PermissionDenied), which no
// retry can fix.
//
// When ctx is done, running jobs' contexts are cancelled and each job has
// 10 seconds to report its completion. Run returns only after every
// goroutine it started has stopped, so it waits for handlers to return.
func (r *Runner) Run(ctx context.Context) error {
	kinds := r.kinds()
	if len(kinds) == 0 {
		return errors.New("runner has no handlers: register one with Handle before calling Run")
	}
	conn, err := grpc.NewClient(r.cfg.ServerAddr, dialOptions(r.cfg, r.transport)...)
	if err != nil {
		return fmt.Errorf("create gRPC client for %s: %w", r.cfg.ServerAddr, err)
	}
	defer func() {
		if err := conn.Close(); err != nil {
			r.logger.Debug("closing gRPC client failed", "error", err)
		}
	}()
	client := runnerpb.NewRunnerServiceClient(conn)

	r.logger.Info("runner starting",
		"server_addr", r.cfg.ServerAddr,
		"tls", r.cfg.TLS,
		"on_demand", r.cfg.OnDemand,
		"concurrency", r.cfg.Concurrency,
		"kinds", kinds)
	if r.cfg.OnDemand {
		err = r.runOnDemand(ctx, client)
	} else {
		err = r.runStatic(ctx, client)
	}
	if err != nil {
		r.logger.Error("runner stopped", "error", err)
	} else {
		r.logger.Info("runner stopped")
	}
	return err
}

// runOnDemand takes exactly one job.
func (r *Runner) runOnDemand(ctx context.Context, client runnerpb.RunnerServiceClient) error {
	var (
		retry        backoff
		failingSince time.Time
	)
	for {
		res, err := r.takeJob(ctx, client, 0)
		switch {
		case err == nil && res.rejected:
			return fmt.Errorf("on-demand runner rejected job %s: no handler is registered for its kind %q: register one with Handle", res.jobID, res.kind)
		case err == nil:
			return nil
		case isAuthError(err):
			return authError(r.cfg.RunnerID, err)
		case res.assigned:
			return fmt.Errorf("job %s was not delivered to the host: %w", res.jobID, err)
		case ctx.Err() != nil:
			return fmt.Errorf("on-demand runner stopped before it received a job: %w", context.Cause(ctx))
		}

		// No job was assigned: the host is unreachable, or the stream broke
		// while the runner waited for its job.
		if res.connected || failingSince.IsZero() {
			failingSince = time.Now()
		}
		if time.Since(failingSince) >= r.cfg.ConnectTimeout {
			return fmt.Errorf("on-demand runner could not reach the host at %s within %s: %w", r.cfg.ServerAddr, r.cfg.ConnectTimeout, err)
		}
		delay := retry.next()
		r.logger.Warn("job stream failed, retrying", "error", err, "retry_in", delay)
		if !sleep(ctx, delay) {
			return fmt.Errorf("on-demand runner stopped before it received a job: %w", context.Cause(ctx))
		}
	}
}

// runStatic runs Concurrency job loops until ctx is done or one of them
// fails with an error that retrying cannot fix.
func (r *Runner) runStatic(ctx context.Context, client runnerpb.RunnerServiceClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
	)
	for slot := range r.cfg.Concurrency {
		wg.Go(func() {
			if err := r.runSlot(ctx, client, slot); err != nil {
				once.Do(func() {
					firstErr = err
					cancel()
				})
			}
		})
	}
	wg.Wait()
	return firstErr
}

// runSlot takes job after job on one stream at a time.
func (r *Runner) runSlot(ctx context.Context, client runnerpb.RunnerServiceClient, slot int) error {
	var retry backoff
	for ctx.Err() == nil {
		res, err := r.takeJob(ctx, client, slot)
		var delay time.Duration
		switch {
		case err == nil && res.rejected:
			// The host queues a rejected job again and may hand it to
			// this runner again, so wait before asking for the next job.
			delay = retry.next()
		case err == nil:
			retry.reset()
			continue
		case isAuthError(err):
			return authError(r.cfg.RunnerID, err)
		case ctx.Err() != nil:
			return nil
		default:
			if res.connected {
				retry.reset()
			}
			delay = retry.next()
			r.logger.Warn("job stream failed, retrying", "slot", slot, "error", err, "retry_in", delay)
		}
		if !sleep(ctx, delay) {
			return nil
		}
	}
	return nil
}

func isAuthError(err error) bool {
	code := status.Code(err)
	return code == codes.Unauthenticated || code == codes.PermissionDenied
}

func authError(runnerID string, err error) error {
	return fmt.Errorf("host rejected the credentials of runner %q: %w: check that the token was issued for this runner ID and has not expired", runnerID, err)
}

// backoff computes exponential retry delays with jitter. The zero value
// starts at minBackoff.
type backoff struct {
	current time.Duration
}

// next returns the delay before the next attempt and doubles the one after.
func (b *backoff) next() time.Duration {
	if b.current == 0 {
		b.current = minBackoff
	}
	delay := b.current
	b.current = min(2*b.current, maxBackoff)

	// Up to 20% either way, so that runners cut off together do not
	// reconnect together.
	jitter := time.Duration(rand.Int64N(int64(delay)*2/5+1)) - delay/5
	return delay + jitter
}

func (b *backoff) reset() {
	b.current = 0
}

// sleep waits for d and reports whether ctx was still not done.
func sleep(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}
