package docker_test

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/runnerapi"
	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/docker"
)

// BenchmarkLaunch compares, in one run on the same engine and image, the
// time from Submit to the on-demand runner connected and holding its job
// (odrkit) with a bare container create and start through the same client
// (raw). The ratio of the two is odrkit's launch overhead.
func BenchmarkLaunch(b *testing.B) {
	cli := requireEngine(b)
	// The example runner takes on-demand jobs; the suite's test runner
	// takes only static ones.
	image := "odrkit-bench-runner:" + testRun
	require.NoError(b, buildRunnerImage(cli, "github.com/odrkit/odrkit/examples/runner", image))
	b.Cleanup(func() {
		_, err := cli.ImageRemove(context.Background(), image, client.ImageRemoveOptions{Force: true})
		require.NoError(b, err)
	})

	b.Run("raw", func(b *testing.B) {
		ctx := context.Background()
		var latencies []time.Duration
		defer func() { reportMedian(b, latencies) }()
		for range b.N {
			start := time.Now()
			created, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
				Config:     &container.Config{Image: image},
				HostConfig: &container.HostConfig{NetworkMode: "host"},
			})
			require.NoError(b, err)
			_, err = cli.ContainerStart(ctx, created.ID, client.ContainerStartOptions{})
			require.NoError(b, err)
			latencies = append(latencies, time.Since(start))

			b.StopTimer()
			_, err = cli.ContainerRemove(ctx, created.ID, client.ContainerRemoveOptions{Force: true})
			require.NoError(b, err)
			b.StartTimer()
		}
	})

	b.Run("odrkit", func(b *testing.B) {
		mgr := benchManager(b, image)
		ctx := context.Background()
		var latencies []time.Duration
		defer func() { reportMedian(b, latencies) }()
		for range b.N {
			start := time.Now()
			// The runner acknowledges the job (EventRunning) before its
			// handler runs; the image has no shell, so the job then fails.
			job, err := mgr.Submit(ctx, ondemand.JobSpec{Kind: "shell", Payload: []byte("true")})
			require.NoError(b, err)
			for ev, err := range mgr.Watch(ctx, job.ID) {
				require.NoError(b, err)
				if ev.Type == ondemand.EventRunning {
					break
				}
			}
			elapsed := time.Since(start)

			b.StopTimer()
			_, err = mgr.WaitTask(ctx, job.TaskID)
			require.NoError(b, err)
			latencies = append(latencies, elapsed)
			b.StartTimer()
		}
	})
}

// benchManager starts a Manager that launches runners as containers of
// image, with the runner API on loopback.
func benchManager(b *testing.B, image string) *ondemand.Manager {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	cfg := docker.Plugin().NewConfig().(*docker.Config)
	cfg.StopTimeout = "1s"
	profiles, err := profile.NewSet(&profile.Profile{
		Name:    "docker-bench",
		Plugin:  docker.PluginName,
		Default: true,
		Config:  cfg,
	})
	require.NoError(b, err)
	mgr, err := ondemand.New(context.Background(), ondemand.Config{
		Launchers:     tasklauncher.NewRegistry(docker.Plugin()),
		Profiles:      profiles,
		AdvertiseAddr: lis.Addr().String(),
		DefaultImage:  image,
		HostID:        "docker-bench",
	})
	require.NoError(b, err)
	srv := grpc.NewServer(runnerapi.ServerOptions()...)
	runnerapi.NewServer(mgr, runnerapi.Config{}).Register(srv)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	b.Cleanup(func() {
		srv.Stop()
		<-served
		require.NoError(b, mgr.Close())
	})
	return mgr
}

// reportMedian reports the median of the latencies in milliseconds.
func reportMedian(b *testing.B, latencies []time.Duration) {
	if len(latencies) == 0 {
		return
	}
	slices.Sort(latencies)
	b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds())/1000, "median-ms")
}
