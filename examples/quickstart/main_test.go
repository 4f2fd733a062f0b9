package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/odrkit/odrkit/runnerapi/runner"
)

func TestMain(m *testing.M) {
	if os.Getenv(runner.EnvRunnerID) != "" {
		os.Exit(runRunner(context.Background(), slog.New(slog.DiscardHandler)))
	}
	goleak.VerifyTestMain(m)
}

func TestQuickstartOutcome(t *testing.T) {
	var out bytes.Buffer
	code := runHost(t.Context(), slog.New(slog.DiscardHandler), &out, false)
	require.Equal(t, 0, code, "output:\n%s", out.String())

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Equal(t, "quickstart: 3 jobs, 2 succeeded, 1 failed; 3 runners launched, 3 stopped", lines[len(lines)-1])
	require.Contains(t, lines, "[count] line 1")
	require.Contains(t, lines, "[fail] this job fails on purpose")
	require.Less(t, indexOf(lines, "[count] line 1"), indexOf(lines, "[count] line 3"))
	require.Empty(t, childProcesses(t), "runner processes were left behind")
}

func indexOf(lines []string, want string) int {
	for i, l := range lines {
		if l == want {
			return i
		}
	}
	return -1
}

// childProcesses returns the PIDs of live processes whose parent is this
// test process. Zombies count as gone.
func childProcesses(t *testing.T) []int {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	require.NoError(t, err)
	var children []int
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue // the process ended while we looked
		}
		// The command name may contain spaces; the fields after it start
		// after the last ')'.
		fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
		if len(fields) < 2 || fields[0] == "Z" {
			continue
		}
		if ppid, _ := strconv.Atoi(fields[1]); ppid == os.Getpid() {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
			children = append(children, pid)
		}
	}
	return children
}
