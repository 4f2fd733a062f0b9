// Package docker is the Docker Engine launcher: it runs each on-demand
// runner as a container.
//
// # Client
//
// The launcher talks to the Engine API through the official Go client
// github.com/moby/moby/client (v0.6.3 when this package was written). It is
// the Engine's own client in a module of its own: it builds with Go 1.26
// and pulls in no daemon code. The older github.com/docker/docker/client
// is published only as a +incompatible module (v28.5.2 was its last
// version), whose dependencies are not tracked by go.mod. The client
// negotiates the API version with the engine and supports API 1.40 and
// later, which covers Docker Engine 20.10 (API 1.41) as shipped by Debian 12.
//
// # Containers
//
// StartTask pulls the image when the engine lacks it (or always, with
// force_pull), then creates and starts a container with the launch's
// entrypoint, arguments, environment and labels. The network mode is
// "host" by default, so that a runner reaches a host that listens on
// 127.0.0.1. The container is not removed when it exits, so that WatchTask
// can read its exit code and logs; StopTask removes it.
//
// # State
//
// The launcher state is JSON with the container's ID and name. Any host
// process that reaches the same engine can stop the container from it.
//
// # Labels
//
// The container carries the launch's labels, the config's labels and
// odrkit.launcher=docker. ListTasks finds containers by their labels through
// the engine, also after the host restarted.
package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/odrkit/odrkit/tasklauncher"
)

// ErrClosed is returned by the Launcher's methods after Close.
var ErrClosed = errors.New("docker launcher is closed")

// engineCallTimeout bounds the engine calls that StartTask makes without
// the caller's context (create, connect, start) and the removal of a
// container that StartTask could not finish.
const engineCallTimeout = 2 * time.Minute

var (
	_ tasklauncher.Launcher = (*Launcher)(nil)
	_ tasklauncher.Watcher  = (*Launcher)(nil)
	_ tasklauncher.Lister   = (*Launcher)(nil)
)

// Launcher runs on-demand runners as Docker containers. It is safe for
// concurrent use.
type Launcher struct {
	cfg         Config
	memory      int64
	stopTimeout int
	logger      *slog.Logger
	client      *client.Client

	mu     sync.Mutex
	closed bool
}

// New returns a launcher for cfg. It connects to the engine lazily, so an
// engine that is down makes the first call fail, not New. A nil
// opts.Logger discards log records.
func New(cfg *Config, opts tasklauncher.Options) (*Launcher, error) {
	if cfg == nil {
		return nil, errors.New("docker launcher: config is nil; pass the config returned by the plugin's NewConfig")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("docker launcher config: %w", err)
	}
	var memory int64
	if cfg.Resources != nil {
		memory, _ = parseMemory(cfg.Resources.Memory)
	}
	stopTimeout, _ := parseStopTimeout(cfg.StopTimeout)

	cli, err := client.New(clientOptions(cfg.ClientConfig)...)
	if err != nil {
		return nil, fmt.Errorf("docker launcher: create Engine API client: %w; check client_config or the DOCKER_* environment variables", err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	c := *cfg
	c.Binds = slices.Clone(cfg.Binds)
	c.Labels = maps.Clone(cfg.Labels)
	c.Networks = slices.Clone(cfg.Networks)
	c.StaticEnvironment = maps.Clone(cfg.StaticEnvironment)
	return &Launcher{
		cfg:         c,
		memory:      memory,
		stopTimeout: stopTimeout,
		logger:      logger.With("docker_host", cli.DaemonHost()),
		client:      cli,
	}, nil
}

// clientOptions returns the client options for a client_config block. Each
// empty field falls back to its DOCKER_* environment variable.
func clientOptions(cc *ClientConfig) []client.Opt {
	if cc == nil {
		cc = &ClientConfig{}
	}
	opts := []client.Opt{client.WithHostFromEnv()}
	if cc.Host != "" {
		opts = append(opts, client.WithHost(cc.Host))
	}
	if cc.CertPath != "" {
		opts = append(opts, client.WithTLSClientConfig(
			filepath.Join(cc.CertPath, "ca.pem"),
			filepath.Join(cc.CertPath, "cert.pem"),
			filepath.Join(cc.CertPath, "key.pem"),
		))
	} else {
		opts = append(opts, client.WithTLSClientConfigFromEnv())
	}
	if cc.APIVersion != "" {
		opts = append(opts, client.WithAPIVersion(cc.APIVersion))
	} else {
		opts = append(opts, client.WithAPIVersionFromEnv())
	}
	return opts
}

// taskState is the launcher state that StartTask returns and StopTask and
// WatchTask accept, encoded as JSON.
type taskState struct {
	ContainerID string `json:"container_id"`
	Name        string `json:"name,omitempty"`
	TaskID      string `json:"task_id,omitempty"`
	RunnerID    string `json:"runner_id,omitempty"`
}

// decodeState parses a launcher state. It returns nil for an empty state,
// which is a task that never started.
func decodeState(state []byte) (*taskState, error) {
	if len(strings.TrimSpace(string(state))) == 0 {
		return nil, nil
	}
	var st taskState
	if err := json.Unmarshal(state, &st); err != nil {
		return nil, fmt.Errorf("invalid docker launcher state: %w; pass the state returned by StartTask or ListTasks", err)
	}
	if st.ContainerID == "" {
		return nil, errors.New("invalid docker launcher state: container_id is empty; pass the state returned by StartTask or ListTasks")
	}
	return &st, nil
}

func (st *taskState) encode() []byte {
	b, err := json.Marshal(st)
	if err != nil {
		// A struct of strings always encodes.
		panic(fmt.Sprintf("encode docker launcher state: %v", err))
	}
	return b
}

// StartTask pulls the image if needed, creates and starts the runner's
// container, and returns its state.
//
// The container runs info.Image with info.Entrypoint (when set) and
// info.Arguments as its command. Its environment is static_environment and
// then info.Env, with later entries winning. Its labels are the config's
// labels, then info.Labels, then odrkit.launcher=docker.
//
// ctx bounds the pull. The create, connect and start calls run to their
// end even when ctx is done during them, so that the launcher gets the ID
// of every container the engine creates. When ctx is done by the time they return,
// StartTask removes the container and returns ctx's error, so a cancelled
// start leaves nothing behind. When that removal fails too, StartTask
// returns the state together with the error, so that StopTask can retry.
func (l *Launcher) StartTask(ctx context.Context, info *tasklauncher.LaunchInfo) ([]byte, error) {
	if info == nil {
		return nil, errors.New("start task: launch info is nil")
	}
	if err := l.checkOpen(); err != nil {
		return nil, fmt.Errorf("start task %s: %w", info.TaskID, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start task %s: %w", info.TaskID, err)
	}
	if info.Image == "" {
		return nil, fmt.Errorf("start task %s: the launch has no image; set oci_url in the runner profile, or the Manager's DefaultImage", info.TaskID)
	}
	for _, key := range slices.Sorted(maps.Keys(info.Env)) {
		if err := validateEnvName(key); err != nil {
			return nil, fmt.Errorf("start task %s: launch env: %w", info.TaskID, err)
		}
	}

	if err := l.ensureImage(ctx, info.Image); err != nil {
		return nil, fmt.Errorf("start task %s: %w", info.TaskID, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start task %s: %w", info.TaskID, err)
	}

	st, err := l.createAndStart(ctx, info)
	if err != nil {
		return l.abortStart(st, info, err)
	}
	if err := ctx.Err(); err != nil {
		return l.abortStart(st, info, err)
	}
	l.logger.Info("started task", "task_id", info.TaskID, "runner_id", info.RunnerID,
		"container_id", st.ContainerID, "container_name", st.Name, "image", info.Image)
	return st.encode(), nil
}

// createAndStart creates, connects and starts the container. It returns the
// state of a container it created also when a later step failed.
func (l *Launcher) createAndStart(ctx context.Context, info *tasklauncher.LaunchInfo) (*taskState, error) {
	// Calls that create something run without ctx's cancellation, so that
	// a cancelled caller cannot end a create whose container then exists
	// without its ID reaching the launcher.
	callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), engineCallTimeout)
	defer cancel()

	mode, extraNetworks := l.cfg.networkMode()
	name := containerName(info.RunnerID)
	created, err := l.client.ContainerCreate(callCtx, client.ContainerCreateOptions{
		Name:       name,
		Config:     l.containerConfig(info),
		HostConfig: l.hostConfig(mode),
	})
	if err != nil {
		// The engine may have created the container even though the call
		// failed, for example on a timeout, so remove it by name.
		if rmErr := l.removeContainer(callCtx, name); rmErr != nil {
			l.logger.Warn("could not remove a container whose creation failed", "container_name", name, "error", rmErr)
			return &taskState{ContainerID: name, Name: name, TaskID: info.TaskID, RunnerID: info.RunnerID},
				fmt.Errorf("create container from image %q: %w", info.Image, l.engineError(err))
		}
		return nil, fmt.Errorf("create container from image %q: %w", info.Image, l.engineError(err))
	}
	st := &taskState{ContainerID: created.ID, Name: name, TaskID: info.TaskID, RunnerID: info.RunnerID}
	for _, w := range created.Warnings {
		l.logger.Warn("Docker Engine warning on container create", "task_id", info.TaskID, "container_id", created.ID, "warning", w)
	}

	for _, net := range extraNetworks {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		_, err := l.client.NetworkConnect(callCtx, net, client.NetworkConnectOptions{
			Container:      created.ID,
			EndpointConfig: &network.EndpointSettings{},
		})
		if err != nil {
			return st, fmt.Errorf("connect container %s to network %q: %w; create the network or remove it from networks", name, net, l.engineError(err))
		}
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	if _, err := l.client.ContainerStart(callCtx, created.ID, client.ContainerStartOptions{}); err != nil {
		return st, fmt.Errorf("start container %s from image %q: %w", name, info.Image, l.engineError(err))
	}
	return st, nil
}

// abortStart removes what a failed StartTask created and returns its
// result: no state when the removal succeeded, else the state to stop.
func (l *Launcher) abortStart(st *taskState, info *tasklauncher.LaunchInfo, cause error) ([]byte, error) {
	err := fmt.Errorf("start task %s: %w", info.TaskID, cause)
	if st == nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), engineCallTimeout)
	defer cancel()
	if rmErr := l.removeContainer(ctx, st.ContainerID); rmErr != nil {
		l.logger.Warn("could not remove the container of a failed start; StopTask of the returned state removes it",
			"task_id", info.TaskID, "container_id", st.ContainerID, "error", rmErr)
		return st.encode(), err
	}
	return nil, err
}

func (l *Launcher) containerConfig(info *tasklauncher.LaunchInfo) *container.Config {
	env := make([]string, 0, len(l.cfg.StaticEnvironment)+len(info.Env))
	merged := maps.Clone(l.cfg.StaticEnvironment)
	if merged == nil {
		merged = map[string]string{}
	}
	maps.Copy(merged, info.Env)
	for _, key := range slices.Sorted(maps.Keys(merged)) {
		env = append(env, key+"="+merged[key])
	}

	labels := maps.Clone(l.cfg.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	maps.Copy(labels, info.Labels)
	labels[LabelLauncher] = PluginName

	stopTimeout := l.stopTimeout
	return &container.Config{
		Image:       info.Image,
		Entrypoint:  slices.Clone(info.Entrypoint),
		Cmd:         slices.Clone(info.Arguments),
		Env:         env,
		Labels:      labels,
		StopTimeout: &stopTimeout,
	}
}

func (l *Launcher) hostConfig(mode string) *container.HostConfig {
	hc := &container.HostConfig{
		NetworkMode: container.NetworkMode(mode),
		Binds:       slices.Clone(l.cfg.Binds),
	}
	if r := l.cfg.Resources; r != nil {
		hc.Resources.CPUShares = r.CPU
	}
	hc.Resources.Memory = l.memory
	return hc
}

// ensureImage pulls image unless the engine has it and force_pull is off.
func (l *Launcher) ensureImage(ctx context.Context, image string) error {
	if !l.cfg.ForcePull {
		_, err := l.client.ImageInspect(ctx, image)
		if err == nil {
			return nil
		}
		if !cerrdefs.IsNotFound(err) {
			return fmt.Errorf("inspect image %q: %w", image, l.engineError(ctxErr(ctx, err)))
		}
	}
	l.logger.Info("pulling image", "image", image, "force_pull", l.cfg.ForcePull)
	started := time.Now()
	resp, err := l.client.ImagePull(ctx, image, client.ImagePullOptions{})
	if err == nil {
		err = resp.Wait(ctx)
		_ = resp.Close()
	}
	if err != nil {
		return fmt.Errorf("pull image %q: %w; check the image name and that the Docker Engine can reach its registry, or load the image into the engine before the launch", image, l.engineError(ctxErr(ctx, err)))
	}
	l.logger.Info("pulled image", "image", image, "duration", time.Since(started))
	return nil
}

// ctxErr returns err wrapped with ctx's error when ctx is done, so that
// callers can match context.Canceled whatever the client returned.
func ctxErr(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		return fmt.Errorf("%w: %w", ctxErr, err)
	}
	return err
}

// engineError adds a hint to the error of a call that could not reach the
// engine. The client's error already names the engine's address.
func (l *Launcher) engineError(err error) error {
	if client.IsErrConnectionFailed(err) {
		return fmt.Errorf("%w; start the Docker Engine, or point client_config.host or DOCKER_HOST at it", err)
	}
	return err
}

// removeContainer force-removes a container and its anonymous volumes. A
// container that does not exist, or whose removal is already in progress
// and ends, counts as removed.
func (l *Launcher) removeContainer(ctx context.Context, id string) error {
	_, err := l.client.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	switch {
	case err == nil, cerrdefs.IsNotFound(err):
		return nil
	case cerrdefs.IsConflict(err) && strings.Contains(err.Error(), "already in progress"):
		return l.awaitRemoved(ctx, id)
	}
	return fmt.Errorf("remove container %s: %w", id, l.engineError(err))
}

// awaitRemoved waits until another removal of the container has ended.
func (l *Launcher) awaitRemoved(ctx context.Context, id string) error {
	wait := l.client.ContainerWait(ctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionRemoved})
	select {
	case <-wait.Result:
		return nil
	case err := <-wait.Error:
		if cerrdefs.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("wait for the removal of container %s: %w", id, l.engineError(err))
	}
}

// containerNameChars matches the characters Docker rejects in a container
// name.
var containerNameChars = regexp.MustCompile(`[^a-zA-Z0-9_.-]`)

// containerName returns a new container name that contains the runner ID,
// with a random suffix so that a retried start never collides.
func containerName(runnerID string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	id := containerNameChars.ReplaceAllString(runnerID, "-")
	if len(id) > 64 {
		id = id[:64]
	}
	if id == "" {
		return "odrkit-" + hex.EncodeToString(b)
	}
	return "odrkit-" + id + "-" + hex.EncodeToString(b)
}

func (l *Launcher) checkOpen() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	return nil
}

// Close makes later calls return ErrClosed and closes the client's idle
// connections. Calls in progress run to their end. The containers keep
// running, and a new Launcher can stop them from their state. Close
// returns nil, also when called again.
func (l *Launcher) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	if err := l.client.Close(); err != nil {
		return fmt.Errorf("close Docker Engine client: %w", err)
	}
	return nil
}
