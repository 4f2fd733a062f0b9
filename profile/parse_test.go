package profile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/stretchr/testify/require"
)

func TestParseValidProfile(t *testing.T) {
	src := `
runner_profile "docker-small" {
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
}

runner_profile "local" {
  plugin = "exec"
  target_runner { id = "launcher-1" }
}
`
	opts := ParseOptions{LookupEnv: lookupIn(map[string]string{"ACME_API_KEY": "k-123"})}
	set, diags := opts.Parse([]byte(src), "profiles.hcl", testRegistry())
	require.False(t, diags.HasErrors(), diags.Error())
	require.Equal(t, 2, set.Len())

	p, ok := set.Get("docker-small")
	require.True(t, ok)
	require.Equal(t, "fake", p.Plugin)
	require.True(t, p.Default)
	require.Equal(t, "registry.example.com/acme/runner:1.4", p.OCIURL)
	require.Equal(t, map[string]string{"LOG_LEVEL": "debug", "API_KEY": "k-123"}, p.Env)
	require.Equal(t, 2*time.Minute, p.StartupTimeout)
	require.Equal(t, 20, p.MaxConcurrent)
	require.Equal(t, &TargetRunner{Labels: map[string]string{"zone": "eu-west"}}, p.TargetRunner)
	require.Equal(t, &fakeConfig{Memory: 512, Region: "eu"}, p.Config)
	require.Equal(t, "profiles.hcl", p.DeclRange.Filename)
	require.Equal(t, 2, p.DeclRange.Start.Line)

	local, ok := set.Get("local")
	require.True(t, ok)
	require.Equal(t, &TargetRunner{ID: "launcher-1"}, local.TargetRunner)
	require.Equal(t, &emptyConfig{}, local.Config)
	require.Zero(t, local.StartupTimeout)
	require.Zero(t, local.MaxConcurrent)

	def, ok := set.Default()
	require.True(t, ok)
	require.Same(t, p, def)
	require.Equal(t, []*Profile{p, local}, set.All())
}

func TestParseConfigDefaultsKept(t *testing.T) {
	src := `
runner_profile "a" {
  plugin = "fake"
  config { region = "eu" }
}
`
	set, diags := Parse([]byte(src), "a.hcl", testRegistry())
	require.False(t, diags.HasErrors(), diags.Error())
	p, ok := set.Get("a")
	require.True(t, ok)
	require.Equal(t, &fakeConfig{Memory: 256, Region: "eu"}, p.Config, "memory keeps the plugin's default")
}

func TestParseExactNameLookup(t *testing.T) {
	src := `
runner_profile "docker-prod" {
  plugin = "exec"
}
runner_profile "docker2" {
  plugin = "exec"
}
`
	set, diags := Parse([]byte(src), "a.hcl", testRegistry())
	require.False(t, diags.HasErrors(), diags.Error())
	for _, name := range []string{"docker", "Docker-Prod", "docker-pro", "docker-prod ", "docker2x"} {
		_, ok := set.Get(name)
		require.False(t, ok, "Get(%q) must not match", name)
	}
	p, ok := set.Get("docker-prod")
	require.True(t, ok)
	require.Equal(t, "docker-prod", p.Name)

	_, ok = set.Default()
	require.False(t, ok, "no profile sets default = true")
}

func TestParseJSON(t *testing.T) {
	src := `{
  "runner_profile": {
    "docker-small": {
      "plugin": "fake",
      "default": true,
      "env": {"LOG_LEVEL": "debug", "API_KEY": "${env(\"ACME_API_KEY\")}"},
      "startup_timeout": "90s",
      "max_concurrent": 3,
      "target_runner": {"id": "launcher-1"},
      "config": {"memory": 1024, "region": "us"}
    }
  }
}`
	opts := ParseOptions{LookupEnv: lookupIn(map[string]string{"ACME_API_KEY": "k-123"})}
	for _, parse := range []func() (*Set, hcl.Diagnostics){
		func() (*Set, hcl.Diagnostics) { return opts.Parse([]byte(src), "profiles.json", testRegistry()) },
		func() (*Set, hcl.Diagnostics) {
			return opts.ParseFormat([]byte(src), "api request", FormatJSON, testRegistry())
		},
	} {
		set, diags := parse()
		require.False(t, diags.HasErrors(), diags.Error())
		p, ok := set.Get("docker-small")
		require.True(t, ok)
		require.True(t, p.Default)
		require.Equal(t, map[string]string{"LOG_LEVEL": "debug", "API_KEY": "k-123"}, p.Env)
		require.Equal(t, 90*time.Second, p.StartupTimeout)
		require.Equal(t, 3, p.MaxConcurrent)
		require.Equal(t, &TargetRunner{ID: "launcher-1"}, p.TargetRunner)
		require.Equal(t, &fakeConfig{Memory: 1024, Region: "us"}, p.Config)
	}
}

func TestParseJSONUnknownConfigKey(t *testing.T) {
	src := `{"runner_profile": {"a": {"plugin": "fake", "config": {"region": "eu", "memroy": 1}}}}`
	set, diags := ParseFormat([]byte(src), "api", FormatJSON, testRegistry())
	require.Nil(t, set)
	require.Len(t, diags, 1)
	d := diags[0]
	require.Equal(t, "Extraneous JSON object property", d.Summary)
	require.Contains(t, d.Detail, `Did you mean "memory"?`)
	require.Contains(t, d.Detail, "Valid keys for the \"fake\" plugin: image, memory, region.")
	require.Equal(t, 1, d.Subject.Start.Line)
	require.Equal(t, strings.Index(src, `"memroy"`)+1, d.Subject.Start.Column)
}

func TestParseFormatSelectsSyntax(t *testing.T) {
	hclSrc := []byte(`runner_profile "a" { plugin = "exec" }`)
	_, diags := ParseFormat(hclSrc, "api", FormatHCL, testRegistry())
	require.False(t, diags.HasErrors(), diags.Error())

	_, diags = ParseFormat(hclSrc, "api", FormatJSON, testRegistry())
	require.True(t, diags.HasErrors(), "native syntax is not JSON")

	_, diags = ParseFormat(hclSrc, "api", Format(7), testRegistry())
	require.True(t, diags.HasErrors())
	require.Equal(t, "Unknown profile format", diags[0].Summary)
}

func TestParseFileFunction(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "secrets"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "secrets", "token"), []byte("tok-42"), 0o600))
	path := filepath.Join(dir, "a.hcl")
	src := `runner_profile "a" {
  plugin = "exec"
  env    = { TOKEN = file("secrets/token") }
}
`
	set, diags := Parse([]byte(src), path, testRegistry())
	require.False(t, diags.HasErrors(), diags.Error())
	p, _ := set.Get("a")
	require.Equal(t, "tok-42", p.Env["TOKEN"])
}

func TestParseEnvDefault(t *testing.T) {
	src := `runner_profile "a" {
  plugin = "exec"
  env    = { LEVEL = env("ODRKIT_TEST_UNSET", "info") }
}
`
	set, diags := ParseOptions{LookupEnv: lookupIn(nil)}.Parse([]byte(src), "a.hcl", testRegistry())
	require.False(t, diags.HasErrors(), diags.Error())
	p, _ := set.Get("a")
	require.Equal(t, "info", p.Env["LEVEL"])
}

func TestParseEnvDefaultLookupIsProcessEnv(t *testing.T) {
	t.Setenv("ODRKIT_PROFILE_TEST_VAR", "from-process")
	src := `runner_profile "a" {
  plugin = "exec"
  env    = { V = env("ODRKIT_PROFILE_TEST_VAR") }
}
`
	set, diags := Parse([]byte(src), "a.hcl", testRegistry())
	require.False(t, diags.HasErrors(), diags.Error())
	p, _ := set.Get("a")
	require.Equal(t, "from-process", p.Env["V"])
}

func TestParseDisableFunctions(t *testing.T) {
	src := `runner_profile "a" {
  plugin = "exec"
  env    = { V = env("HOME") }
}
`
	set, diags := ParseOptions{DisableFunctions: true}.Parse([]byte(src), "a.hcl", testRegistry())
	require.Nil(t, set)
	require.True(t, diags.HasErrors())
	require.Contains(t, diags[0].Detail, "env() is disabled")
}

func TestLoadFilesDirectory(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600))
	}
	write("b.json", `{"runner_profile": {"from-json": {"plugin": "exec"}}}`)
	write("a.hcl", `runner_profile "first" {
  plugin = "exec"
}
runner_profile "second" {
  plugin  = "exec"
  default = true
}
`)
	write("notes.txt", `this is not a profile`)
	require.NoError(t, os.Mkdir(filepath.Join(dir, "sub.hcl"), 0o755))

	set, diags := LoadFiles(testRegistry(), dir)
	require.False(t, diags.HasErrors(), diags.Error())
	var names []string
	for _, p := range set.All() {
		names = append(names, p.Name)
	}
	require.Equal(t, []string{"first", "second", "from-json"}, names, "files in name order, profiles in file order")
	def, ok := set.Default()
	require.True(t, ok)
	require.Equal(t, "second", def.Name)
	first, _ := set.Get("first")
	require.Equal(t, filepath.Join(dir, "a.hcl"), first.DeclRange.Filename)

	// A file named explicitly next to its directory is read once.
	set, diags = LoadFiles(testRegistry(), dir, filepath.Join(dir, "a.hcl"))
	require.False(t, diags.HasErrors(), diags.Error())
	require.Equal(t, 3, set.Len())
}

func TestLoadFilesDuplicateAcrossFiles(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.hcl")
	b := filepath.Join(dir, "b.hcl")
	require.NoError(t, os.WriteFile(a, []byte("\nrunner_profile \"same\" {\n  plugin = \"exec\"\n}\n"), 0o600))
	require.NoError(t, os.WriteFile(b, []byte("runner_profile \"same\" {\n  plugin = \"exec\"\n}\n"), 0o600))

	set, diags := LoadFiles(testRegistry(), a, b)
	require.Nil(t, set)
	require.Len(t, diags, 1)
	d := diags[0]
	require.Equal(t, "Duplicate runner profile name", d.Summary)
	require.Equal(t, b, d.Subject.Filename)
	require.Equal(t, 1, d.Subject.Start.Line)
	require.Equal(t, 16, d.Subject.Start.Column)
	require.Contains(t, d.Detail, a+":2")
}

func TestLoadFilesErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.hcl")
	_, diags := LoadFiles(testRegistry(), missing)
	require.True(t, diags.HasErrors())
	require.Equal(t, "Failed to read profile path", diags[0].Summary)
	require.Equal(t, missing, diags[0].Subject.Filename)

	empty := t.TempDir()
	_, diags = LoadFiles(testRegistry(), empty)
	require.True(t, diags.HasErrors())
	require.Equal(t, "No profile files in directory", diags[0].Summary)
	require.Contains(t, diags[0].Detail, "contains no .hcl or .json files")
}

func TestLoadFilesNoPaths(t *testing.T) {
	set, diags := LoadFiles(testRegistry())
	require.False(t, diags.HasErrors())
	require.Zero(t, set.Len())
}

func TestParseJSONProfileList(t *testing.T) {
	src := `{"runner_profile": [{"a": {"plugin": "exec"}}, {"b": {"plugin": "exec", "default": true}}]}`
	set, diags := ParseFormat([]byte(src), "api", FormatJSON, testRegistry())
	require.False(t, diags.HasErrors(), diags.Error())
	require.Equal(t, 2, set.Len())
	def, ok := set.Default()
	require.True(t, ok)
	require.Equal(t, "b", def.Name)
}

func TestParseNullIsError(t *testing.T) {
	src := `runner_profile "a" {
  plugin = "exec"
  env    = null
}
`
	set, diags := Parse([]byte(src), "a.hcl", testRegistry())
	require.Nil(t, set)
	require.Len(t, diags, 1)
	require.Equal(t, "Missing env value", diags[0].Summary)
	require.Contains(t, diags[0].Detail, "remove it to use the default")
}
