package runner

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/odrkit/odrkit/internal/testpki"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// hostCertificate returns a certificate for 127.0.0.1 and the path of a PEM
// file with the CA that signed it, for use as CAFile.
func hostCertificate(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	ca := testpki.NewCA(t, "odrkit test CA")
	cert, _, _ := ca.Issue(t, "odrkit test host", x509.ExtKeyUsageServerAuth)
	return cert, ca.File
}

// serveTLSHost serves h over TLS with cert until the test ends and returns
// its address.
func serveTLSHost(t *testing.T, h *scriptedHost, cert tls.Certificate) string {
	t.Helper()
	return serveHostAt(t, h, "127.0.0.1:0", grpc.Creds(credentials.NewServerTLSFromCert(&cert)))
}

func TestRunnerOverTLS(t *testing.T) {
	cert, caFile := hostCertificate(t)

	tests := []struct {
		name        string
		configure   func(*Config)
		wantWarning bool
	}{
		{name: "CA file", configure: func(c *Config) { c.CAFile = caFile }},
		{name: "skip verify", configure: func(c *Config) { c.TLSSkipVerify = true }, wantWarning: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newScriptedHost()
			addr := serveTLSHost(t, host, cert)
			host.jobs <- scriptedJob{id: "job-1", kind: "echo", payload: []byte("secure")}
			var logs syncBuffer
			cfg := testConfig(addr, &logs)
			cfg.TLS = true
			tt.configure(&cfg)
			r := newTestRunner(t, cfg)
			r.Handle("echo", echoHandler)

			_, done := startRunner(t, r)
			require.NoError(t, awaitRun(t, done))

			rec := host.awaitFinished(t)
			require.Equal(t, []string{"Bearer " + testToken}, rec.authorization)
			require.Equal(t, "secure", string(completeOf(t, rec).GetResult()))
			if tt.wantWarning {
				require.Contains(t, logs.String(), "TLS certificate verification is disabled")
			} else {
				require.NotContains(t, logs.String(), "TLS certificate verification is disabled")
			}
		})
	}
}

func TestRunnerRejectsUntrustedServer(t *testing.T) {
	cert, _ := hostCertificate(t)
	_, otherCAFile := hostCertificate(t)
	host := newScriptedHost()
	addr := serveTLSHost(t, host, cert)
	var logs syncBuffer
	cfg := testConfig(addr, &logs)
	cfg.TLS = true
	cfg.CAFile = otherCAFile
	cfg.ConnectTimeout = 300 * time.Millisecond
	r := newTestRunner(t, cfg)
	r.Handle("echo", echoHandler)

	_, done := startRunner(t, r)
	err := awaitRun(t, done)
	require.ErrorContains(t, err, "could not reach the host")
	require.ErrorContains(t, err, "certificate")
	require.Zero(t, host.streamCount(), "a stream reached a server the runner does not trust")
}
