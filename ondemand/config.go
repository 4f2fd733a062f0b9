package ondemand

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/tasklauncher"
)

// Default values of Config fields.
const (
	DefaultStartupTimeout    = 2 * time.Minute
	DefaultAckTimeout        = 10 * time.Second
	DefaultHeartbeatTimeout  = 30 * time.Second
	DefaultCancelGrace       = 10 * time.Second
	DefaultLaunchConcurrency = 32
	DefaultReconcileInterval = 5 * time.Minute
	DefaultStopRetries       = 5
	DefaultRetryBackoff      = time.Second
	// DefaultTokenJobDuration is added to the startup timeout to compute
	// the lifetime of an on-demand runner's token when its job has no
	// MaxDuration.
	DefaultTokenJobDuration = time.Hour
)

// Config configures a Manager. Zero fields take the defaults above.
type Config struct {
	// Store persists jobs and tasks. Default: a new MemoryStore, which
	// loses everything when the process ends.
	Store Store

	// Launchers holds the launcher plugins that profiles name. Required
	// for on-demand jobs.
	Launchers *tasklauncher.Registry

	// Profiles are the runner profiles jobs are launched with. Required
	// for on-demand jobs.
	Profiles *profile.Set

	// AdvertiseAddr is the host:port of the runner API that on-demand
	// runners dial. Required for on-demand jobs.
	AdvertiseAddr string

	// RunnerEnv is added to every on-demand runner's environment, for
	// example ODRKIT_SERVER_TLS and ODRKIT_SERVER_CA_FILE. Profile env
	// entries win over it; the runner's ID and token win over both.
	RunnerEnv map[string]string

	// HostID identifies this host on the tasks it launches (label
	// odrkit.host). Reconciliation stops every resource labelled with it
	// that no task of this host owns, so two hosts that share a platform
	// need distinct IDs, and a host keeps its ID across restarts to find
	// its own leftovers. Default: the machine's host name with a durable
	// Store, and the host name plus a random suffix with the default
	// memory store, whose tasks no later process takes over.
	HostID string

	// DefaultImage is the runner image used when a profile sets no
	// oci_url. Launchers that run no images ignore it.
	DefaultImage string

	// TokenKey signs runner tokens; at least 32 bytes. Default: a random
	// key, so tokens do not survive a restart of the host process.
	TokenKey []byte

	// TokenVerifyKeys are earlier signing keys whose tokens are still
	// accepted. To rotate keys, make the new key TokenKey and move the old
	// one here until the tokens it signed have expired.
	TokenVerifyKeys [][]byte

	// StartupTimeout is how long a launched runner has to connect, for
	// profiles that set no startup_timeout.
	StartupTimeout time.Duration

	// AckTimeout is how long a runner has to acknowledge an assignment
	// before the job is queued again.
	AckTimeout time.Duration

	// HeartbeatTimeout is how long a running job may go without a
	// heartbeat or output from its runner before it fails as runner lost.
	HeartbeatTimeout time.Duration

	// HeartbeatInterval is the interval between a runner's heartbeats,
	// sent to the runner with each assignment. Default: a third of
	// HeartbeatTimeout.
	HeartbeatInterval time.Duration

	// CancelGrace is how long a runner has to end a cancelled job before
	// the Manager marks it cancelled without the runner.
	CancelGrace time.Duration

	// LaunchConcurrency bounds the start and stop jobs the embedded
	// launcher runner executes at once. Watch jobs are not counted,
	// because each lasts as long as its task.
	LaunchConcurrency int

	// ReconcileInterval is how often the Manager looks for platform
	// resources that no task owns and stops them; it also does so at
	// start. Default: 5 minutes.
	ReconcileInterval time.Duration

	// StopRetries is how many times a failed StopTask is tried again,
	// with backoff, before its task is reported as a possible orphan.
	// Default: 5.
	StopRetries int

	// RetryBackoff is the wait before the first retry of a failed
	// StartTask or StopTask; each later retry waits twice as long, up to
	// 30 seconds. Default: 1 second.
	RetryBackoff time.Duration

	// MeterProvider receives the Manager's metrics. Default: a no-op
	// provider.
	MeterProvider metric.MeterProvider

	// Logger receives the Manager's log records. Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.HostID == "" {
		c.HostID, _ = os.Hostname()
		if c.Store == nil {
			// A memory store dies with the process, so no later process
			// takes over its tasks, and another host on this machine must
			// not mistake them for its own orphans.
			c.HostID += "/" + newID("")
		}
	}
	if c.Store == nil {
		c.Store = NewMemoryStore()
	}
	if c.StartupTimeout == 0 {
		c.StartupTimeout = DefaultStartupTimeout
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = DefaultAckTimeout
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = c.HeartbeatTimeout / 3
	}
	if c.CancelGrace == 0 {
		c.CancelGrace = DefaultCancelGrace
	}
	if c.LaunchConcurrency == 0 {
		c.LaunchConcurrency = DefaultLaunchConcurrency
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = DefaultReconcileInterval
	}
	if c.StopRetries == 0 {
		c.StopRetries = DefaultStopRetries
	}
	if c.RetryBackoff == 0 {
		c.RetryBackoff = DefaultRetryBackoff
	}
	if c.MeterProvider == nil {
		c.MeterProvider = noop.NewMeterProvider()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	positive := func(name string, d time.Duration) {
		if d < 0 {
			errs = append(errs, fmt.Errorf("Config.%s is %s; set a positive duration or zero for the default", name, d))
		}
	}
	positive("StartupTimeout", c.StartupTimeout)
	positive("AckTimeout", c.AckTimeout)
	positive("HeartbeatTimeout", c.HeartbeatTimeout)
	positive("HeartbeatInterval", c.HeartbeatInterval)
	positive("CancelGrace", c.CancelGrace)
	positive("ReconcileInterval", c.ReconcileInterval)
	positive("RetryBackoff", c.RetryBackoff)
	if c.StopRetries < 0 {
		errs = append(errs, fmt.Errorf("Config.StopRetries is %d; set a positive number or zero for the default of %d", c.StopRetries, DefaultStopRetries))
	}
	if c.HeartbeatInterval >= c.HeartbeatTimeout {
		errs = append(errs, fmt.Errorf("Config.HeartbeatInterval (%s) must be shorter than Config.HeartbeatTimeout (%s), or runners time out between heartbeats", c.HeartbeatInterval, c.HeartbeatTimeout))
	}
	if c.LaunchConcurrency < 0 {
		errs = append(errs, fmt.Errorf("Config.LaunchConcurrency is %d; set a positive number or zero for the default of %d", c.LaunchConcurrency, DefaultLaunchConcurrency))
	}
	if c.TokenKey != nil && len(c.TokenKey) < 32 {
		errs = append(errs, fmt.Errorf("Config.TokenKey has %d bytes; use at least 32 random bytes, or nil for a random key", len(c.TokenKey)))
	}
	for i, k := range c.TokenVerifyKeys {
		if len(k) < 32 {
			errs = append(errs, fmt.Errorf("Config.TokenVerifyKeys[%d] has %d bytes; verification keys are earlier signing keys of at least 32 bytes", i, len(k)))
		}
	}
	if c.Profiles != nil && len(c.Profiles.All()) > 0 {
		if c.Launchers == nil {
			errs = append(errs, errors.New("Config.Launchers is nil but Config.Profiles is set; pass a tasklauncher.Registry holding the plugins the profiles name"))
		}
		if c.AdvertiseAddr == "" {
			errs = append(errs, errors.New("Config.AdvertiseAddr is empty; set the host:port of the runner API that on-demand runners dial"))
		}
		for _, p := range c.Profiles.All() {
			if c.Launchers != nil {
				if _, ok := c.Launchers.Lookup(p.Plugin); !ok {
					errs = append(errs, fmt.Errorf("profile %q names launcher plugin %q, which Config.Launchers does not hold; register it", p.Name, p.Plugin))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// String describes the config without its secrets: the token keys and the
// values of RunnerEnv are left out.
func (c Config) String() string {
	keys := make([]string, 0, len(c.RunnerEnv))
	for k := range c.RunnerEnv {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return fmt.Sprintf("ondemand.Config{AdvertiseAddr: %q, HostID: %q, DefaultImage: %q, RunnerEnv keys: %v, TokenKey: %s, TokenVerifyKeys: %d, StartupTimeout: %s, AckTimeout: %s, HeartbeatTimeout: %s, HeartbeatInterval: %s, CancelGrace: %s, LaunchConcurrency: %d, ReconcileInterval: %s, StopRetries: %d, RetryBackoff: %s}",
		c.AdvertiseAddr, c.HostID, c.DefaultImage, keys, redacted(c.TokenKey), len(c.TokenVerifyKeys),
		c.StartupTimeout, c.AckTimeout, c.HeartbeatTimeout, c.HeartbeatInterval, c.CancelGrace,
		c.LaunchConcurrency, c.ReconcileInterval, c.StopRetries, c.RetryBackoff)
}

// GoString is String, so that %#v does not print secrets either.
func (c Config) GoString() string { return c.String() }

// LogValue makes slog log the String form.
func (c Config) LogValue() slog.Value { return slog.StringValue(c.String()) }

func redacted(key []byte) string {
	if key == nil {
		return "(random)"
	}
	return "(set, redacted)"
}
