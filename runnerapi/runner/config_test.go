package runner

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// allEnvVars lists every variable ConfigFromEnv reads.
var allEnvVars = []string{
	EnvServerAddr, EnvServerTLS, EnvServerCAFile, EnvServerTLSSkipVerify, EnvClientCertFile, EnvClientKeyFile,
	EnvRunnerID, EnvRunnerToken, EnvRunnerLabels, EnvRunnerOnDemand, EnvRunnerConcurrency,
}

func TestConfigFromEnv(t *testing.T) {
	valid := map[string]string{
		EnvServerAddr:  "odrkit.example.com:9090",
		EnvRunnerID:    "runner-7",
		EnvRunnerToken: testToken,
	}
	with := func(changes map[string]string) map[string]string {
		env := make(map[string]string)
		for k, v := range valid {
			env[k] = v
		}
		for k, v := range changes {
			env[k] = v
		}
		return env
	}

	tests := []struct {
		name    string
		env     map[string]string
		want    Config
		wantErr []string
	}{
		{
			name: "minimal",
			env:  valid,
			want: Config{ServerAddr: "odrkit.example.com:9090", RunnerID: "runner-7", Token: testToken},
		},
		{
			name: "all variables",
			env: with(map[string]string{
				EnvServerTLS:         "true",
				EnvServerCAFile:      "/etc/odrkit/ca.pem",
				EnvRunnerLabels:      "zone=eu-west, gpu = yes",
				EnvRunnerOnDemand:    "1",
				EnvRunnerConcurrency: "1",
			}),
			want: Config{
				ServerAddr:  "odrkit.example.com:9090",
				TLS:         true,
				CAFile:      "/etc/odrkit/ca.pem",
				RunnerID:    "runner-7",
				Token:       testToken,
				Labels:      map[string]string{"zone": "eu-west", "gpu": "yes"},
				OnDemand:    true,
				Concurrency: 1,
			},
		},
		{
			name: "skip verify",
			env:  with(map[string]string{EnvServerTLS: "1", EnvServerTLSSkipVerify: "true"}),
			want: Config{ServerAddr: "odrkit.example.com:9090", TLS: true, TLSSkipVerify: true, RunnerID: "runner-7", Token: testToken},
		},
		{
			name:    "missing addr",
			env:     with(map[string]string{EnvServerAddr: ""}),
			wantErr: []string{EnvServerAddr + " is empty", "host:port"},
		},
		{
			name:    "missing runner ID and token",
			env:     with(map[string]string{EnvRunnerID: "", EnvRunnerToken: ""}),
			wantErr: []string{EnvRunnerID + " is empty", EnvRunnerToken + " is empty"},
		},
		{
			name:    "addr without port",
			env:     with(map[string]string{EnvServerAddr: "odrkit.example.com"}),
			wantErr: []string{EnvServerAddr + ` "odrkit.example.com" is not a host:port`},
		},
		{
			name:    "bad bool",
			env:     with(map[string]string{EnvServerTLS: "maybe"}),
			wantErr: []string{`invalid ` + EnvServerTLS + ` "maybe"`, "1, true, 0 or false"},
		},
		{
			name:    "bad labels",
			env:     with(map[string]string{EnvRunnerLabels: "zone=eu,gpu"}),
			wantErr: []string{"invalid " + EnvRunnerLabels, `label "gpu" is not key=value`},
		},
		{
			name:    "duplicate label",
			env:     with(map[string]string{EnvRunnerLabels: "zone=eu,zone=us"}),
			wantErr: []string{"invalid " + EnvRunnerLabels, `label key "zone" appears twice`},
		},
		{
			name:    "bad concurrency",
			env:     with(map[string]string{EnvRunnerConcurrency: "four"}),
			wantErr: []string{`invalid ` + EnvRunnerConcurrency + ` "four"`, "whole number"},
		},
		{
			name:    "on-demand with concurrency",
			env:     with(map[string]string{EnvRunnerOnDemand: "true", EnvRunnerConcurrency: "3"}),
			wantErr: []string{EnvRunnerConcurrency + " is 3 but the runner is on-demand"},
		},
		{
			name:    "CA file without TLS",
			env:     with(map[string]string{EnvServerCAFile: "/etc/odrkit/ca.pem"}),
			wantErr: []string{EnvServerCAFile + " is set but TLS is off"},
		},
		{
			name: "client certificate",
			env: with(map[string]string{
				EnvServerTLS:      "1",
				EnvClientCertFile: "/etc/odrkit/client.pem",
				EnvClientKeyFile:  "/etc/odrkit/client-key.pem",
			}),
			want: Config{
				ServerAddr:     "odrkit.example.com:9090",
				TLS:            true,
				ClientCertFile: "/etc/odrkit/client.pem",
				ClientKeyFile:  "/etc/odrkit/client-key.pem",
				RunnerID:       "runner-7",
				Token:          testToken,
			},
		},
		{
			name:    "client certificate without key",
			env:     with(map[string]string{EnvServerTLS: "1", EnvClientCertFile: "/etc/odrkit/client.pem"}),
			wantErr: []string{EnvClientKeyFile + " is empty but ClientCertFile is set"},
		},
		{
			name:    "client key without certificate",
			env:     with(map[string]string{EnvServerTLS: "1", EnvClientKeyFile: "/etc/odrkit/client-key.pem"}),
			wantErr: []string{EnvClientCertFile + " is empty but ClientKeyFile is set"},
		},
		{
			name:    "client certificate without TLS",
			env:     with(map[string]string{EnvClientCertFile: "/etc/odrkit/client.pem", EnvClientKeyFile: "/etc/odrkit/client-key.pem"}),
			wantErr: []string{EnvClientCertFile + " is set but TLS is off"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, name := range allEnvVars {
				t.Setenv(name, tt.env[name])
			}

			cfg, err := ConfigFromEnv()
			if len(tt.wantErr) > 0 {
				require.Error(t, err)
				for _, want := range tt.wantErr {
					require.ErrorContains(t, err, want)
				}
				require.NotContains(t, err.Error(), testToken)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, cfg)
		})
	}
}

func TestConfigValidate(t *testing.T) {
	valid := Config{ServerAddr: "127.0.0.1:9090", RunnerID: "runner-1", Token: testToken}
	tests := []struct {
		name    string
		change  func(*Config)
		wantErr string
	}{
		{name: "valid", change: func(*Config) {}},
		{name: "target URI", change: func(c *Config) { c.ServerAddr = "dns:///odrkit.example.com:9090" }},
		{name: "empty addr", change: func(c *Config) { c.ServerAddr = "" }, wantErr: "ServerAddr is empty"},
		{name: "empty runner ID", change: func(c *Config) { c.RunnerID = "" }, wantErr: "RunnerID is empty"},
		{name: "empty token", change: func(c *Config) { c.Token = "" }, wantErr: "Token is empty"},
		{name: "negative concurrency", change: func(c *Config) { c.Concurrency = -1 }, wantErr: "Concurrency is -1"},
		{name: "skip verify without TLS", change: func(c *Config) { c.TLSSkipVerify = true }, wantErr: "TLSSkipVerify is set but TLS is off"},
		{
			name:    "skip verify with CA file",
			change:  func(c *Config) { c.TLS, c.TLSSkipVerify, c.CAFile = true, true, "/ca.pem" },
			wantErr: "TLSSkipVerify is set together with CAFile",
		},
		{
			name:   "client certificate",
			change: func(c *Config) { c.TLS, c.ClientCertFile, c.ClientKeyFile = true, "/client.pem", "/client-key.pem" },
		},
		{
			name:    "client certificate without key",
			change:  func(c *Config) { c.TLS, c.ClientCertFile = true, "/client.pem" },
			wantErr: "ClientKeyFile is empty but ClientCertFile is set",
		},
		{
			name:    "client key without certificate",
			change:  func(c *Config) { c.TLS, c.ClientKeyFile = true, "/client-key.pem" },
			wantErr: "ClientCertFile is empty but ClientKeyFile is set",
		},
		{
			name:    "client certificate without TLS",
			change:  func(c *Config) { c.ClientCertFile, c.ClientKeyFile = "/client.pem", "/client-key.pem" },
			wantErr: "ClientCertFile is set but TLS is off",
		},
		{name: "empty label key", change: func(c *Config) { c.Labels = map[string]string{"": "x"} }, wantErr: "Labels has an empty key"},
		{name: "negative connect timeout", change: func(c *Config) { c.ConnectTimeout = -1 }, wantErr: "ConnectTimeout is -1ns"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid
			tt.change(&cfg)
			err := cfg.Validate()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestConfigFormattingRedactsToken(t *testing.T) {
	cfg := Config{ServerAddr: "127.0.0.1:9090", RunnerID: "runner-1", Token: testToken}

	require.NotContains(t, fmt.Sprint(cfg), testToken)
	require.NotContains(t, fmt.Sprintf("%+v", cfg), testToken)
	require.NotContains(t, fmt.Sprintf("%#v", cfg), testToken)
	require.NotContains(t, fmt.Sprintf("%v", &cfg), testToken)
	require.Contains(t, fmt.Sprintf("%#v", cfg), "REDACTED")

	var logs strings.Builder
	slog.New(slog.NewTextHandler(&logs, nil)).Info("config", "config", cfg)
	require.Contains(t, logs.String(), "runner-1")
	require.NotContains(t, logs.String(), testToken)
}

func TestNewRejectsBadCAFile(t *testing.T) {
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(notPEM, []byte("not a certificate"), 0o600))
	cfg := Config{ServerAddr: "127.0.0.1:9090", RunnerID: "runner-1", Token: testToken, TLS: true}

	cfg.CAFile = notPEM
	_, err := New(cfg)
	require.ErrorContains(t, err, "contains no PEM certificate")

	cfg.CAFile = filepath.Join(t.TempDir(), "missing.pem")
	_, err = New(cfg)
	require.ErrorIs(t, err, os.ErrNotExist)
}
