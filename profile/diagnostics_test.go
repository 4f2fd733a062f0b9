package profile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/stretchr/testify/require"
)

// marker shows in test sources where a diagnostic's subject starts. It is
// removed before parsing.
const marker = "»"

// markedSource removes the marker from src and returns the 1-based line
// and column where it stood.
func markedSource(t *testing.T, src string) (string, int, int) {
	t.Helper()
	i := strings.Index(src, marker)
	require.GreaterOrEqual(t, i, 0, "test source has no %s marker", marker)
	before := src[:i]
	line := strings.Count(before, "\n") + 1
	col := i - strings.LastIndex(before, "\n")
	return strings.Replace(src, marker, "", 1), line, col
}

func TestParseDiagnostics(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		summary string
		detail  []string // words of the detail that tell the fix
	}{
		{
			name: "plugin not registered",
			src: `runner_profile "a" {
  plugin = »"dockr"
}`,
			summary: "Unknown launcher plugin",
			detail:  []string{`No launcher plugin named "dockr"`, `Did you mean "docker"?`, "Registered plugins: docker, exec, fake."},
		},
		{
			name: "plugin far from every name",
			src: `runner_profile "a" {
  plugin = »"kubernetes"
}`,
			summary: "Unknown launcher plugin",
			detail:  []string{"Registered plugins: docker, exec, fake."},
		},
		{
			name: "plugin missing",
			src: `»runner_profile "a" {
  default = true
}`,
			summary: "Missing plugin",
			detail:  []string{"needs a plugin attribute", "Registered plugins: docker, exec, fake."},
		},
		{
			name: "plugin wrong type",
			src: `runner_profile "a" {
  plugin = »["fake"]
}`,
			summary: "Invalid plugin value",
			detail:  []string{"must be the name of a launcher plugin", "tuple"},
		},
		{
			name: "unknown profile attribute",
			src: `runner_profile "a" {
  plugin = "exec"
  »oci_ulr = "x"
}`,
			summary: "Unsupported argument",
			detail:  []string{`Did you mean "oci_url"?`},
		},
		{
			name: "config key misspelled",
			src: `runner_profile "a" {
  plugin = "fake"
  config {
    region = "eu"
    »memroy = 512
  }
}`,
			summary: "Unsupported argument",
			detail:  []string{`Did you mean "memory"?`, `Valid keys for the "fake" plugin: image, memory, region.`},
		},
		{
			name: "config key unknown",
			src: `runner_profile "a" {
  plugin = "fake"
  config {
    region = "eu"
    »cpu_shares = 2
  }
}`,
			summary: "Unsupported argument",
			detail:  []string{`Valid keys for the "fake" plugin: image, memory, region.`},
		},
		{
			name: "config key for a plugin without config",
			src: `runner_profile "a" {
  plugin = "exec"
  config {
    »memory = 1
  }
}`,
			summary: "Unsupported argument",
			detail:  []string{`The "exec" plugin takes no config: remove the config block.`},
		},
		{
			name: "config value wrong type",
			src: `runner_profile "a" {
  plugin = "fake"
  config {
    region = "eu"
    memory = "»lots"
  }
}`,
			summary: "Unsuitable value type",
			detail:  []string{"a number is required"},
		},
		{
			name: "config required key missing",
			src: `runner_profile "a" {
  plugin = "fake"
  config »{
    memory = 512
  }
}`,
			summary: "Missing required argument",
			detail:  []string{`The argument "region" is required`},
		},
		{
			name: "config block missing with required key",
			src: `»runner_profile "a" {
  plugin = "fake"
}`,
			summary: "Missing required argument",
			detail:  []string{`"region" is required`, `The "fake" plugin needs it in the profile's config block`},
		},
		{
			name: "config rejected by Validate",
			src: `runner_profile "a" {
  plugin = "fake"
  »config {
    region = "eu"
    memory = 100000
  }
}`,
			summary: "Invalid plugin config",
			detail:  []string{`The "fake" plugin rejected this config`, "memory 100000 is more than 65536: lower it."},
		},
		{
			name: "config block twice",
			src: `runner_profile "a" {
  plugin = "fake"
  config { region = "eu" }
  »config { region = "us" }
}`,
			summary: "Duplicate config block",
			detail:  []string{"already defined at t.hcl:3", "Merge the two blocks."},
		},
		{
			name: "name twice",
			src: `runner_profile "a" {
  plugin = "exec"
}
runner_profile »"a" {
  plugin = "exec"
}`,
			summary: "Duplicate runner profile name",
			detail:  []string{"already defined at t.hcl:1", "Rename or remove one of the two"},
		},
		{
			name: "name not matching the pattern",
			src: `runner_profile »"Docker Small" {
  plugin = "exec"
}`,
			summary: "Invalid runner profile name",
			detail:  []string{NamePattern, "lowercase letters, digits", `such as "docker-small"`},
		},
		{
			name: "name too long",
			src: `runner_profile »"` + strings.Repeat("a", 65) + `" {
  plugin = "exec"
}`,
			summary: "Invalid runner profile name",
			detail:  []string{"1 to 64 lowercase letters"},
		},
		{
			name: "two defaults",
			src: `runner_profile "a" {
  plugin  = "exec"
  default = true
}
runner_profile "b" {
  plugin  = "exec"
  default = »true
}`,
			summary: "More than one default runner profile",
			detail:  []string{`"a" (t.hcl:3) and "b" (t.hcl:7)`, "Keep default = true on one of them only."},
		},
		{
			name: "default not a bool",
			src: `runner_profile "a" {
  plugin  = "exec"
  default = »"yes"
}`,
			summary: "Invalid default value",
			detail:  []string{"default must be true or false"},
		},
		{
			name: "duration without unit",
			src: `runner_profile "a" {
  plugin          = "exec"
  startup_timeout = »90
}`,
			summary: "Invalid startup_timeout",
			detail:  []string{`"90" is not a duration`, `such as "90s" or "5m"`, "Valid units are"},
		},
		{
			name: "duration misspelled",
			src: `runner_profile "a" {
  plugin          = "exec"
  startup_timeout = »"2 minutes"
}`,
			summary: "Invalid startup_timeout",
			detail:  []string{`"2 minutes" is not a duration`, `such as "90s" or "5m"`},
		},
		{
			name: "duration not positive",
			src: `runner_profile "a" {
  plugin          = "exec"
  startup_timeout = »"-5s"
}`,
			summary: "Invalid startup_timeout",
			detail:  []string{"is not positive", "remove startup_timeout to use the host's default"},
		},
		{
			name: "target runner with id and labels",
			src: `runner_profile "a" {
  plugin = "exec"
  target_runner {
    id     = "r1"
    »labels = { zone = "eu" }
  }
}`,
			summary: "Invalid target_runner",
			detail:  []string{"sets both id and labels", "keep id to select one runner, or labels"},
		},
		{
			name: "target runner with neither",
			src: `runner_profile "a" {
  plugin = "exec"
  »target_runner {
  }
}`,
			summary: "Invalid target_runner",
			detail:  []string{"sets neither id nor labels", `set id = "RUNNER_ID" or labels`},
		},
		{
			name: "target runner with empty labels",
			src: `runner_profile "a" {
  plugin = "exec"
  target_runner {
    labels = »{}
  }
}`,
			summary: "Empty target_runner labels",
			detail:  []string{"add at least one label"},
		},
		{
			name: "env key invalid",
			src: `runner_profile "a" {
  plugin = "exec"
  env    = { GOOD = "1", »"9BAD-NAME" = "2" }
}`,
			summary: "Invalid env key",
			detail:  []string{`"9BAD-NAME" is not a valid environment variable name`, "use letters, digits and \"_\", not starting with a digit"},
		},
		{
			name: "env overrides runner token",
			src: `runner_profile "a" {
  plugin = "exec"
  env    = { LOG_LEVEL = "debug", »ODRKIT_RUNNER_TOKEN = "forged" }
}`,
			summary: "Invalid env key",
			detail:  []string{`The env key "ODRKIT_RUNNER_TOKEN" is reserved`, "ODRKIT_RUNNER_", "remove the key"},
		},
		{
			name: "env overrides runner ID",
			src: `runner_profile "a" {
  plugin = "exec"
  env    = { »ODRKIT_RUNNER_ID = "odr-other" }
}`,
			summary: "Invalid env key",
			detail:  []string{`The env key "ODRKIT_RUNNER_ID" is reserved`},
		},
		{
			name: "env overrides runner on-demand flag",
			src: `runner_profile "a" {
  plugin = "exec"
  env    = { »"ODRKIT_RUNNER_ONDEMAND" = "0" }
}`,
			summary: "Invalid env key",
			detail:  []string{`The env key "ODRKIT_RUNNER_ONDEMAND" is reserved`},
		},
		{
			name: "env overrides runner labels in lower case",
			src: `runner_profile "a" {
  plugin = "exec"
  env    = { »odrkit_runner_labels = "zone=eu" }
}`,
			summary: "Invalid env key",
			detail:  []string{`The env key "odrkit_runner_labels" is reserved`},
		},
		{
			name: "env reserved key from a for expression",
			src: `runner_profile "a" {
  plugin = "exec"
  env    = »{ for k in ["ODRKIT_RUNNER_CONCURRENCY"] : k => "8" }
}`,
			summary: "Invalid env key",
			detail:  []string{`The env key "ODRKIT_RUNNER_CONCURRENCY" is reserved`},
		},
		{
			name: "env value not a string",
			src: `runner_profile "a" {
  plugin = "exec"
  env    = { LIST = »["a"] }
}`,
			summary: `Invalid env "LIST" value`,
			detail:  []string{"must be a string"},
		},
		{
			name: "env not a map",
			src: `runner_profile "a" {
  plugin = "exec"
  env    = »"A=1"
}`,
			summary: "Invalid env value",
			detail:  []string{"env must be a map of strings", `{ KEY = "value" }`},
		},
		{
			name: "max concurrent negative",
			src: `runner_profile "a" {
  plugin         = "exec"
  max_concurrent = »-1
}`,
			summary: "Invalid max_concurrent",
			detail:  []string{"The value -1 is negative", "or 0 for no limit"},
		},
		{
			name: "max concurrent fractional",
			src: `runner_profile "a" {
  plugin         = "exec"
  max_concurrent = »1.5
}`,
			summary: "Invalid max_concurrent",
			detail:  []string{"1.5 is not a whole number"},
		},
		{
			name: "launch retries fractional",
			src: `runner_profile "a" {
  plugin         = "exec"
  launch_retries = »2.5
}`,
			summary: "Invalid launch_retries",
			detail:  []string{"2.5 is not a whole number", "0 for none"},
		},
		{
			name: "env function variable unset",
			src: `runner_profile "a" {
  plugin = "exec"
  env    = { KEY = env("»ODRKIT_TEST_MISSING") }
}`,
			summary: "Invalid function argument",
			detail:  []string{"ODRKIT_TEST_MISSING is not set", `env("ODRKIT_TEST_MISSING", "fallback")`},
		},
		{
			name: "file function missing file",
			src: `runner_profile "a" {
  plugin = "exec"
  env    = { KEY = file("»no-such-file") }
}`,
			summary: "Invalid function argument",
			detail:  []string{`reading the file "no-such-file" failed`, "check that it exists"},
		},
		{
			name: "unknown function",
			src: `runner_profile "a" {
  plugin = "exec"
  env    = { KEY = »envv("X") }
}`,
			summary: "Call to unknown function",
			detail:  []string{`Did you mean "env"?`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src, line, col := markedSource(t, tt.src)
			path := filepath.Join(dir, "t.hcl")
			require.NoError(t, os.WriteFile(path, []byte(src), 0o600))

			set, diags := ParseOptions{LookupEnv: lookupIn(nil)}.LoadFiles(testRegistry(), path)
			require.Nil(t, set, "a set with errors is not returned")
			require.Len(t, diags, 1, diags.Error())
			d := diags[0]
			require.Equal(t, hcl.DiagError, d.Severity)
			require.Equal(t, tt.summary, d.Summary)
			require.NotNil(t, d.Subject)
			require.Equal(t, path, d.Subject.Filename)
			require.Equal(t, line, d.Subject.Start.Line, "line")
			require.Equal(t, col, d.Subject.Start.Column, "column")
			for _, want := range tt.detail {
				require.Contains(t, strings.ReplaceAll(d.Detail, path, "t.hcl"), want)
			}
		})
	}
}
