package runner

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/odrkit/odrkit/runnerapi/runnerpb"
)

// selfSignedCert returns a certificate for 127.0.0.1 and the path of a PEM
// file that contains it, for use as CAFile.
func selfSignedCert(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	template := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "odrkit test host"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	require.NoError(t, err)

	caFile := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, caFile
}

// serveTLSHost serves h over TLS with cert until the test ends and returns
// its address.
func serveTLSHost(t *testing.T, h *scriptedHost, cert tls.Certificate) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer(grpc.Creds(credentials.NewServerTLSFromCert(&cert)))
	runnerpb.RegisterRunnerServiceServer(srv, h)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return lis.Addr().String()
}

func TestRunnerOverTLS(t *testing.T) {
	cert, caFile := selfSignedCert(t)

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
	cert, _ := selfSignedCert(t)
	_, otherCAFile := selfSignedCert(t)
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
