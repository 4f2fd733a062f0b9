package exec

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/odrkit/odrkit/tasklauncher"
)

// PluginName is the name of this plugin in runner profiles.
const PluginName = "exec"

// LabelsEnv is the environment variable that carries a task's labels, as a
// JSON object, into the runner process. ListTasks finds tasks by reading it
// from /proc/PID/environ, so neither Config.Env nor LaunchInfo.Env may set it.
const LabelsEnv = "ODRKIT_TASK_LABELS"

// DefaultStopGrace is the stop grace that New applies when
// Config.StopGrace is empty, and that Plugin().NewConfig sets.
const DefaultStopGrace = "5s"

// DefaultMaxOutputLines was the default of Config.MaxOutputLines.
//
// Deprecated: the launcher keeps no output lines in memory, so the value
// has no effect.
const DefaultMaxOutputLines = 10000

// Config is the plugin's `config` block in a runner profile. Its hcl tags
// are the block's schema. Its json tags are used when the config is sent to
// a remote launcher runner.
type Config struct {
	// Command is the executable to run. A name without a slash is looked up
	// in PATH. Empty means the launch's entrypoint, and without one the
	// host's own executable, so that one binary can be host and runner.
	Command string `hcl:"command,optional" json:"command,omitempty"`

	// Args replaces the launch's entrypoint arguments and arguments when not
	// empty.
	Args []string `hcl:"args,optional" json:"args,omitempty"`

	// Dir is the working directory of the runner. Empty means the host's
	// working directory.
	Dir string `hcl:"dir,optional" json:"dir,omitempty"`

	// Env is added to the host's environment. The launch's own environment
	// is added after it and wins on equal keys.
	Env map[string]string `hcl:"env,optional" json:"env,omitempty"`

	// StopGrace is the time, as a Go duration such as "5s", between SIGTERM
	// and SIGKILL to the runner's process group when a task is stopped.
	// "0s" sends SIGKILL right after SIGTERM. Empty means DefaultStopGrace.
	StopGrace string `hcl:"stop_grace,optional" json:"stop_grace,omitempty"`

	// OutputDir is the directory that receives each runner's stdout and
	// stderr, as the files TASK.stdout and TASK.stderr named after the task
	// ID. A relative path is resolved against the host's working directory
	// when the launcher is created. New creates the directory with mode
	// 0700 when it does not exist. Empty means DefaultOutputDir().
	OutputDir string `hcl:"output_dir,optional" json:"output_dir,omitempty"`

	// MaxOutputLines was the number of output lines kept in memory per
	// task. Validate still rejects a negative value, as it did before.
	//
	// Deprecated: output goes to files, which WatchTask streams, so the
	// launcher keeps no lines in memory and the value has no effect.
	MaxOutputLines int `hcl:"max_output_lines,optional" json:"max_output_lines,omitempty"`
}

var _ tasklauncher.ConfigValidator = (*Config)(nil)

// Validate checks the values of a decoded config. The error names each bad
// key and the fix.
func (c *Config) Validate() error {
	if c == nil {
		return errors.New("exec launcher config is nil")
	}
	var errs []error
	if strings.ContainsRune(c.Command, 0) {
		errs = append(errs, errors.New("command: contains a NUL byte; remove it"))
	}
	for i, arg := range c.Args {
		if strings.ContainsRune(arg, 0) {
			errs = append(errs, fmt.Errorf("args[%d]: contains a NUL byte; remove it", i))
		}
	}
	if strings.ContainsRune(c.Dir, 0) {
		errs = append(errs, errors.New("dir: contains a NUL byte; remove it"))
	}
	for _, key := range slices.Sorted(maps.Keys(c.Env)) {
		if err := validateEnvEntry(key, c.Env[key]); err != nil {
			errs = append(errs, fmt.Errorf("env: %w", err))
		}
	}
	if strings.ContainsRune(c.OutputDir, 0) {
		errs = append(errs, errors.New("output_dir: contains a NUL byte; remove it"))
	}
	if _, err := parseStopGrace(c.StopGrace); err != nil {
		errs = append(errs, err)
	}
	if c.MaxOutputLines < 0 {
		errs = append(errs, fmt.Errorf("max_output_lines: %d is negative; remove the key, which has no effect since output goes to files", c.MaxOutputLines))
	}
	return errors.Join(errs...)
}

// validateEnvEntry checks one environment variable. Its error names the key
// but never the value, because values can be secrets.
func validateEnvEntry(key, value string) error {
	switch {
	case key == "":
		return errors.New("a variable name is empty; remove the entry or name it")
	case strings.ContainsAny(key, "=\x00"):
		return fmt.Errorf("variable name %q contains '=' or a NUL byte; rename it", key)
	case key == LabelsEnv:
		return fmt.Errorf("variable %s is set by the launcher from the task's labels; remove it and set labels instead", LabelsEnv)
	case strings.ContainsRune(value, 0):
		return fmt.Errorf("the value of variable %q contains a NUL byte; remove it", key)
	}
	return nil
}

func parseStopGrace(s string) (time.Duration, error) {
	if s == "" {
		s = DefaultStopGrace
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("stop_grace: %q is not a duration; use a Go duration such as \"5s\" or \"1m30s\"", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("stop_grace: %q is negative; use a duration of 0s or more", s)
	}
	return d, nil
}

func newConfig() *Config {
	return &Config{StopGrace: DefaultStopGrace}
}

// Plugin returns the exec plugin for a [tasklauncher.Registry]. Its
// NewConfig returns a *Config with the defaults set, and its New accepts
// that *Config.
func Plugin() tasklauncher.Plugin {
	return tasklauncher.NewPlugin(PluginName, newConfig, New)
}
