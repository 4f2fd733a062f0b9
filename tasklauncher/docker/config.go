package docker

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/docker/go-units"
	"github.com/moby/moby/client"

	"github.com/odrkit/odrkit/tasklauncher"
)

// PluginName is the name of this plugin in runner profiles.
const PluginName = "docker"

// LabelLauncher is a label the launcher puts on every container it creates,
// with the value PluginName. ListTasks only returns containers that carry
// it, so that StopTask is never handed a container of another program.
const LabelLauncher = "odrkit.launcher"

// Defaults applied when the config leaves a key empty.
const (
	// DefaultNetworkMode is the network mode when neither network_mode nor
	// networks is set. Host networking lets a runner reach a host that
	// listens on 127.0.0.1.
	DefaultNetworkMode = "host"
	// DefaultStopTimeout is the time between SIGTERM and SIGKILL when a
	// task is stopped, the same as the Docker Engine's own default.
	DefaultStopTimeout = "10s"
)

// minMemoryBytes is the smallest memory limit the Docker Engine accepts:
// 6 MiB, as the memory option of the docker run reference states.
const minMemoryBytes = 6 << 20

// Config is the plugin's `config` block in a runner profile. Its keys follow
// Waypoint's docker task plugin (binds, client_config, debug_containers,
// force_pull, labels, networks, resources, static_environment) with the
// same meaning, plus network_mode and stop_timeout. Its json tags are used
// when the config is sent to a remote launcher runner.
type Config struct {
	// Binds are "source:destination[:options]" mounts from the Docker
	// host into the container, as in `docker run -v`.
	Binds []string `hcl:"binds,optional" json:"binds,omitempty"`

	// ClientConfig selects the Docker Engine. Without it the launcher
	// reads DOCKER_HOST, DOCKER_API_VERSION, DOCKER_CERT_PATH and
	// DOCKER_TLS_VERIFY, like the docker CLI.
	ClientConfig *ClientConfig `hcl:"client_config,block" json:"client_config,omitempty"`

	// DebugContainers keeps a task's container after StopTask has stopped
	// it, so that an operator can inspect it and read its logs. Such
	// containers are never removed by the launcher.
	DebugContainers bool `hcl:"debug_containers,optional" json:"debug_containers,omitempty"`

	// ForcePull pulls the image before every start. Without it the image
	// is pulled only when the engine does not have it.
	ForcePull bool `hcl:"force_pull,optional" json:"force_pull,omitempty"`

	// Labels are added to every container. The launch's own labels win on
	// equal keys, and the key odrkit.launcher is reserved.
	Labels map[string]string `hcl:"labels,optional" json:"labels,omitempty"`

	// Networks are the Docker networks the container joins. When
	// network_mode is empty, the first one is the container's network
	// mode and the others are connected before the container starts.
	Networks []string `hcl:"networks,optional" json:"networks,omitempty"`

	// Resources limits the container's CPU and memory.
	Resources *Resources `hcl:"resources,block" json:"resources,omitempty"`

	// StaticEnvironment is added to the runner's environment. The launch's
	// own environment wins on equal keys.
	StaticEnvironment map[string]string `hcl:"static_environment,optional" json:"static_environment,omitempty"`

	// NetworkMode is the container's network mode, as in `docker run
	// --network`: "host", "bridge", "none", "container:<name>" or a network
	// name. Empty means the first entry of networks, or DefaultNetworkMode
	// when networks is empty.
	NetworkMode string `hcl:"network_mode,optional" json:"network_mode,omitempty"`

	// StopTimeout is the time, as a Go duration such as "10s", that a
	// stopped container has between SIGTERM and SIGKILL. Docker counts it
	// in whole seconds, so it is rounded up. Empty means DefaultStopTimeout.
	StopTimeout string `hcl:"stop_timeout,optional" json:"stop_timeout,omitempty"`
}

// Resources limits a container's CPU and memory.
type Resources struct {
	// CPU is the container's CPU shares, a relative weight against other
	// containers as in `docker run --cpu-shares`. Zero leaves the engine's
	// default of 1024.
	CPU int64 `hcl:"cpu,optional" json:"cpu,omitempty"`

	// Memory is the container's memory limit with a decimal unit, such as
	// "512MB" (512,000,000 bytes) or "1GB". Empty means no limit.
	Memory string `hcl:"memory,optional" json:"memory,omitempty"`
}

// ClientConfig selects the Docker Engine and how to connect to it. Empty
// fields fall back to the DOCKER_* environment variables.
type ClientConfig struct {
	// Host is the engine's address, such as "unix:///var/run/docker.sock"
	// or "tcp://docker.example.com:2376". Empty means DOCKER_HOST, and
	// without it the platform's default socket.
	Host string `hcl:"host,optional" json:"host,omitempty"`

	// CertPath is a folder with ca.pem, cert.pem and key.pem for TLS to
	// the engine. Empty means DOCKER_CERT_PATH and DOCKER_TLS_VERIFY.
	CertPath string `hcl:"cert_path,optional" json:"cert_path,omitempty"`

	// APIVersion fixes the Engine API version, such as "1.41". Empty means
	// DOCKER_API_VERSION, and without it the version is negotiated.
	APIVersion string `hcl:"api_version,optional" json:"api_version,omitempty"`
}

var _ tasklauncher.ConfigValidator = (*Config)(nil)

// Validate checks the values of a decoded config. The error names each bad
// key and the fix. It never contains an environment value.
func (c *Config) Validate() error {
	if c == nil {
		return errors.New("docker launcher config is nil")
	}
	var errs []error
	for i, bind := range c.Binds {
		source, target, ok := strings.Cut(bind, ":")
		if !ok || source == "" || target == "" {
			errs = append(errs, fmt.Errorf("binds[%d]: %q is not \"source:destination\"; write it as in docker run -v, such as \"/srv/cache:/cache:ro\"", i, bind))
		}
	}
	for _, key := range slices.Sorted(maps.Keys(c.Labels)) {
		switch {
		case key == "":
			errs = append(errs, errors.New("labels: a label key is empty; remove the entry or name it"))
		case key == LabelLauncher:
			errs = append(errs, fmt.Errorf("labels: the key %s is set by the launcher to find its containers; remove it", LabelLauncher))
		}
	}
	for i, network := range c.Networks {
		if strings.TrimSpace(network) == "" {
			errs = append(errs, fmt.Errorf("networks[%d] is empty; remove it or name a Docker network", i))
		}
	}
	if len(c.Networks) > 0 && isIsolatedMode(c.NetworkMode) {
		errs = append(errs, fmt.Errorf("networks is set but network_mode is %q, which joins no other network; remove one of them", c.NetworkMode))
	}
	for _, key := range slices.Sorted(maps.Keys(c.StaticEnvironment)) {
		if err := validateEnvName(key); err != nil {
			errs = append(errs, fmt.Errorf("static_environment: %w", err))
		}
	}
	if c.Resources != nil {
		if c.Resources.CPU < 0 {
			errs = append(errs, fmt.Errorf("resources.cpu: %d is negative; set CPU shares of 2 or more, or 0 for the engine's default", c.Resources.CPU))
		}
		if _, err := parseMemory(c.Resources.Memory); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := parseStopTimeout(c.StopTimeout); err != nil {
		errs = append(errs, err)
	}
	if cc := c.ClientConfig; cc != nil && cc.Host != "" {
		if _, err := client.ParseHostURL(cc.Host); err != nil {
			errs = append(errs, fmt.Errorf("client_config.host: invalid address %q: %w; use a URL such as \"unix:///var/run/docker.sock\" or \"tcp://host:2376\"", cc.Host, err))
		}
	}
	return errors.Join(errs...)
}

// isIsolatedMode reports whether a network mode forbids joining networks.
func isIsolatedMode(mode string) bool {
	return mode == "host" || mode == "none" || strings.HasPrefix(mode, "container:")
}

// validateEnvName checks an environment variable name. Its error names the
// variable but never its value, because values can be secrets.
func validateEnvName(key string) error {
	switch {
	case key == "":
		return errors.New("a variable name is empty; remove the entry or name it")
	case strings.ContainsAny(key, "=\x00"):
		return fmt.Errorf("variable name %q contains '=' or a NUL byte; rename it", key)
	}
	return nil
}

// parseMemory returns the memory limit in bytes, or 0 for none.
func parseMemory(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := units.FromHumanSize(s)
	if err != nil {
		return 0, fmt.Errorf("resources.memory: invalid size %q: %w; write a number with a unit, such as \"512MB\" or \"2GB\"", s, err)
	}
	if n < minMemoryBytes {
		return 0, fmt.Errorf("resources.memory: %q is %d bytes, below the Docker Engine's minimum of 6 MiB; write it with a unit, such as \"512MB\"", s, n)
	}
	return n, nil
}

// parseStopTimeout returns the stop timeout in whole seconds, rounded up.
func parseStopTimeout(s string) (int, error) {
	if s == "" {
		s = DefaultStopTimeout
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("stop_timeout: invalid duration %q: %w; use a Go duration such as \"10s\" or \"1m\"", s, err)
	}
	if d < 0 {
		return 0, fmt.Errorf("stop_timeout: %q is negative; use a duration of 0s or more", s)
	}
	seconds := math.Ceil(d.Seconds())
	if seconds > math.MaxInt32 {
		return 0, fmt.Errorf("stop_timeout: %q is too long; use a duration below 68 years", s)
	}
	return int(seconds), nil
}

// networkMode returns the container's network mode and the networks to
// connect after the container is created.
func (c *Config) networkMode() (string, []string) {
	switch {
	case c.NetworkMode != "":
		return c.NetworkMode, c.Networks
	case len(c.Networks) > 0:
		return c.Networks[0], c.Networks[1:]
	default:
		return DefaultNetworkMode, nil
	}
}

func newConfig() *Config {
	return &Config{StopTimeout: DefaultStopTimeout}
}

// Plugin returns the docker plugin for a [tasklauncher.Registry]. Its
// NewConfig returns a *Config with the defaults set, and its New accepts
// that *Config.
func Plugin() tasklauncher.Plugin {
	return tasklauncher.NewPlugin(PluginName, newConfig, New)
}
