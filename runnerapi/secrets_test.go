package runnerapi_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/runnerapi"
	"github.com/odrkit/odrkit/runnerapi/runner"
	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/exec"
)

// tokenRecorder is an exec launcher plugin that records the runner token
// of every task it starts, so that a test can look for the secrets.
type tokenRecorder struct {
	mu     sync.Mutex
	tokens []string
}

func (r *tokenRecorder) plugin() tasklauncher.Plugin {
	real := exec.Plugin()
	return tasklauncher.Plugin{
		Name:      "recording-exec",
		NewConfig: real.NewConfig,
		New: func(config any, opts tasklauncher.Options) (tasklauncher.Launcher, error) {
			l, err := exec.New(config.(*exec.Config), opts)
			if err != nil {
				return nil, err
			}
			return &recordingLauncher{Launcher: l, recorder: r}, nil
		},
	}
}

func (r *tokenRecorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.tokens...)
}

type recordingLauncher struct {
	*exec.Launcher
	recorder *tokenRecorder
}

func (l *recordingLauncher) StartTask(ctx context.Context, info *tasklauncher.LaunchInfo) ([]byte, error) {
	l.recorder.mu.Lock()
	l.recorder.tokens = append(l.recorder.tokens, info.Env[runner.EnvRunnerToken])
	l.recorder.mu.Unlock()
	return l.Launcher.StartTask(ctx, info)
}

func TestSecretsNeverLeave(t *testing.T) {
	const apiKey = "api-key-3f9c1b7e-never-print"
	labels := map[string]string{"zone": "secrets"}
	recorder := &tokenRecorder{}
	plugin := recorder.plugin()
	var hostLogs, launcherLogs syncBuffer
	h := startHost(t, hostOptions{
		targetRunner: &profile.TargetRunner{Labels: labels},
		profileEnv:   map[string]string{"ACME_API_KEY": apiKey},
		plugin:       &plugin,
		logs:         &hostLogs,
	})

	// A static runner executes the launch jobs, with its own logger for
	// the runner library, the executor and the launcher.
	launcherLogger := slog.New(slog.NewTextHandler(&launcherLogs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	staticToken, err := h.mgr.IssueRunnerToken("launcher-secrets", labels, time.Minute)
	require.NoError(t, err)
	r, err := runner.New(runner.Config{ServerAddr: h.addr, RunnerID: "launcher-secrets", Token: staticToken, Labels: labels, Concurrency: 8, Logger: launcherLogger})
	require.NoError(t, err)
	executor := ondemand.NewLaunchExecutor(h.registry, launcherLogger)
	defer executor.Close()
	runnerapi.HandleLaunchJobs(r, executor)
	runCtx, stopRunner := context.WithCancel(t.Context())
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(runCtx) }()
	defer func() {
		stopRunner()
		require.NoError(t, <-runDone)
	}()

	// One job that succeeds and one that fails, each on its own runner.
	ctx := waitCtx(t)
	var seen []string // every event, job, task and error, as text
	var firstRunnerID string
	for _, spec := range []ondemand.JobSpec{
		{Kind: kindLines, Payload: []byte("first\nsecond")},
		{Kind: kindFail, Payload: []byte("3")},
	} {
		job, err := h.mgr.Submit(ctx, spec)
		require.NoError(t, err)
		done, err := h.mgr.Wait(ctx, job.ID)
		require.NoError(t, err)
		if done.Error != nil {
			seen = append(seen, done.Error.Error())
		}
		task := h.waitTask(t, job)
		if firstRunnerID == "" {
			firstRunnerID = task.RunnerID
		}
		seen = append(seen, fmt.Sprintf("%+v", task))
		for _, id := range []string{job.ID, task.StartJobID, task.WatchJobID, task.StopJobID} {
			got, err := h.mgr.Get(ctx, id)
			require.NoError(t, err)
			seen = append(seen, fmt.Sprintf("%+v", got))
			if got.Error != nil {
				seen = append(seen, got.Error.Error())
			}
			for _, ev := range h.events(t, id) {
				seen = append(seen, fmt.Sprintf("%+v", ev))
			}
		}
	}
	// The first runner's token again, after its job: the host rejects it.
	tokens := recorder.all()
	require.Len(t, tokens, 2, "the launcher did not record both runner tokens")
	spent := openStream(t, ctx, h.addr, tokens[0], firstRunnerID)
	_, err = spent.Recv()
	require.Equal(t, codes.PermissionDenied, status.Code(err), "stream error: %v", err)
	seen = append(seen, err.Error())

	secrets := append([]string{apiKey, staticToken}, tokens...)
	for _, secret := range secrets {
		require.NotEmpty(t, secret)
	}
	outputs := map[string]string{
		"host logs":                      hostLogs.String(),
		"launcher logs":                  launcherLogs.String(),
		"events, jobs, tasks and errors": strings.Join(seen, "\n"),
	}
	for name, text := range outputs {
		require.NotEmpty(t, text, "nothing was captured in %s", name)
		for i, secret := range secrets {
			require.NotContains(t, text, secret, "%s contain secret %d", name, i)
		}
	}
	// The captures did record the run: the runners' output and the
	// failure reached them.
	require.Contains(t, outputs["events, jobs, tasks and errors"], "first")
	require.Contains(t, outputs["events, jobs, tasks and errors"], "failed on purpose")
	require.Contains(t, hostLogs.String(), "launcher-secrets")
	require.Contains(t, launcherLogs.String(), "started task")
}

func TestLaunchInfoFormattingRedactsEnv(t *testing.T) {
	const secret = "token-value-never-print"
	info := tasklauncher.LaunchInfo{TaskID: "task-1", RunnerID: "odr-1", Env: map[string]string{runner.EnvRunnerToken: secret, "API_KEY": secret}}

	var logs strings.Builder
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	logger.Info("launch", "info", &info, "value", info)
	formatted := map[string]string{
		"%v pointer":  fmt.Sprintf("%v", &info),
		"%v value":    fmt.Sprintf("%v", info),
		"%+v value":   fmt.Sprintf("%+v", info),
		"%#v pointer": fmt.Sprintf("%#v", &info),
		"%#v value":   fmt.Sprintf("%#v", info),
		"slog":        logs.String(),
	}
	for name, text := range formatted {
		require.NotContains(t, text, secret, name)
		require.Contains(t, text, "odr-1", name)
		require.Contains(t, text, "API_KEY", "%s lists the env keys", name)
	}
}

func TestProfileFormattingRedactsEnv(t *testing.T) {
	const secret = "profile-secret-never-print"
	p := profile.Profile{Name: "local", Plugin: "exec", Env: map[string]string{"API_KEY": secret}}
	var logs strings.Builder
	slog.New(slog.NewTextHandler(&logs, nil)).Info("profile", "profile", p)
	for name, text := range map[string]string{
		"%v":   fmt.Sprintf("%v", p),
		"%+v":  fmt.Sprintf("%+v", &p),
		"%#v":  fmt.Sprintf("%#v", p),
		"slog": logs.String(),
	} {
		require.NotContains(t, text, secret, name)
		require.Contains(t, text, "API_KEY", name)
	}
}
