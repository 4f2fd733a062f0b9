package runner

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/odrkit/odrkit/internal/testpki"
)

// serveMutualTLSHost serves h over TLS with cert and requires client
// certificates signed by clientCA. It returns the host's address.
func serveMutualTLSHost(t *testing.T, h *scriptedHost, cert tls.Certificate, clientCA *testpki.CA) string {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(clientCA.Cert)
	creds := credentials.NewTLS(&tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	})
	return serveHostAt(t, h, "127.0.0.1:0", grpc.Creds(creds))
}

func TestRunnerMutualTLS(t *testing.T) {
	ca := testpki.NewCA(t, "odrkit test CA")
	serverCert, _, _ := ca.Issue(t, "host", x509.ExtKeyUsageServerAuth)
	_, clientCertFile, clientKeyFile := ca.Issue(t, "runner", x509.ExtKeyUsageClientAuth)
	otherCA := testpki.NewCA(t, "odrkit test CA")
	_, otherCertFile, otherKeyFile := otherCA.Issue(t, "stranger", x509.ExtKeyUsageClientAuth)

	tests := []struct {
		name             string
		certFile         string
		keyFile          string
		wantDelivered    bool
		wantErrSubstring string
	}{
		{name: "trusted client certificate", certFile: clientCertFile, keyFile: clientKeyFile, wantDelivered: true},
		{name: "no client certificate", wantErrSubstring: "could not reach the host"},
		{name: "client certificate of another CA", certFile: otherCertFile, keyFile: otherKeyFile, wantErrSubstring: "could not reach the host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newScriptedHost()
			addr := serveMutualTLSHost(t, host, serverCert, ca)
			host.jobs <- scriptedJob{id: "job-1", kind: "echo", payload: []byte("mutual")}
			var logs syncBuffer
			cfg := testConfig(addr, &logs)
			cfg.TLS = true
			cfg.CAFile = ca.File
			cfg.ClientCertFile = tt.certFile
			cfg.ClientKeyFile = tt.keyFile
			cfg.ConnectTimeout = 500 * time.Millisecond
			r := newTestRunner(t, cfg)
			r.Handle("echo", echoHandler)

			_, done := startRunner(t, r)
			err := awaitRun(t, done)
			if !tt.wantDelivered {
				require.ErrorContains(t, err, tt.wantErrSubstring)
				require.Zero(t, host.streamCount(), "a stream reached the host without a trusted client certificate")
				return
			}
			require.NoError(t, err)
			rec := host.awaitFinished(t)
			require.Equal(t, "mutual", string(completeOf(t, rec).GetResult()))
		})
	}
}

func TestNewRejectsBadClientCertificate(t *testing.T) {
	ca := testpki.NewCA(t, "odrkit test CA")
	_, certFile, _ := ca.Issue(t, "runner", x509.ExtKeyUsageClientAuth)
	_, _, otherKeyFile := ca.Issue(t, "other", x509.ExtKeyUsageClientAuth)
	cfg := Config{ServerAddr: "127.0.0.1:9090", RunnerID: "runner-1", Token: testToken, TLS: true}

	cfg.ClientCertFile, cfg.ClientKeyFile = certFile, otherKeyFile
	_, err := New(cfg)
	require.ErrorContains(t, err, "load client certificate")
	require.ErrorContains(t, err, "matching private key")

	cfg.ClientKeyFile = filepath.Join(t.TempDir(), "missing.pem")
	_, err = New(cfg)
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestSkipVerifyWarnsAtEachHandshake(t *testing.T) {
	const warning = "TLS certificate verification is disabled"
	cert, _ := hostCertificate(t)
	host := newScriptedHost()
	addr := serveTLSHost(t, host, cert)
	var logs syncBuffer
	cfg := testConfig(addr, &logs)
	cfg.TLS = true
	cfg.TLSSkipVerify = true
	r := newTestRunner(t, cfg)
	r.Handle("echo", echoHandler)
	require.Zero(t, strings.Count(logs.String(), warning), "New warned before any connection")

	// Each Run of an on-demand runner makes one connection, so one
	// handshake.
	for i := range 2 {
		host.jobs <- scriptedJob{id: "job-" + string(rune('a'+i)), kind: "echo"}
		_, done := startRunner(t, r)
		require.NoError(t, awaitRun(t, done))
		host.awaitFinished(t)
		require.Equal(t, i+1, strings.Count(logs.String(), warning), "warnings after %d connections", i+1)
	}
}
