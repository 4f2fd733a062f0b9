package launchertest_test

import (
	"encoding/json"
	"errors"
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/exec"
	"github.com/odrkit/odrkit/tasklauncher/launchertest"
	"github.com/odrkit/odrkit/tasklauncher/launchertest/testrunner"
)

// TestMain runs the test binary as the suite's runner program when the exec
// launcher starts it with testrunner.EnvMode set.
func TestMain(m *testing.M) {
	if os.Getenv(testrunner.EnvMode) != "" {
		os.Exit(testrunner.Main())
	}
	goleak.VerifyTestMain(m)
}

func TestExecLauncherConformance(t *testing.T) {
	executable, err := os.Executable()
	require.NoError(t, err)

	launchertest.Run(t, launchertest.Harness{
		Plugin: exec.Plugin(),
		Config: func(t *testing.T) any {
			cfg := exec.Plugin().NewConfig().(*exec.Config)
			cfg.StopGrace = "2s"
			return cfg
		},
		Runner: func(t *testing.T) *tasklauncher.LaunchInfo {
			return &tasklauncher.LaunchInfo{Entrypoint: []string{executable}}
		},
		RemoveTask: killProcessGroup,
	})
}

// killProcessGroup kills the runner's process group with SIGKILL, as an
// operator or the OOM killer would.
func killProcessGroup(t *testing.T, state []byte) {
	t.Helper()
	var st struct {
		PGID int `json:"pgid"`
	}
	require.NoError(t, json.Unmarshal(state, &st))
	require.Greater(t, st.PGID, 1, "process group in exec launcher state %s", state)
	err := syscall.Kill(-st.PGID, syscall.SIGKILL)
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		require.NoError(t, err)
	}
}
