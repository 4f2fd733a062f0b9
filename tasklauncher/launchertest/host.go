package launchertest

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/runnerapi"
)

// tokenLifetime is how long the runner tokens the suite issues stay valid.
const tokenLifetime = 10 * time.Minute

// host is a minimal odrkit host: a Manager without profiles, so that it
// launches nothing itself, and the runner API on a loopback port.
type host struct {
	mgr  *ondemand.Manager
	addr string
}

func startHost(t *testing.T, logger *slog.Logger) *host {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)

	mgr, err := ondemand.New(context.Background(), ondemand.Config{Logger: logger})
	require.NoError(t, err)

	srv := grpc.NewServer(runnerapi.ServerOptions()...)
	runnerapi.NewServer(mgr, runnerapi.Config{Logger: logger}).Register(srv)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
		require.NoError(t, mgr.Close())
	})
	return &host{mgr: mgr, addr: lis.Addr().String()}
}

// logWriter passes log output to a test's log until the test ends. Records
// that arrive later, from goroutines a launcher still runs, are dropped,
// because testing panics on a Log call after its test completed.
type logWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func newTestLogger(t *testing.T) *slog.Logger {
	w := &logWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.done = true
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(p))
	}
	return len(p), nil
}
