// Command quickstart runs three jobs, each on an on-demand runner launched
// for it as a local child process, and prints their output and a summary.
//
// The program is both the host and the runner: the exec launcher starts
// the program's own executable, and a process that finds a runner ID in its
// environment runs as the runner.
//
//	go run ./examples/quickstart
//
// With -docker each runner is a container instead, on the Docker engine
// that DOCKER_HOST names. The program then builds a runner image from a
// static build of itself and a static busybox for the jobs' shell.
//
//	go run ./examples/quickstart -docker
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/odrkit/odrkit/examples/internal/shelljob"
	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/runnerapi"
	"github.com/odrkit/odrkit/runnerapi/runner"
	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/docker"
	"github.com/odrkit/odrkit/tasklauncher/exec"
)

// jobs are the quickstart's jobs; the last one fails on purpose.
var jobs = []struct{ name, command string }{
	{"hello", `echo "hello from runner $ODRKIT_RUNNER_ID"`},
	{"count", `for i in 1 2 3; do echo "line $i"; done`},
	{"fail", `echo "this job fails on purpose" >&2; exit 3`},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	if os.Getenv(runner.EnvRunnerID) != "" {
		os.Exit(runRunner(ctx, logger))
	}
	useDocker := flag.Bool("docker", false, "run each runner as a Docker container on the engine DOCKER_HOST names")
	flag.Parse()
	os.Exit(runHost(ctx, logger, os.Stdout, *useDocker))
}

// runRunner is the on-demand runner side of the program.
func runRunner(ctx context.Context, logger *slog.Logger) int {
	cfg, err := runner.ConfigFromEnv()
	if err != nil {
		logger.Error("runner configuration", "error", err)
		return 1
	}
	cfg.Logger = logger
	r, err := runner.New(cfg)
	if err != nil {
		logger.Error("create runner", "error", err)
		return 1
	}
	r.Handle(shelljob.Kind, shelljob.Handler)
	if err := r.Run(ctx); err != nil {
		logger.Error("runner failed", "error", err)
		return 1
	}
	return 0
}

// runHost starts the host, runs the jobs and prints the summary. It
// returns 0 when the outcome is the expected one.
func runHost(ctx context.Context, logger *slog.Logger, stdout io.Writer, useDocker bool) int {
	summary, err := runJobs(ctx, logger, stdout, useDocker)
	if err != nil {
		logger.Error("quickstart failed", "error", err)
		return 1
	}
	fmt.Fprintf(stdout, "quickstart: %d jobs, %d succeeded, %d failed; %d runners launched, %d stopped\n",
		summary.jobs, summary.succeeded, summary.failed, summary.launched, summary.stopped)
	if summary != (outcome{jobs: 3, succeeded: 2, failed: 1, launched: 3, stopped: 3}) {
		return 1
	}
	return 0
}

type outcome struct{ jobs, succeeded, failed, launched, stopped int }

func runJobs(ctx context.Context, logger *slog.Logger, stdout io.Writer, useDocker bool) (outcome, error) {
	var result outcome
	local := &profile.Profile{
		Name:           "local",
		Plugin:         exec.PluginName,
		Default:        true,
		StartupTimeout: 30 * time.Second,
		Config:         exec.Plugin().NewConfig(),
	}
	if useDocker {
		var err error
		if local, err = dockerProfile(ctx); err != nil {
			return result, err
		}
	}
	profiles, err := profile.NewSet(local)
	if err != nil {
		return result, err
	}
	registry := tasklauncher.NewRegistry(exec.Plugin(), docker.Plugin())

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return result, fmt.Errorf("listen: %w", err)
	}
	mgr, err := ondemand.New(ctx, ondemand.Config{
		Launchers:     registry,
		Profiles:      profiles,
		AdvertiseAddr: lis.Addr().String(),
		Logger:        logger,
	})
	if err != nil {
		return result, err
	}
	defer mgr.Close()

	srv := grpc.NewServer(runnerapi.ServerOptions()...)
	runnerapi.NewServer(mgr, runnerapi.Config{Logger: logger}).Register(srv)
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(lis) }()
	defer func() {
		srv.Stop()
		<-serveDone
	}()

	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
	)
	for _, j := range jobs {
		job, err := mgr.Submit(ctx, ondemand.JobSpec{Kind: shelljob.Kind, Payload: []byte(j.command)})
		if err != nil {
			return result, fmt.Errorf("submit job %s: %w", j.name, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			done, task, err := follow(ctx, mgr, job, j.name, &mu, stdout)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			result.jobs++
			if done.State == ondemand.StateSuccess {
				result.succeeded++
			} else {
				result.failed++
			}
			if !task.StartedAt.IsZero() {
				result.launched++
			}
			if task.State == ondemand.TaskStopped {
				result.stopped++
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return result, errs[0]
	}
	return result, nil
}

// follow prints the job's output as it arrives, then waits until its task
// is stopped.
func follow(ctx context.Context, mgr *ondemand.Manager, job *ondemand.Job, name string, mu *sync.Mutex, stdout io.Writer) (*ondemand.Job, *ondemand.Task, error) {
	for ev, err := range mgr.Watch(ctx, job.ID) {
		if err != nil {
			return nil, nil, err
		}
		mu.Lock()
		switch ev.Type {
		case ondemand.EventOutput:
			fmt.Fprintf(stdout, "[%s] %s\n", name, ev.Line)
		case ondemand.EventDone:
			fmt.Fprintf(stdout, "[%s] %s\n", name, ev.Message)
		}
		mu.Unlock()
	}
	done, err := mgr.Get(ctx, job.ID)
	if err != nil {
		return nil, nil, err
	}
	task, err := mgr.WaitTask(ctx, job.TaskID)
	if err != nil {
		return nil, nil, err
	}
	return done, task, nil
}
