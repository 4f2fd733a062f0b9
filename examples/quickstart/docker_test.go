package main

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestQuickstartInDocker(t *testing.T) {
	if os.Getenv("ODRKIT_TEST_DOCKER") != "1" {
		t.Skip("needs a Docker engine: set DOCKER_HOST and ODRKIT_TEST_DOCKER=1 (CI does), and install busybox-static")
	}
	var out bytes.Buffer
	code := runHost(t.Context(), slog.New(slog.DiscardHandler), &out, true)
	require.Equal(t, 0, code, "output:\n%s", out.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Equal(t, "quickstart: 3 jobs, 2 succeeded, 1 failed; 3 runners launched, 3 stopped", lines[len(lines)-1])
	require.Contains(t, lines, "[count] line 2")
}
