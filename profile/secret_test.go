package profile

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const (
	secretValue = "hunter2-very-secret-value"
	// shortSecret is short enough to appear by chance in other text, so
	// only diagnostics near the expression that reads it are scrubbed.
	shortSecret = "zq7"
	// numberSecret is a number that a plugin's Validate error prints.
	numberSecret = "99999"
)

var secretEnv = map[string]string{
	"SECRET":   secretValue,
	"SHORT":    shortSecret,
	"NUM":      numberSecret,
	"NAME_VAR": "SECRET",
}

// secretsInErrors is a file whose profiles, except the first, use secrets
// in invalid places.
const secretsInErrors = `
runner_profile "ok" {
  plugin  = "fake"
  oci_url = env("SECRET")
  env     = { TOKEN = env("SECRET"), SHORT = env("SHORT") }
  config {
    region = "eu"
    image  = env("SECRET")
  }
}

runner_profile "bad" {
  plugin          = env("SECRET")
  startup_timeout = env("SECRET")
  max_concurrent  = env("SECRET")
  default         = env("SECRET")
  env             = { (env("SECRET")) = "x", (env("SHORT")) = "y" }
  target_runner {
    id     = env("SECRET")
    labels = { a = env("SECRET") }
  }
}

runner_profile "bad2" {
  plugin  = "fake"
  oci_url = "has space ${env("SECRET")}"
  env     = { for k in [env("SECRET"), env("SECRET")] : k => "v" }
  config {
    region = "eu"
    memory = env("NUM")
  }
}

runner_profile "bad3" {
  plugin         = "fake"
  max_concurrent = env("SHORT")
  env            = { A = env(env("NAME_VAR")), B = env(env("SECRET")) }
  config {
    region = env("SECRET")
    memory = env("SECRET")
    image  = file(env("SECRET"))
  }
}
`

func requireNoSecret(t *testing.T, text, where string) {
	t.Helper()
	for _, s := range []string{secretValue, numberSecret, shortSecret} {
		require.NotContains(t, text, s, "%s shows a secret", where)
	}
}

func TestSecretsNotInDiagnostics(t *testing.T) {
	set, diags := ParseOptions{LookupEnv: lookupIn(secretEnv)}.Parse([]byte(secretsInErrors), "s.hcl", testRegistry())
	require.Nil(t, set)
	require.True(t, diags.HasErrors())

	// Each invalid use above yields one diagnostic; fewer would mean that
	// an error was lost rather than scrubbed.
	require.Len(t, diags, 13, diags.Error())

	requireNoSecret(t, diags.Error(), "diags.Error()")
	for _, d := range diags {
		requireNoSecret(t, d.Summary, "Summary")
		requireNoSecret(t, d.Detail, "Detail")
		requireNoSecret(t, d.Error(), "Error()")
		require.Nil(t, d.Expression, "Expression lets a writer print values")
		require.Nil(t, d.EvalContext, "EvalContext lets a writer print values")
	}

	var text bytes.Buffer
	wr := hclDiagnosticText(t, &text, diags)
	requireNoSecret(t, wr, "diagnostic text writer")
}

func TestSecretsScrubbedFromHCLMessages(t *testing.T) {
	// A for expression that produces a key twice quotes the key in its
	// HCL diagnostic.
	src := `runner_profile "a" {
  plugin = "exec"
  env    = { for k in [env("SECRET"), env("SECRET")] : k => "v" }
}
`
	_, diags := ParseOptions{LookupEnv: lookupIn(secretEnv)}.Parse([]byte(src), "a.hcl", testRegistry())
	require.Len(t, diags, 1)
	require.Equal(t, "Duplicate object key", diags[0].Summary)
	require.Contains(t, diags[0].Detail, "The detail is hidden because it would show a value read through env() or file().")
	requireNoSecret(t, diags[0].Detail, "Detail")
}

func TestSecretsNotInValidateError(t *testing.T) {
	src := `runner_profile "a" {
  plugin = "fake"
  config {
    region = "eu"
    memory = env("NUM")
  }
}
`
	_, diags := ParseOptions{LookupEnv: lookupIn(secretEnv)}.Parse([]byte(src), "a.hcl", testRegistry())
	require.Len(t, diags, 1)
	require.Equal(t, "Invalid plugin config", diags[0].Summary)
	requireNoSecret(t, diags[0].Detail, "Detail")
}

func TestSecretsNotInFileErrors(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tok"), []byte(secretValue+"\n"), 0o600))
	src := `runner_profile "a" {
  plugin = "fake"
  config {
    region = "eu"
    memory = file("tok")
  }
}
`
	_, diags := Parse([]byte(src), filepath.Join(dir, "a.hcl"), testRegistry())
	require.Len(t, diags, 1)
	require.Equal(t, "Unsuitable value type", diags[0].Summary)
	requireNoSecret(t, diags.Error(), "diags.Error()")
}

func TestSecretsNotPrinted(t *testing.T) {
	src := `runner_profile "ok" {
  plugin  = "fake"
  oci_url = env("SECRET")
  env     = { TOKEN = env("SECRET"), PLAIN = "plain-value", (env("SHORT")) = "x" }
  target_runner { labels = { zone = env("NUM") } }
  config {
    region = "eu"
    image  = env("SECRET")
  }
}
`
	set, diags := ParseOptions{LookupEnv: lookupIn(secretEnv)}.Parse([]byte(src), "ok.hcl", testRegistry())
	require.False(t, diags.HasErrors(), diags.Error())
	p, ok := set.Get("ok")
	require.True(t, ok)
	require.Equal(t, secretValue, p.OCIURL, "the profile keeps the real value")

	var logs bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	logger.Info("loaded", "profile", p)
	logger.Info("loaded", "profile", *p)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("loaded", "profile", p)

	outputs := map[string]string{
		"String":   p.String(),
		"GoString": p.GoString(),
		"%v":       fmt.Sprintf("%v", p),
		"%+v":      fmt.Sprintf("%+v", p),
		"%#v":      fmt.Sprintf("%#v", p),
		"%v value": fmt.Sprintf("%v", *p),
		"%s value": fmt.Sprintf("%s", *p),
		"logs":     logs.String(),
	}
	for where, out := range outputs {
		requireNoSecret(t, out, where)
		require.NotContains(t, out, "plain-value", "%s shows an env value", where)
		require.Contains(t, out, "ok", "%s names the profile", where)
	}
	require.Contains(t, p.String(), `oci_url (sensitive)`)
	require.Contains(t, p.String(), `env keys (3, sensitive)`)
}

func TestStringShowsPlainValues(t *testing.T) {
	p := &Profile{
		Name:         "a",
		Plugin:       "docker",
		OCIURL:       "img:1",
		Env:          map[string]string{"B": "v1", "A": "v2"},
		TargetRunner: &TargetRunner{ID: "r1"},
		Config:       &fakeConfig{Image: "config-value"},
	}
	s := p.String()
	require.Equal(t, `runner profile "a" (plugin "docker", oci_url "img:1", env keys [A B], target_runner id "r1")`, s)
	require.NotContains(t, p.GoString(), "v1")
	require.NotContains(t, p.GoString(), "config-value", "config may hold secrets")
	require.True(t, strings.Contains(p.GoString(), "*profile.fakeConfig"))
}
