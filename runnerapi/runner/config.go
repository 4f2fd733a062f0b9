package runner

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
)

// Environment variables read by ConfigFromEnv. The host sets them when it
// launches an on-demand runner.
const (
	// EnvServerAddr is the host:port of the runner API.
	EnvServerAddr = "ODRKIT_SERVER_ADDR"
	// EnvServerTLS enables TLS when it is "1" or "true".
	EnvServerTLS = "ODRKIT_SERVER_TLS"
	// EnvServerCAFile is the path of a PEM file with the CA certificates
	// that verify the server, in place of the system roots.
	EnvServerCAFile = "ODRKIT_SERVER_CA_FILE"
	// EnvServerTLSSkipVerify disables verification of the server's
	// certificate when it is "1" or "true". For development only.
	EnvServerTLSSkipVerify = "ODRKIT_SERVER_TLS_SKIP_VERIFY"
	// EnvClientCertFile is the path of a PEM file with the client
	// certificate the runner presents to a host that requires one (mutual
	// TLS). It is set together with EnvClientKeyFile.
	EnvClientCertFile = "ODRKIT_CLIENT_CERT_FILE"
	// EnvClientKeyFile is the path of the PEM file with the private key of
	// the client certificate.
	EnvClientKeyFile = "ODRKIT_CLIENT_KEY_FILE"
	// EnvRunnerID is the runner ID the token was issued for.
	EnvRunnerID = "ODRKIT_RUNNER_ID"
	// EnvRunnerToken is the bearer token the host issued for the runner ID.
	EnvRunnerToken = "ODRKIT_RUNNER_TOKEN" //nolint:gosec // A variable name, not a credential.
	// EnvRunnerLabels is the runner's labels as "key=value,key2=value2".
	EnvRunnerLabels = "ODRKIT_RUNNER_LABELS"
	// EnvRunnerOnDemand makes the runner take exactly one job when it is
	// "1" or "true".
	EnvRunnerOnDemand = "ODRKIT_RUNNER_ONDEMAND"
	// EnvRunnerConcurrency is the number of jobs a static runner runs at once.
	EnvRunnerConcurrency = "ODRKIT_RUNNER_CONCURRENCY"
)

// DefaultConnectTimeout is the time an on-demand runner keeps retrying to
// reach the host when Config.ConnectTimeout is zero.
const DefaultConnectTimeout = 2 * time.Minute

// Config configures a Runner. ServerAddr, RunnerID and Token are required.
type Config struct {
	// ServerAddr is the host:port of the runner API. A gRPC target URI
	// with a scheme, such as "dns:///host:port", is accepted too.
	ServerAddr string
	// TLS enables TLS. The server's certificate is verified against the
	// system roots, or against CAFile when it is set.
	TLS bool
	// CAFile is the path of a PEM file with the CA certificates that verify
	// the server. It requires TLS.
	CAFile string
	// TLSSkipVerify disables verification of the server's certificate. It
	// is for development only, requires TLS, and the runner logs a warning
	// at each TLS handshake made with it.
	TLSSkipVerify bool
	// ClientCertFile and ClientKeyFile are the paths of PEM files with a
	// client certificate and its private key, which the runner presents to
	// hosts that require client certificates (mutual TLS). Set both or
	// neither. They require TLS. New reads them once, so a renewed
	// certificate takes effect when the runner is created again.
	ClientCertFile string
	ClientKeyFile  string
	// RunnerID is the runner ID the token was issued for.
	RunnerID string
	// Token is the bearer token the host issued for RunnerID. It is sent
	// on every call and never logged or put into errors.
	Token string
	// Labels are matched against jobs that target runners by label.
	Labels map[string]string
	// OnDemand makes the runner take exactly one job, after which Run
	// returns.
	OnDemand bool
	// Concurrency is the number of jobs a static runner runs at once, each
	// on its own stream. Zero means 1. An on-demand runner accepts only 0
	// or 1.
	Concurrency int
	// ConnectTimeout bounds how long an on-demand runner keeps retrying
	// when the host is unreachable. Zero means DefaultConnectTimeout. A
	// static runner retries until its context is cancelled.
	ConnectTimeout time.Duration
	// Logger receives the runner's logs. Nil discards them.
	Logger *slog.Logger
	// DialOptions are added to the options Run passes to grpc.NewClient,
	// after the transport and token credentials.
	DialOptions []grpc.DialOption
}

// configProblem is one invalid field. The message follows the field's name,
// so that Validate can name the field and ConfigFromEnv the variable.
type configProblem struct {
	field   string
	message string
}

// Validate returns an error that names each invalid field and how to fix it,
// or nil when c can be used by New.
func (c Config) Validate() error {
	problems := c.problems()
	if len(problems) == 0 {
		return nil
	}
	errs := make([]error, 0, len(problems))
	for _, p := range problems {
		errs = append(errs, fmt.Errorf("invalid runner config: %s %s", p.field, p.message))
	}
	return errors.Join(errs...)
}

func (c Config) problems() []configProblem {
	var problems []configProblem
	add := func(field, format string, args ...any) {
		problems = append(problems, configProblem{field: field, message: fmt.Sprintf(format, args...)})
	}

	switch {
	case c.ServerAddr == "":
		add("ServerAddr", "is empty: set it to the host:port of the runner API")
	case strings.Contains(c.ServerAddr, "://"):
		// A gRPC target URI, which grpc.NewClient parses.
	default:
		if _, port, err := net.SplitHostPort(c.ServerAddr); err != nil || port == "" {
			add("ServerAddr", "%q is not a host:port: set it to the host and port of the runner API, such as \"odrkit.example.com:9090\"", c.ServerAddr)
		}
	}

	if c.RunnerID == "" {
		add("RunnerID", "is empty: set it to the runner ID the host issued the token for")
	}
	if c.Token == "" {
		add("Token", "is empty: set it to the token the host issued for this runner ID")
	}

	if c.CAFile != "" && !c.TLS {
		add("CAFile", "is set but TLS is off: enable TLS or clear CAFile")
	}
	if c.TLSSkipVerify && !c.TLS {
		add("TLSSkipVerify", "is set but TLS is off: enable TLS or clear TLSSkipVerify")
	}
	if c.TLSSkipVerify && c.CAFile != "" {
		add("TLSSkipVerify", "is set together with CAFile, which it would ignore: clear one of them")
	}
	switch {
	case c.ClientCertFile != "" && c.ClientKeyFile == "":
		add("ClientKeyFile", "is empty but ClientCertFile is set: set it to the PEM file with the client certificate's private key, or clear ClientCertFile")
	case c.ClientCertFile == "" && c.ClientKeyFile != "":
		add("ClientCertFile", "is empty but ClientKeyFile is set: set it to the PEM file with the client certificate, or clear ClientKeyFile")
	case c.ClientCertFile != "" && !c.TLS:
		add("ClientCertFile", "is set but TLS is off: enable TLS, because client certificates are only sent over TLS, or clear ClientCertFile and ClientKeyFile")
	}

	for key := range c.Labels {
		if key == "" {
			add("Labels", "has an empty key: give every label a non-empty key")
		}
	}

	if c.Concurrency < 0 {
		add("Concurrency", "is %d: set it to 1 or more, or 0 for the default of 1", c.Concurrency)
	}
	if c.OnDemand && c.Concurrency > 1 {
		add("Concurrency", "is %d but the runner is on-demand, which takes exactly one job: set it to 0 or 1", c.Concurrency)
	}
	if c.ConnectTimeout < 0 {
		add("ConnectTimeout", "is %s: set it to a positive duration, or 0 for the default of %s", c.ConnectTimeout, DefaultConnectTimeout)
	}
	return problems
}

// String returns c in a form that is safe to log: the token is redacted.
func (c Config) String() string {
	return fmt.Sprintf("{ServerAddr:%s TLS:%t CAFile:%s TLSSkipVerify:%t ClientCertFile:%s ClientKeyFile:%s RunnerID:%s Token:%s Labels:%v OnDemand:%t Concurrency:%d ConnectTimeout:%s}",
		c.ServerAddr, c.TLS, c.CAFile, c.TLSSkipVerify, c.ClientCertFile, c.ClientKeyFile, c.RunnerID, redact(c.Token), c.Labels, c.OnDemand, c.Concurrency, c.ConnectTimeout)
}

// GoString implements fmt.GoStringer so that the %#v verb, too, prints
// the token redacted.
func (c Config) GoString() string {
	return "runner.Config" + c.String()
}

// LogValue implements slog.LogValuer so that logging a Config never logs
// the token.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("server_addr", c.ServerAddr),
		slog.Bool("tls", c.TLS),
		slog.String("ca_file", c.CAFile),
		slog.Bool("tls_skip_verify", c.TLSSkipVerify),
		slog.String("client_cert_file", c.ClientCertFile),
		slog.String("client_key_file", c.ClientKeyFile),
		slog.String("runner_id", c.RunnerID),
		slog.String("token", redact(c.Token)),
		slog.Any("labels", c.Labels),
		slog.Bool("on_demand", c.OnDemand),
		slog.Int("concurrency", c.Concurrency),
		slog.Duration("connect_timeout", c.ConnectTimeout),
	)
}

func redact(secret string) string {
	if secret == "" {
		return ""
	}
	return "REDACTED"
}

// envFields maps Config fields to the variables ConfigFromEnv reads them
// from, so that its errors name the variable.
var envFields = map[string]string{
	"ServerAddr":     EnvServerAddr,
	"TLS":            EnvServerTLS,
	"CAFile":         EnvServerCAFile,
	"TLSSkipVerify":  EnvServerTLSSkipVerify,
	"ClientCertFile": EnvClientCertFile,
	"ClientKeyFile":  EnvClientKeyFile,
	"RunnerID":       EnvRunnerID,
	"Token":          EnvRunnerToken,
	"Labels":         EnvRunnerLabels,
	"OnDemand":       EnvRunnerOnDemand,
	"Concurrency":    EnvRunnerConcurrency,
}

// ConfigFromEnv builds a Config from the ODRKIT_* environment variables and
// validates it. Its errors name the variable and how to fix it, and they
// never contain the token. Logger and DialOptions are left for the caller to set.
func ConfigFromEnv() (Config, error) {
	var (
		cfg  Config
		errs []error
	)
	cfg.ServerAddr = os.Getenv(EnvServerAddr)
	cfg.CAFile = os.Getenv(EnvServerCAFile)
	cfg.ClientCertFile = os.Getenv(EnvClientCertFile)
	cfg.ClientKeyFile = os.Getenv(EnvClientKeyFile)
	cfg.RunnerID = os.Getenv(EnvRunnerID)
	cfg.Token = os.Getenv(EnvRunnerToken)

	var err error
	if cfg.TLS, err = boolFromEnv(EnvServerTLS); err != nil {
		errs = append(errs, err)
	}
	if cfg.TLSSkipVerify, err = boolFromEnv(EnvServerTLSSkipVerify); err != nil {
		errs = append(errs, err)
	}
	if cfg.OnDemand, err = boolFromEnv(EnvRunnerOnDemand); err != nil {
		errs = append(errs, err)
	}
	if cfg.Labels, err = parseLabels(os.Getenv(EnvRunnerLabels)); err != nil {
		errs = append(errs, fmt.Errorf("invalid %s: %w", EnvRunnerLabels, err))
	}
	if value := os.Getenv(EnvRunnerConcurrency); value != "" {
		n, err := strconv.Atoi(value)
		if err != nil {
			errs = append(errs, fmt.Errorf("invalid %s %q: set it to a whole number of jobs, such as 4", EnvRunnerConcurrency, value))
		}
		cfg.Concurrency = n
	}

	if len(errs) == 0 {
		for _, p := range cfg.problems() {
			errs = append(errs, fmt.Errorf("invalid runner environment: %s %s", envFields[p.field], p.message))
		}
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return cfg, nil
}

// boolFromEnv reads a boolean variable. Unset or empty means false.
func boolFromEnv(name string) (bool, error) {
	value := os.Getenv(name)
	if value == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(value)
	if err != nil {
		return false, fmt.Errorf("invalid %s %q: set it to 1, true, 0 or false", name, value)
	}
	return b, nil
}

// parseLabels parses "key=value,key2=value2". Spaces around keys and values
// are trimmed, and an empty string gives no labels.
func parseLabels(text string) (map[string]string, error) {
	if strings.TrimSpace(text) == "" {
		return nil, nil
	}
	labels := make(map[string]string)
	for entry := range strings.SplitSeq(text, ",") {
		key, value, found := strings.Cut(entry, "=")
		key = strings.TrimSpace(key)
		if !found || key == "" {
			return nil, fmt.Errorf("label %q is not key=value: write labels as \"key=value,key2=value2\"", strings.TrimSpace(entry))
		}
		if _, dup := labels[key]; dup {
			return nil, fmt.Errorf("label key %q appears twice: give each key once", key)
		}
		labels[key] = strings.TrimSpace(value)
	}
	return labels, nil
}
