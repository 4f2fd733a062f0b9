package runnerapi_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"maps"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/runnerapi"
	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/exec"
)

// secureHostOptions configures startSecureHost: a test host like
// startHost, with server options such as TLS credentials, extra profile
// env, its own launcher plugin and a log destination.
type secureHostOptions struct {
	hostOptions
	// serverOptions are added to runnerapi.ServerOptions.
	serverOptions []grpc.ServerOption
	// profileEnv is added to the profile's env.
	profileEnv map[string]string
	// plugin replaces the exec plugin; its config must be *exec.Config.
	plugin *tasklauncher.Plugin
	// logs receives the host's log records at debug level; nil sends
	// them to the test log at info level.
	logs io.Writer
}

// startSecureHost starts a Manager and serves the runner API on a loopback
// port until the test ends.
func startSecureHost(t *testing.T, opts secureHostOptions) *testHost {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)

	plugin := exec.Plugin()
	if opts.plugin != nil {
		plugin = *opts.plugin
	}
	registry := tasklauncher.NewRegistry(plugin)
	execConfig := exec.Plugin().NewConfig().(*exec.Config)
	execConfig.Command = opts.command
	execConfig.StopGrace = "2s"
	if opts.startupTimeout == 0 {
		opts.startupTimeout = time.Minute
	}
	env := map[string]string{envTestMode: opts.mode}
	maps.Copy(env, opts.profileEnv)
	profiles, err := profile.NewSet(&profile.Profile{
		Name:           "local",
		Plugin:         plugin.Name,
		Default:        true,
		Env:            env,
		StartupTimeout: opts.startupTimeout,
		TargetRunner:   opts.targetRunner,
		Config:         execConfig,
	})
	require.NoError(t, err)

	var logger *slog.Logger
	if opts.logs != nil {
		logger = slog.New(slog.NewTextHandler(opts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	} else {
		logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	cfg := ondemand.Config{
		Launchers:        registry,
		Profiles:         profiles,
		AdvertiseAddr:    lis.Addr().String(),
		HeartbeatTimeout: 5 * time.Second,
		HostID:           "test-host-" + t.Name(),
		RetryBackoff:     10 * time.Millisecond,
		Logger:           logger,
	}
	if opts.configure != nil {
		opts.configure(&cfg)
	}
	mgr, err := ondemand.New(t.Context(), cfg)
	require.NoError(t, err)

	srv := grpc.NewServer(append(runnerapi.ServerOptions(), opts.serverOptions...)...)
	runnerapi.NewServer(mgr, runnerapi.Config{Logger: logger}).Register(srv)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			srv.Stop()
			<-served
			require.NoError(t, mgr.Close())
		})
	}
	t.Cleanup(stop)
	return &testHost{mgr: mgr, addr: lis.Addr().String(), registry: registry, stop: stop}
}

// testCA is a certificate authority that issues certificates for tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// file is the path of a PEM file with the CA certificate.
	file string
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	template := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	return &testCA{cert: cert, key: key, file: file}
}

// issue writes a certificate signed by the CA and its key to PEM files and
// returns their paths. A server certificate is valid for 127.0.0.1.
func (ca *testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	require.NoError(t, err)
	template := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		template.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, template, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))
	return certFile, keyFile
}

// syncBuffer is a bytes.Buffer that is safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
