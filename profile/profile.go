// Package profile loads runner profiles. A runner profile is a named
// configuration of the launcher plugin that starts a job's on-demand
// runner: the plugin's config, the image, environment and limits, and the
// runner that executes the launch jobs.
//
// Profiles are written in HCL, in the native syntax or the HCL JSON syntax:
//
//	runner_profile "docker-small" {
//	  plugin          = "docker"
//	  default         = true
//	  oci_url         = "registry.example.com/acme/runner:1.4"
//	  env             = { LOG_LEVEL = "debug", API_KEY = env("ACME_API_KEY") }
//	  startup_timeout = "2m"
//	  max_concurrent  = 20
//	  target_runner { labels = { zone = "eu-west" } }
//	  config { memory = 512 }
//	}
//
// [Parse], [ParseFormat] and [LoadFiles] check every profile against the
// plugins of a [tasklauncher.Registry] and return HCL diagnostics with the
// file, line and column of each invalid value and the fix in the detail.
// The `config` block is decoded once, with the plugin's own schema, into the
// value that Plugin.NewConfig returns, and kept in [Profile.Config].
//
// Expressions may call two functions: env("NAME") or env("NAME", "default")
// reads a variable of the host's environment, and file("path") reads a file
// relative to the profile file's directory. Their results are secrets: this
// package leaves them out of every diagnostic and of the text that
// [Profile.String], [Profile.GoString] and [Profile.LogValue] return.
//
// Hosts that build profiles in Go pass them to [NewSet], which applies the
// same checks except those that need a registry or a source position.
package profile

import (
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// NamePattern is the regular expression every profile name must match:
// 1 to 64 characters of lowercase letters, digits, "-" and "_", starting
// and ending with a letter or digit, such as "docker-small".
const NamePattern = `^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$`

// EnvNamePattern is the regular expression every key of a profile's env
// must match: a letter or "_", then letters, digits and "_".
const EnvNamePattern = `^[A-Za-z_][A-Za-z0-9_]*$`

var (
	nameRegexp    = regexp.MustCompile(NamePattern)
	envNameRegexp = regexp.MustCompile(EnvNamePattern)
)

// redacted replaces secret values in printed profiles.
const redacted = "(sensitive)"

// Profile is one runner profile.
//
// A Profile held by a [Set] must not be modified: the set has checked it.
type Profile struct {
	// Name identifies the profile. It matches [NamePattern].
	Name string
	// Plugin is the name of the launcher plugin in the host's
	// tasklauncher.Registry, such as "docker".
	Plugin string
	// Default marks the profile used when a job names none. At most one
	// profile of a set is the default.
	Default bool
	// OCIURL is the image reference of the runner. Empty means the host's
	// default image.
	OCIURL string
	// Env is added to the runner's environment. Its values may be secrets,
	// so they are never printed.
	Env map[string]string
	// StartupTimeout bounds the time from launch until the runner
	// connects. Zero means the host's default.
	StartupTimeout time.Duration
	// MaxConcurrent bounds the number of runners of this profile that run
	// at once. Zero means no limit.
	MaxConcurrent int
	// LaunchRetries is how many times a launch that failed with a
	// transient error (see tasklauncher.Transient) is tried again, with
	// backoff. Zero means no retry.
	LaunchRetries int
	// TargetRunner selects the runner that executes the profile's start,
	// watch and stop jobs. Nil means the launcher runner embedded in the
	// host.
	TargetRunner *TargetRunner
	// Config is the plugin's config: the value that Plugin.NewConfig
	// returned, decoded from the profile's `config` block. When the block
	// is absent, it holds the plugin's defaults.
	Config any
	// DeclRange is the position of the profile's definition, such as the
	// `runner_profile "name"` header. It is zero for profiles built in Go.
	DeclRange hcl.Range

	// sensitive names the attributes, other than env, whose values were
	// read through env() or file(). String, GoString and LogValue redact
	// them.
	sensitive map[string]bool
}

// TargetRunner selects a static runner either by ID or by labels. Exactly
// one of ID and Labels is set.
type TargetRunner struct {
	// ID is the runner ID.
	ID string
	// Labels select any runner whose labels include all of them.
	Labels map[string]string
}

// String describes the profile for logs and messages. Env values and
// values read through env() or file() are redacted, and Config is left out
// because plugin configs may hold secrets.
func (p Profile) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "runner profile %q (plugin %s", p.Name, p.field("plugin", p.Plugin))
	if p.Default {
		b.WriteString(", default")
	}
	if p.OCIURL != "" {
		fmt.Fprintf(&b, ", oci_url %s", p.field("oci_url", p.OCIURL))
	}
	if len(p.Env) > 0 {
		fmt.Fprintf(&b, ", env keys %s", p.envKeysText())
	}
	if p.StartupTimeout != 0 {
		fmt.Fprintf(&b, ", startup_timeout %s", p.StartupTimeout)
	}
	if p.MaxConcurrent != 0 {
		fmt.Fprintf(&b, ", max_concurrent %d", p.MaxConcurrent)
	}
	if p.TargetRunner != nil {
		fmt.Fprintf(&b, ", target_runner %s", p.targetRunnerText())
	}
	if p.DeclRange.Filename != "" {
		fmt.Fprintf(&b, ", defined at %s:%d", p.DeclRange.Filename, p.DeclRange.Start.Line)
	}
	b.WriteString(")")
	return b.String()
}

// GoString implements fmt.GoStringer for the %#v verb, with the same
// redaction as String.
func (p Profile) GoString() string {
	env := make([]string, 0, len(p.Env))
	for _, k := range sortedKeys(p.Env) {
		if p.sensitive["env_keys"] {
			k = redacted
		}
		env = append(env, fmt.Sprintf("%q: %q", k, redacted))
	}
	target := "nil"
	if p.TargetRunner != nil {
		target = "&profile.TargetRunner{" + p.targetRunnerText() + "}"
	}
	return fmt.Sprintf("profile.Profile{Name: %q, Plugin: %s, Default: %t, OCIURL: %s, Env: {%s}, StartupTimeout: %s, MaxConcurrent: %d, TargetRunner: %s, Config: %s}",
		p.Name, p.field("plugin", p.Plugin), p.Default, p.field("oci_url", p.OCIURL), strings.Join(env, ", "),
		p.StartupTimeout, p.MaxConcurrent, target, configTypeName(p.Config))
}

// LogValue implements slog.LogValuer with the same redaction as String.
func (p Profile) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("name", p.Name),
		slog.String("plugin", p.field("plugin", p.Plugin)),
		slog.Bool("default", p.Default),
	}
	if p.OCIURL != "" {
		attrs = append(attrs, slog.String("oci_url", p.field("oci_url", p.OCIURL)))
	}
	if len(p.Env) > 0 {
		attrs = append(attrs, slog.String("env_keys", p.envKeysText()))
	}
	if p.StartupTimeout != 0 {
		attrs = append(attrs, slog.Duration("startup_timeout", p.StartupTimeout))
	}
	if p.MaxConcurrent != 0 {
		attrs = append(attrs, slog.Int("max_concurrent", p.MaxConcurrent))
	}
	if p.TargetRunner != nil {
		attrs = append(attrs, slog.String("target_runner", p.targetRunnerText()))
	}
	if p.DeclRange.Filename != "" {
		attrs = append(attrs, slog.String("defined_at", fmt.Sprintf("%s:%d", p.DeclRange.Filename, p.DeclRange.Start.Line)))
	}
	return slog.GroupValue(attrs...)
}

// field returns value quoted, or the redaction marker when the attribute
// was read through env() or file().
func (p Profile) field(attr, value string) string {
	if p.sensitive[attr] {
		return redacted
	}
	return fmt.Sprintf("%q", value)
}

// envKeysText lists the env keys, or only their number when a key was
// read through env() or file().
func (p Profile) envKeysText() string {
	if p.sensitive["env_keys"] {
		return fmt.Sprintf("(%d, sensitive)", len(p.Env))
	}
	return "[" + strings.Join(sortedKeys(p.Env), " ") + "]"
}

func (p Profile) targetRunnerText() string {
	t := p.TargetRunner
	if p.sensitive["target_runner"] {
		return redacted
	}
	if t.ID != "" {
		return fmt.Sprintf("id %q", t.ID)
	}
	pairs := make([]string, 0, len(t.Labels))
	for _, k := range sortedKeys(t.Labels) {
		pairs = append(pairs, fmt.Sprintf("%s=%q", k, t.Labels[k]))
	}
	return "labels {" + strings.Join(pairs, ", ") + "}"
}

func configTypeName(config any) string {
	if config == nil {
		return "nil"
	}
	return fmt.Sprintf("%T{...}", config)
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}

// checkName returns an error with the fix when name does not match
// NamePattern.
func checkName(name string) error {
	if nameRegexp.MatchString(name) {
		return nil
	}
	msg := fmt.Sprintf("the name %q does not match %s: use 1 to 64 lowercase letters, digits, \"-\" or \"_\", starting and ending with a letter or digit", name, NamePattern)
	if s := suggestName(name); s != "" {
		msg += fmt.Sprintf(", such as %q", s)
	}
	return fmt.Errorf("%s", msg)
}

// suggestName derives a valid profile name from an invalid one, or returns
// "" when nothing valid is left.
func suggestName(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteRune('-')
		}
	}
	s := strings.Trim(b.String(), "-_")
	if len(s) > 64 {
		s = strings.TrimRight(s[:64], "-_")
	}
	if !nameRegexp.MatchString(s) {
		return ""
	}
	return s
}

// ReservedEnvPrefix starts the names of the variables that carry an
// on-demand runner's identity, such as ODRKIT_RUNNER_ID and
// ODRKIT_RUNNER_TOKEN. A profile's env must not set them, in any letter
// case, so that a profile cannot change which runner a launched runner
// claims to be. Variables such as ODRKIT_SERVER_ADDR and ODRKIT_SERVER_TLS,
// which set how to reach the host, may be set.
const ReservedEnvPrefix = "ODRKIT_RUNNER_"

// checkEnvName returns an error with the fix when an env key does not
// match EnvNamePattern or starts with ReservedEnvPrefix.
func checkEnvName(key string) error {
	if !envNameRegexp.MatchString(key) {
		return fmt.Errorf("the env key %q is not a valid environment variable name: use letters, digits and \"_\", not starting with a digit (%s)", key, EnvNamePattern)
	}
	if strings.HasPrefix(strings.ToUpper(key), ReservedEnvPrefix) {
		return fmt.Errorf("the env key %q is reserved, because the host sets the variables that start with %s, such as the runner's ID and token, for each runner: remove the key", key, ReservedEnvPrefix)
	}
	return nil
}

// checkTargetRunner returns an error unless exactly one of ID and Labels is
// set.
func checkTargetRunner(t *TargetRunner) error {
	switch {
	case t.ID != "" && len(t.Labels) > 0:
		return fmt.Errorf("the target_runner block sets both id and labels: keep id to select one runner, or labels to select any runner that carries them")
	case t.ID == "" && len(t.Labels) == 0:
		return fmt.Errorf("the target_runner block sets neither id nor labels: set id = \"RUNNER_ID\" or labels = { key = \"value\" }, or remove target_runner to use the embedded launcher runner")
	}
	return nil
}
