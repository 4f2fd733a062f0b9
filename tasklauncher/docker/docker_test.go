package docker_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/docker"
	"github.com/odrkit/odrkit/tasklauncher/launchertest"
	"github.com/odrkit/odrkit/tasklauncher/launchertest/testrunner"
)

func TestDockerLauncherConformance(t *testing.T) {
	cli := requireEngine(t)
	image := testImage(t)

	launchertest.Run(t, launchertest.Harness{
		Plugin: docker.Plugin(),
		Config: func(t *testing.T) any {
			cfg := docker.Plugin().NewConfig().(*docker.Config)
			cfg.StopTimeout = "2s"
			return cfg
		},
		Runner: func(t *testing.T) *tasklauncher.LaunchInfo {
			return &tasklauncher.LaunchInfo{Image: image}
		},
		RemoveTask: func(t *testing.T, state []byte) {
			_, err := cli.ContainerRemove(testContext(t), containerID(t, state), client.ContainerRemoveOptions{Force: true})
			require.NoError(t, err)
		},
	})
}

// newLauncher returns a docker launcher for cfg, closed when the test ends.
func newLauncher(t *testing.T, cfg *docker.Config) *docker.Launcher {
	t.Helper()
	if cfg == nil {
		cfg = docker.Plugin().NewConfig().(*docker.Config)
	}
	l, err := docker.New(cfg, tasklauncher.Options{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, l.Close()) })
	return l
}

// containerID returns the container ID in a docker launcher state.
func containerID(t *testing.T, state []byte) string {
	t.Helper()
	var st struct {
		ContainerID string `json:"container_id"`
	}
	require.NoError(t, json.Unmarshal(state, &st))
	require.NotEmpty(t, st.ContainerID, "no container_id in state %s", state)
	return st.ContainerID
}

// uniqueLabels returns labels that only the tasks of this test, in this
// test binary, carry.
func uniqueLabels(t *testing.T) map[string]string {
	return map[string]string{"odrkit.test": t.Name(), "odrkit.test.run": testRun}
}

// sleepLaunch returns a launch of the runner program in ModeSleep, which
// waits for SIGTERM without connecting.
func sleepLaunch(t *testing.T, image string, labels map[string]string) *tasklauncher.LaunchInfo {
	runnerID := "runner-" + t.Name()
	return &tasklauncher.LaunchInfo{
		TaskID:   "task-" + t.Name(),
		RunnerID: runnerID,
		Image:    image,
		Env:      map[string]string{testrunner.EnvMode: testrunner.ModeSleep, ondemand.EnvRunnerID: runnerID},
		Labels:   labels,
	}
}

func TestStartMissingImageFailsFast(t *testing.T) {
	cli := requireEngine(t)
	l := newLauncher(t, nil)
	labels := uniqueLabels(t)
	// A registry on a closed loopback port: the pull fails at once without
	// leaving the machine.
	const image = "127.0.0.1:1/odrkit/no-such-runner:v1"

	started := time.Now()
	state, err := l.StartTask(testContext(t), sleepLaunch(t, image, labels))
	elapsed := time.Since(started)
	require.Error(t, err)
	require.Nil(t, state)
	require.Contains(t, err.Error(), `"`+image+`"`)
	require.Less(t, elapsed, 10*time.Second, "a pull from an unreachable registry took %s", elapsed)

	filters := client.Filters{}.Add("label", "odrkit.test="+t.Name(), "odrkit.test.run="+testRun)
	list, err := cli.ContainerList(testContext(t), client.ContainerListOptions{All: true, Filters: filters})
	require.NoError(t, err)
	require.Empty(t, list.Items, "a failed start left a container")
}

func TestStartForcePullFailsForLocalImage(t *testing.T) {
	image := testImage(t)
	cfg := docker.Plugin().NewConfig().(*docker.Config)
	cfg.ForcePull = true
	l := newLauncher(t, cfg)

	// The image exists only in the engine, so a forced pull must fail and
	// name it.
	_, err := l.StartTask(testContext(t), sleepLaunch(t, image, uniqueLabels(t)))
	require.Error(t, err)
	require.Contains(t, err.Error(), `pull image "`+image+`"`)
}

func TestContainerCarriesConfig(t *testing.T) {
	cli := requireEngine(t)
	image := testImage(t)
	bindSource := t.TempDir()

	cfg := docker.Plugin().NewConfig().(*docker.Config)
	cfg.Labels = map[string]string{"team": "ci", "odrkit.test.shared": "from-config"}
	cfg.StaticEnvironment = map[string]string{"STATIC_ONLY": "static", "SHARED": "from-config"}
	cfg.Resources = &docker.Resources{CPU: 512, Memory: "64MB"}
	cfg.Binds = []string{bindSource + ":/data:ro"}
	cfg.StopTimeout = "3s"
	l := newLauncher(t, cfg)

	labels := uniqueLabels(t)
	labels["odrkit.test.shared"] = "from-launch"
	info := sleepLaunch(t, image, labels)
	info.Env["SHARED"] = "from-launch"
	info.Arguments = []string{"--first", "second"}
	state, err := l.StartTask(testContext(t), info)
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.StopTask(context.Background(), state) })

	inspected, err := cli.ContainerInspect(testContext(t), containerID(t, state), client.ContainerInspectOptions{})
	require.NoError(t, err)
	c := inspected.Container

	require.Equal(t, "ci", c.Config.Labels["team"])
	require.Equal(t, "from-launch", c.Config.Labels["odrkit.test.shared"], "a launch label must win over a config label")
	require.Equal(t, t.Name(), c.Config.Labels["odrkit.test"])
	require.Equal(t, docker.PluginName, c.Config.Labels[docker.LabelLauncher])

	require.Contains(t, c.Config.Env, "STATIC_ONLY=static")
	require.Contains(t, c.Config.Env, "SHARED=from-launch", "a launch variable must win over static_environment")
	require.NotContains(t, c.Config.Env, "SHARED=from-config")
	require.Contains(t, c.Config.Env, testrunner.EnvMode+"="+testrunner.ModeSleep)

	require.Equal(t, image, c.Config.Image)
	require.Equal(t, []string{"--first", "second"}, []string(c.Config.Cmd))
	require.Equal(t, "host", string(c.HostConfig.NetworkMode))
	require.Equal(t, int64(512), c.HostConfig.CPUShares)
	require.Equal(t, int64(64_000_000), c.HostConfig.Memory)
	require.Equal(t, []string{bindSource + ":/data:ro"}, c.HostConfig.Binds)
	require.NotNil(t, c.Config.StopTimeout)
	require.Equal(t, 3, *c.Config.StopTimeout)
	require.True(t, c.State.Running)

	require.NoError(t, l.StopTask(testContext(t), state))
	_, err = cli.ContainerInspect(testContext(t), containerID(t, state), client.ContainerInspectOptions{})
	require.True(t, cerrdefs.IsNotFound(err), "container still exists after StopTask: %v", err)
}

func TestDebugContainersKeepsStoppedContainer(t *testing.T) {
	cli := requireEngine(t)
	image := testImage(t)
	cfg := docker.Plugin().NewConfig().(*docker.Config)
	cfg.DebugContainers = true
	cfg.StopTimeout = "2s"
	l := newLauncher(t, cfg)

	state, err := l.StartTask(testContext(t), sleepLaunch(t, image, uniqueLabels(t)))
	require.NoError(t, err)
	id := containerID(t, state)
	t.Cleanup(func() {
		_, _ = cli.ContainerRemove(context.Background(), id, client.ContainerRemoveOptions{Force: true})
	})

	require.NoError(t, l.StopTask(testContext(t), state))
	inspected, err := cli.ContainerInspect(testContext(t), id, client.ContainerInspectOptions{})
	require.NoError(t, err, "debug_containers must keep the container")
	require.False(t, inspected.Container.State.Running)
	require.NoError(t, l.StopTask(testContext(t), state), "a second stop of a kept container")
}

// TestExitBeforeConnectFailsJob runs the whole flow through a Manager: the
// container exits with code 3 before its runner connects, and the job fails
// with that code and the container's last output lines.
func TestExitBeforeConnectFailsJob(t *testing.T) {
	requireEngine(t)
	image := testImage(t)

	cfg := docker.Plugin().NewConfig().(*docker.Config)
	cfg.StopTimeout = "2s"
	profiles, err := profile.NewSet(&profile.Profile{
		Name:    "docker-test",
		Plugin:  docker.PluginName,
		Default: true,
		Env:     map[string]string{testrunner.EnvMode: testrunner.ExitMode(3)},
		Config:  cfg,
	})
	require.NoError(t, err)
	mgr, err := ondemand.New(context.Background(), ondemand.Config{
		Launchers: tasklauncher.NewRegistry(docker.Plugin()),
		Profiles:  profiles,
		// The runner exits before it dials, so nothing listens here.
		AdvertiseAddr: "127.0.0.1:1",
		DefaultImage:  image,
		HostID:        "docker-test-" + t.Name(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, mgr.Close()) })

	ctx := testContext(t)
	job, err := mgr.Submit(ctx, ondemand.JobSpec{Kind: "never-runs"})
	require.NoError(t, err)
	done, err := mgr.Wait(ctx, job.ID)
	require.NoError(t, err)

	require.Equal(t, ondemand.StateError, done.State)
	require.NotNil(t, done.Error)
	require.Equal(t, ondemand.ReasonExitedBeforeConnect, done.Error.Reason)
	require.NotNil(t, done.Error.ExitCode)
	require.Equal(t, 3, *done.Error.ExitCode)
	task, err := mgr.Task(ctx, job.TaskID)
	require.NoError(t, err)
	require.Contains(t, done.Error.Message, testrunner.StdoutLine(task.RunnerID))
	require.Contains(t, done.Error.Message, testrunner.StderrLine(task.RunnerID))

	task, err = mgr.WaitTask(ctx, job.TaskID)
	require.NoError(t, err)
	require.Equal(t, ondemand.TaskStopped, task.State)
	l := newLauncher(t, cfg)
	left, err := l.ListTasks(ctx, map[string]string{ondemand.LabelTask: task.ID})
	require.NoError(t, err)
	require.Empty(t, left, "the task's container is left after its stop job")
}

// TestLeftoversFoundAfterHostCrash simulates a host that started tasks and
// crashed before it stored their states: a new launcher finds the
// containers by their labels and removes them.
func TestLeftoversFoundAfterHostCrash(t *testing.T) {
	cli := requireEngine(t)
	image := testImage(t)
	hostLabels := map[string]string{ondemand.LabelHost: "crashed-host-" + testRun}

	crashed := newLauncher(t, nil)
	var ids []string
	for i := range 2 {
		labels := uniqueLabels(t)
		labels[ondemand.LabelHost] = hostLabels[ondemand.LabelHost]
		info := sleepLaunch(t, image, labels)
		info.RunnerID += "-" + strconv.Itoa(i)
		state, err := crashed.StartTask(testContext(t), info)
		require.NoError(t, err)
		ids = append(ids, containerID(t, state))
		t.Cleanup(func() {
			_, _ = cli.ContainerRemove(context.Background(), containerID(t, state), client.ContainerRemoveOptions{Force: true})
		})
	}
	// The crash: the launcher goes away and the states are lost.
	require.NoError(t, crashed.Close())

	recovered := newLauncher(t, nil)
	ctx := testContext(t)
	found, err := recovered.ListTasks(ctx, hostLabels)
	require.NoError(t, err)
	require.Len(t, found, len(ids))
	var foundIDs []string
	for _, ti := range found {
		require.True(t, ti.Running)
		require.Equal(t, hostLabels[ondemand.LabelHost], ti.Labels[ondemand.LabelHost])
		foundIDs = append(foundIDs, containerID(t, ti.State))
		require.NoError(t, recovered.StopTask(ctx, ti.State))
	}
	require.ElementsMatch(t, ids, foundIDs)

	found, err = recovered.ListTasks(ctx, hostLabels)
	require.NoError(t, err)
	require.Empty(t, found)
	for _, id := range ids {
		_, err := cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
		require.True(t, cerrdefs.IsNotFound(err), "container %s still exists: %v", id, err)
	}
}

func TestWatchTaskSeparatesStreams(t *testing.T) {
	requireEngine(t)
	image := testImage(t)
	l := newLauncher(t, nil)
	info := sleepLaunch(t, image, uniqueLabels(t))
	info.Env[testrunner.EnvMode] = testrunner.ExitMode(0)
	state, err := l.StartTask(testContext(t), info)
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.StopTask(context.Background(), state) })

	var lines []tasklauncher.OutputLine
	exit, err := l.WatchTask(testContext(t), state, func(line tasklauncher.OutputLine) { lines = append(lines, line) })
	require.NoError(t, err)
	require.Equal(t, tasklauncher.TaskExit{Code: 0}, exit)
	require.Equal(t, []tasklauncher.OutputLine{
		{Stream: tasklauncher.Stdout, Line: testrunner.StdoutLine(info.RunnerID)},
		{Stream: tasklauncher.Stderr, Line: testrunner.StderrLine(info.RunnerID)},
	}, sortedByStream(lines))
}

// sortedByStream orders lines stdout first, keeping the order within each
// stream, because the engine's order across streams is not fixed.
func sortedByStream(lines []tasklauncher.OutputLine) []tasklauncher.OutputLine {
	sorted := slices.Clone(lines)
	slices.SortStableFunc(sorted, func(a, b tasklauncher.OutputLine) int {
		return strings.Compare(string(b.Stream), string(a.Stream))
	})
	return sorted
}
