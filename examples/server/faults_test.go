package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/exec"
)

// buildBinary builds a package of this module into dir and returns the
// path of the executable.
func buildBinary(t *testing.T, dir, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := osexec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = "../.."
	output, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build %s: %s", pkg, output)
	return out
}

func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	return addr
}

// TestHostCrashRecovery kills the server with SIGKILL at each point of a
// job's life, restarts it on the same data, and checks that the job ends
// with the expected outcome and that no runner process is left.
func TestHostCrashRecovery(t *testing.T) {
	bin := t.TempDir()
	server := buildBinary(t, bin, "./examples/server")
	runnerBin := buildBinary(t, bin, "./examples/runner")

	tests := []struct {
		crashAt    ondemand.EventType
		wantState  ondemand.State
		wantReason string
	}{
		{ondemand.EventQueued, ondemand.StateSuccess, "-"},
		{ondemand.EventLaunched, ondemand.StateSuccess, "-"},
		{ondemand.EventRunning, ondemand.StateError, string(ondemand.ReasonRunnerLost)},
		{ondemand.EventOutput, ondemand.StateError, string(ondemand.ReasonRunnerLost)},
		{ondemand.EventDone, ondemand.StateSuccess, "-"},
	}
	for _, tt := range tests {
		t.Run(string(tt.crashAt), func(t *testing.T) {
			dir := t.TempDir()
			hostID := "crash-" + string(tt.crashAt) + "-" + filepath.Base(dir)
			profiles := filepath.Join(dir, "profiles.hcl")
			require.NoError(t, os.WriteFile(profiles, []byte(fmt.Sprintf(`runner_profile "local" {
  plugin          = "exec"
  default         = true
  startup_timeout = "30s"
  config {
    command    = %q
    stop_grace = "2s"
  }
}
`, runnerBin)), 0o600))
			addr := freeAddr(t)
			args := []string{"-data", filepath.Join(dir, "data"), "-listen", addr, "-profiles", profiles, "-host-id", hostID, "-heartbeat-timeout", "2s"}

			ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
			defer cancel()
			crash := osexec.CommandContext(ctx, server, append(args, "-crash-at", string(tt.crashAt), "--", "echo start; sleep 2; echo end")...)
			var crashLog bytes.Buffer
			crash.Stdout, crash.Stderr = &crashLog, &crashLog
			err := crash.Run()
			var exitErr *osexec.ExitError
			require.True(t, errors.As(err, &exitErr), "the server did not crash: %v\n%s", err, crashLog.String())
			status := exitErr.Sys().(syscall.WaitStatus)
			require.True(t, status.Signaled() && status.Signal() == syscall.SIGKILL, "the server ended without SIGKILL: %v\n%s", err, crashLog.String())

			restart := osexec.CommandContext(ctx, server, append(args, "-wait")...)
			var restartLog bytes.Buffer
			restart.Stderr = &restartLog
			out, err := restart.Output()
			require.NoError(t, err, "restarted server failed:\n%s", restartLog.String())

			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			require.Len(t, lines, 1, "jobs after restart: %q", lines)
			fields := strings.Fields(lines[0])
			require.Len(t, fields, 3)
			require.Equal(t, string(tt.wantState), fields[1], "crash log:\n%s\nrestart log:\n%s", crashLog.String(), restartLog.String())
			require.Equal(t, tt.wantReason, fields[2])

			requireNoRunners(t, hostID)
		})
	}
}

// requireNoRunners fails when a process launched for hostID still runs.
func requireNoRunners(t *testing.T, hostID string) {
	t.Helper()
	l, err := exec.New(exec.Plugin().NewConfig().(*exec.Config), tasklauncher.Options{})
	require.NoError(t, err)
	defer l.Close()
	found, err := l.ListTasks(t.Context(), map[string]string{ondemand.LabelHost: hostID})
	require.NoError(t, err)
	require.Empty(t, found, "runner processes survived")
}
