package runnerapi_test

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/odrkit/odrkit/internal/testpki"
	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/runnerapi"
	"github.com/odrkit/odrkit/runnerapi/runner"
)

// tlsSetup is a CA with a server certificate for 127.0.0.1 and a client
// certificate, all in PEM files.
type tlsSetup struct {
	ca                    *testpki.CA
	serverCert, serverKey string
	clientCert, clientKey string
}

func newTLSSetup(t *testing.T) *tlsSetup {
	t.Helper()
	ca := testpki.NewCA(t, "odrkit test CA")
	s := &tlsSetup{ca: ca}
	_, s.serverCert, s.serverKey = ca.Issue(t, "host", x509.ExtKeyUsageServerAuth)
	_, s.clientCert, s.clientKey = ca.Issue(t, "runner", x509.ExtKeyUsageClientAuth)
	return s
}

// serverOption returns the grpc.Creds option of runnerapi.ServerTLS.
func (s *tlsSetup) serverOption(t *testing.T, clientCAFile string) grpc.ServerOption {
	t.Helper()
	creds, err := runnerapi.ServerTLS(s.serverCert, s.serverKey, clientCAFile)
	require.NoError(t, err)
	return grpc.Creds(creds)
}

// withRunnerEnv sets the Manager's RunnerEnv, as a host that serves the
// runner API over TLS does.
func withRunnerEnv(env map[string]string) func(*ondemand.Config) {
	return func(c *ondemand.Config) { c.RunnerEnv = env }
}

func TestOnDemandJobOverTLS(t *testing.T) {
	s := newTLSSetup(t)
	tests := []struct {
		name         string
		clientCAFile string
		runnerEnv    map[string]string
	}{
		{
			name:      "CA file",
			runnerEnv: map[string]string{runner.EnvServerTLS: "1", runner.EnvServerCAFile: s.ca.File},
		},
		{
			name:         "mutual TLS",
			clientCAFile: s.ca.File,
			runnerEnv: map[string]string{
				runner.EnvServerTLS:      "1",
				runner.EnvServerCAFile:   s.ca.File,
				runner.EnvClientCertFile: s.clientCert,
				runner.EnvClientKeyFile:  s.clientKey,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startHost(t, hostOptions{
				configure:     withRunnerEnv(tt.runnerEnv),
				serverOptions: []grpc.ServerOption{s.serverOption(t, tt.clientCAFile)},
			})
			ctx := waitCtx(t)
			job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines, Payload: []byte("over TLS")})
			require.NoError(t, err)

			done, err := h.mgr.Wait(ctx, job.ID)
			require.NoError(t, err)
			require.Equal(t, ondemand.StateSuccess, done.State, "job error: %v", done.Error)
			require.Equal(t, []byte("done"), done.Result)
			var lines []string
			for _, ev := range h.events(t, job.ID) {
				if ev.Type == ondemand.EventOutput {
					lines = append(lines, ev.Line)
				}
			}
			require.Equal(t, []string{"over TLS"}, lines)
			require.Equal(t, ondemand.TaskStopped, h.waitTask(t, job).State)
		})
	}
}

func TestRunnerRejectedOverTLS(t *testing.T) {
	s := newTLSSetup(t)
	otherCA := testpki.NewCA(t, "other CA")
	_, strangerCert, strangerKey := otherCA.Issue(t, "stranger", x509.ExtKeyUsageClientAuth)
	tests := []struct {
		name         string
		clientCAFile string
		runnerEnv    map[string]string
	}{
		{
			name:      "runner trusts another CA",
			runnerEnv: map[string]string{runner.EnvServerTLS: "1", runner.EnvServerCAFile: otherCA.File},
		},
		{
			name:         "runner without client certificate",
			clientCAFile: s.ca.File,
			runnerEnv:    map[string]string{runner.EnvServerTLS: "1", runner.EnvServerCAFile: s.ca.File},
		},
		{
			name:         "client certificate of another CA",
			clientCAFile: s.ca.File,
			runnerEnv: map[string]string{
				runner.EnvServerTLS:      "1",
				runner.EnvServerCAFile:   s.ca.File,
				runner.EnvClientCertFile: strangerCert,
				runner.EnvClientKeyFile:  strangerKey,
			},
		},
		{
			name:      "runner without TLS",
			runnerEnv: map[string]string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const startupTimeout = 2 * time.Second
			h := startHost(t, hostOptions{
				startupTimeout: startupTimeout,
				configure:      withRunnerEnv(tt.runnerEnv),
				serverOptions:  []grpc.ServerOption{s.serverOption(t, tt.clientCAFile)},
			})
			ctx := waitCtx(t)
			started := time.Now()
			job, err := h.mgr.Submit(ctx, ondemand.JobSpec{Kind: kindLines, Payload: []byte("x")})
			require.NoError(t, err)

			done, err := h.mgr.Wait(ctx, job.ID)
			require.NoError(t, err)
			require.Equal(t, ondemand.StateError, done.State)
			require.Contains(t, []ondemand.Reason{ondemand.ReasonStartupTimeout, ondemand.ReasonExitedBeforeConnect}, done.Error.Reason, "job error: %v", done.Error)
			require.Less(t, time.Since(started), 30*time.Second, "the job did not fail at its startup timeout")
			require.Zero(t, done.Attempt, "the job was assigned to a runner the host should have rejected")
			require.Empty(t, done.RunnerID)
			require.Zero(t, countEvents(h.events(t, job.ID), ondemand.EventRunning))
			task := h.waitTask(t, job)
			require.Equal(t, ondemand.TaskStopped, task.State)
			requireProcessGone(t, task.LauncherState)
		})
	}
}

func TestServerTLSErrors(t *testing.T) {
	s := newTLSSetup(t)
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(notPEM, []byte("not a certificate"), 0o600))
	missing := filepath.Join(t.TempDir(), "missing.pem")

	tests := []struct {
		name                        string
		certFile, keyFile, clientCA string
		wantErr                     string
	}{
		{name: "missing certificate", certFile: missing, keyFile: s.serverKey, wantErr: "load server certificate"},
		{name: "key of another certificate", certFile: s.serverCert, keyFile: s.clientKey, wantErr: "matching private key"},
		{name: "client CA not PEM", certFile: s.serverCert, keyFile: s.serverKey, clientCA: notPEM, wantErr: "contains no PEM certificate"},
		{name: "client CA missing", certFile: s.serverCert, keyFile: s.serverKey, clientCA: missing, wantErr: "read client CA file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runnerapi.ServerTLS(tt.certFile, tt.keyFile, tt.clientCA)
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}
