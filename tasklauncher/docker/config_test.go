package docker_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/docker"
)

// waypointProfile uses every key of Waypoint's docker task plugin, and the
// two keys this plugin adds.
const waypointProfile = `
runner_profile "docker-full" {
  plugin = "docker"
  config {
    binds              = ["/srv/cache:/cache:ro"]
    debug_containers   = true
    force_pull         = true
    labels             = { team = "ci" }
    networks           = ["runners", "monitoring"]
    static_environment = { MODE = "runner" }
    network_mode       = "bridge"
    stop_timeout       = "30s"

    resources {
      cpu    = 512
      memory = "512MB"
    }

    client_config {
      host        = "tcp://127.0.0.1:2376"
      cert_path   = "/etc/docker/certs"
      api_version = "1.41"
    }
  }
}
`

func fullConfig() *docker.Config {
	return &docker.Config{
		Binds:             []string{"/srv/cache:/cache:ro"},
		DebugContainers:   true,
		ForcePull:         true,
		Labels:            map[string]string{"team": "ci"},
		Networks:          []string{"runners", "monitoring"},
		StaticEnvironment: map[string]string{"MODE": "runner"},
		NetworkMode:       "bridge",
		StopTimeout:       "30s",
		Resources:         &docker.Resources{CPU: 512, Memory: "512MB"},
		ClientConfig: &docker.ClientConfig{
			Host:       "tcp://127.0.0.1:2376",
			CertPath:   "/etc/docker/certs",
			APIVersion: "1.41",
		},
	}
}

func TestConfigDecodesFromProfile(t *testing.T) {
	set, diags := profile.Parse([]byte(waypointProfile), "profiles.hcl", tasklauncher.NewRegistry(docker.Plugin()))
	require.False(t, diags.HasErrors(), diags.Error())
	p, ok := set.Get("docker-full")
	require.True(t, ok)
	require.Equal(t, fullConfig(), p.Config)
}

func TestConfigDefaultsFromEmptyBlock(t *testing.T) {
	src := `runner_profile "docker-default" { plugin = "docker" }`
	set, diags := profile.Parse([]byte(src), "profiles.hcl", tasklauncher.NewRegistry(docker.Plugin()))
	require.False(t, diags.HasErrors(), diags.Error())
	p, ok := set.Get("docker-default")
	require.True(t, ok)
	require.Equal(t, &docker.Config{StopTimeout: docker.DefaultStopTimeout}, p.Config)
}

func TestConfigJSONRoundTrip(t *testing.T) {
	for name, cfg := range map[string]*docker.Config{
		"full":     fullConfig(),
		"defaults": docker.Plugin().NewConfig().(*docker.Config),
	} {
		t.Run(name, func(t *testing.T) {
			encoded, err := json.Marshal(cfg)
			require.NoError(t, err)
			decoded := docker.Plugin().NewConfig()
			require.NoError(t, json.Unmarshal(encoded, decoded))
			require.Equal(t, cfg, decoded)
		})
	}
}

func TestConfigValidateRejects(t *testing.T) {
	cases := []struct {
		name   string
		modify func(c *docker.Config)
		want   string
	}{
		{"BindWithoutTarget", func(c *docker.Config) { c.Binds = []string{"/srv/cache"} }, `binds[0]: "/srv/cache" is not "source:destination"`},
		{"ReservedLabel", func(c *docker.Config) { c.Labels = map[string]string{docker.LabelLauncher: "x"} }, "labels: the key odrkit.launcher is set by the launcher"},
		{"EmptyNetwork", func(c *docker.Config) { c.Networks = []string{" "} }, "networks[0] is empty"},
		{"NetworksWithHostMode", func(c *docker.Config) { c.Networks = []string{"runners"}; c.NetworkMode = "host" }, `networks is set but network_mode is "host"`},
		{"EnvNameWithEquals", func(c *docker.Config) { c.StaticEnvironment = map[string]string{"A=B": "secret-value"} }, `static_environment: variable name "A=B"`},
		{"NegativeCPU", func(c *docker.Config) { c.Resources = &docker.Resources{CPU: -1} }, "resources.cpu: -1 is negative"},
		{"MemoryWithoutUnit", func(c *docker.Config) { c.Resources = &docker.Resources{Memory: "512"} }, `resources.memory: "512" is 512 bytes, below the Docker Engine's minimum of 6 MiB`},
		{"MemoryNotASize", func(c *docker.Config) { c.Resources = &docker.Resources{Memory: "lots"} }, `resources.memory: invalid size "lots"`},
		{"StopTimeoutNotADuration", func(c *docker.Config) { c.StopTimeout = "soon" }, `stop_timeout: invalid duration "soon"`},
		{"NegativeStopTimeout", func(c *docker.Config) { c.StopTimeout = "-1s" }, `stop_timeout: "-1s" is negative`},
		{"HostNotAURL", func(c *docker.Config) { c.ClientConfig = &docker.ClientConfig{Host: "nowhere"} }, `client_config.host: invalid address "nowhere"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := docker.Plugin().NewConfig().(*docker.Config)
			tc.modify(cfg)
			err := cfg.Validate()
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), "secret-value", "an error must not contain an environment value")

			_, err = docker.New(cfg, tasklauncher.Options{})
			require.ErrorContains(t, err, tc.want, "New must reject what Validate rejects")
		})
	}
}

func TestConfigValidateAccepts(t *testing.T) {
	require.NoError(t, fullConfig().Validate())
	require.NoError(t, docker.Plugin().NewConfig().(*docker.Config).Validate())
}
