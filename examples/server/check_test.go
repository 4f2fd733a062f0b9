package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/odrkit/odrkit/tasklauncher"
)

type checkConfig struct {
	Region string `hcl:"region"`
}

func checkRegistry() *tasklauncher.Registry {
	return tasklauncher.NewRegistry(tasklauncher.Plugin{
		Name:      "fake",
		NewConfig: func() any { return &checkConfig{} },
		New: func(any, tasklauncher.Options) (tasklauncher.Launcher, error) {
			return nil, errors.New("the check test launches nothing")
		},
	})
}

func TestRunCheckValid(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a.hcl"), []byte(`
runner_profile "a" {
  plugin = "fake"
  config { region = "eu" }
}
runner_profile "b" {
  plugin = "fake"
  config { region = "us" }
}
`), 0o600))
	var stdout, stderr bytes.Buffer
	code := runCheck(checkRegistry(), []string{dir}, &stdout, &stderr)
	require.Equal(t, 0, code)
	require.Equal(t, "2 profiles OK\n", stdout.String())
	require.Empty(t, stderr.String())
}

func TestRunCheckErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.hcl")
	require.NoError(t, os.WriteFile(path, []byte(`runner_profile "a" {
  plugin = "fakee"
}
runner_profile "b" {
  plugin          = "fake"
  startup_timeout = "soon"
  config { region = "eu" }
}
`), 0o600))
	var stdout, stderr bytes.Buffer
	code := runCheck(checkRegistry(), []string{path}, &stdout, &stderr)
	require.Equal(t, 1, code)
	require.Empty(t, stdout.String())

	lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
	require.Equal(t, []string{
		path + ":2:12: Unknown launcher plugin",
		`    No launcher plugin named "fakee" is registered in this host. Did you mean "fake"? Registered plugins: fake.`,
		path + ":6:21: Invalid startup_timeout",
		`    "soon" is not a duration: write a Go duration with a unit, such as "90s" or "5m". Valid units are ns, us, ms, s, m and h.`,
	}, lines)
}

func TestRunCheckMissingPath(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	var stdout, stderr bytes.Buffer
	code := runCheck(checkRegistry(), []string{missing}, &stdout, &stderr)
	require.Equal(t, 1, code)
	require.True(t, strings.HasPrefix(stderr.String(), missing+": Failed to read profile path\n"), stderr.String())
}

func TestRunCheckNoPaths(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := runCheck(checkRegistry(), nil, &stdout, &stderr)
	require.Equal(t, 2, code)
	require.Contains(t, stderr.String(), "no profile path given")
}
