package runner

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// bearerToken attaches "authorization: Bearer <token>" to every call.
type bearerToken struct {
	token      string
	requireTLS bool
}

var _ credentials.PerRPCCredentials = bearerToken{}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials. It
// returns false when TLS is off, so that the token also travels over an
// insecure connection, as the configuration requests.
func (b bearerToken) RequireTransportSecurity() bool {
	return b.requireTLS
}

// String keeps the token out of formatted output.
func (b bearerToken) String() string {
	return "bearerToken{REDACTED}"
}

// transportCredentials returns TLS credentials as cfg requests, or insecure
// ones when TLS is off. It reads cfg.CAFile and the client certificate.
// With cfg.TLSSkipVerify, the credentials log a warning to logger at each
// handshake.
func transportCredentials(cfg Config, logger *slog.Logger) (credentials.TransportCredentials, error) {
	if !cfg.TLS {
		return insecure.NewCredentials(), nil
	}
	tlsConfig := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: cfg.TLSSkipVerify, //nolint:gosec // Development only, and Run logs a warning.
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CAFile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CAFile %q contains no PEM certificate: point it at a PEM file with the CA certificates that signed the server's certificate", cfg.CAFile)
		}
		tlsConfig.RootCAs = pool
	}
	if cfg.ClientCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.ClientCertFile, cfg.ClientKeyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate %q with key %q: %w: point ClientCertFile and ClientKeyFile at a PEM certificate and its matching private key", cfg.ClientCertFile, cfg.ClientKeyFile, err)
		}
		tlsConfig.Certificates = []tls.Certificate{cert}
	}
	creds := credentials.NewTLS(tlsConfig)
	if cfg.TLSSkipVerify {
		return &unverifiedTLS{TransportCredentials: creds, logger: logger, serverAddr: cfg.ServerAddr}, nil
	}
	return creds, nil
}

// unverifiedTLS wraps TLS credentials that skip verification of the
// server's certificate and logs a warning at each handshake, so that every
// connection made without verification shows in the logs.
type unverifiedTLS struct {
	credentials.TransportCredentials
	logger     *slog.Logger
	serverAddr string
}

// ClientHandshake implements credentials.TransportCredentials.
func (u *unverifiedTLS) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	u.logger.Warn("TLS certificate verification is disabled: use TLSSkipVerify only for development",
		"server_addr", u.serverAddr, "remote_addr", conn.RemoteAddr().String())
	return u.TransportCredentials.ClientHandshake(ctx, authority, conn)
}

// Clone implements credentials.TransportCredentials.
func (u *unverifiedTLS) Clone() credentials.TransportCredentials {
	return &unverifiedTLS{TransportCredentials: u.TransportCredentials.Clone(), logger: u.logger, serverAddr: u.serverAddr}
}

// dialOptions returns the options Run passes to grpc.NewClient.
func dialOptions(cfg Config, transport credentials.TransportCredentials) []grpc.DialOption {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		grpc.WithPerRPCCredentials(bearerToken{token: cfg.Token, requireTLS: cfg.TLS}),
		// gRPC's default reconnect backoff (backoff.DefaultConfig) grows
		// to 120 seconds, which would delay the runner's retries long
		// after the host is back. Cap it like the runner's retries.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: grpcbackoff.Config{
				BaseDelay:  minBackoff,
				Multiplier: 2,
				Jitter:     0.2,
				MaxDelay:   maxBackoff,
			},
			MinConnectTimeout: 20 * time.Second,
		}),
	}
	return append(opts, cfg.DialOptions...)
}
