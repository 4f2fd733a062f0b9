package profile

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// fuzzSecret is the value of every variable that env() finds while
// fuzzing. Inputs that contain a piece of it are not checked for leaks,
// because there the text may come from the source itself.
const fuzzSecret = "Qx7-fuzz-secret-Wv3"

func FuzzParse(f *testing.F) {
	seeds := []string{
		`runner_profile "docker-small" {
  plugin          = "fake"
  default         = true
  oci_url         = "registry.example.com/acme/runner:1.4"
  env             = { LOG_LEVEL = "debug", API_KEY = env("ACME_API_KEY") }
  startup_timeout = "2m"
  max_concurrent  = 20
  target_runner { labels = { zone = "eu-west" } }
  config {
    memory = 512
    region = "eu"
  }
}`,
		`runner_profile "a" { plugin = "exec" }
runner_profile "a" { plugin = "exec" }`,
		`runner_profile "Bad Name" { plugin = "dockr" }`,
		`runner_profile "a" {
  plugin = "fake"
  config { memroy = 1, region = 2, memory = "x" }
}`,
		`runner_profile "a" {
  plugin = "exec"
  startup_timeout = "-1s"
  max_concurrent = 1.5
  target_runner { id = "x", labels = {} }
  env = { "1X" = ["a"], (env("K")) = file("f") }
}`,
		`runner_profile "a" {
  plugin = "exec"
  env = { for k in [env("A"), env("A")] : k => "${k}-${env("B", "d")}" }
  max_concurrent = env("N") == "" ? 1 : -1
}`,
		`runner_profile "a" { plugin = null, default = null, env = null }`,
		`runner_profile "a" { plugin = "fake" config { region = "eu" } config {} }`,
		`runner_profile { }`,
		`runner_profile "a" "b" { plugin = "exec" }`,
		`{"runner_profile": {"a": {"plugin": "fake", "env": {"K": "${env(\"K\")}"}, "config": {"region": "eu"}}}}`,
		`{"runner_profile": [{"a": {"plugin": "exec"}}, {"b": {"plugin": "exec", "default": true}}]}`,
		`{"runner_profile": {"a": {"plugin": 1, "max_concurrent": "x", "target_runner": [{}, {}]}}}`,
		`runner_profile "a" { plugin = "exec" max_concurrent = 1e400 }`,
		`runner_profile "a" { plugin = "exec"
  env = { A = file(env("X")) } }`,
	}
	for _, s := range seeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	reg := testRegistry()
	f.Fuzz(func(t *testing.T, src []byte, json bool) {
		format := FormatHCL
		if json {
			format = FormatJSON
		}
		opts := ParseOptions{
			LookupEnv: func(name string) (string, bool) { return fuzzSecret, name != "UNSET" },
			// file() resolves against an empty directory, so fuzzing
			// reads no files except by absolute path.
			BaseDir: t.TempDir(),
		}
		set, diags := opts.ParseFormat(src, "fuzz.hcl", format, reg)
		if diags.HasErrors() {
			require.Nil(t, set)
		} else {
			// Whatever loads also passes the checks for Go-built sets.
			_, err := NewSet(set.All()...)
			require.NoError(t, err)
			for _, p := range set.All() {
				_ = p.String()
				_ = p.GoString()
				_ = p.LogValue()
			}
		}
		if containsSecretPiece(string(src)) {
			return
		}
		for _, d := range diags {
			require.NotContains(t, d.Error(), fuzzSecret)
		}
		if set != nil {
			for _, p := range set.All() {
				require.NotContains(t, p.String(), fuzzSecret)
				require.NotContains(t, p.GoString(), fuzzSecret)
				require.NotContains(t, p.LogValue().String(), fuzzSecret)
			}
		}
	})
}

func containsSecretPiece(src string) bool {
	for _, piece := range []string{"Qx7", "fuzz-secret", "Wv3", "fuzz", "secret"} {
		if strings.Contains(src, piece) {
			return true
		}
	}
	return false
}
