// Command server is a small odrkit host: it loads runner profiles, serves
// the runner API, and runs the shell command given on its command line as a
// job on an on-demand runner.
//
//	go run ./examples/server -profiles examples/server/profiles.hcl -- echo hello
//
// Without a command it serves until interrupted, for static runners. With
// -check it only validates profile files:
//
//	go run ./examples/server -check profiles.hcl
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/odrkit/odrkit/examples/internal/shelljob"
	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/runnerapi"
	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/exec"
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		check       = flag.Bool("check", false, "validate the profile files given as arguments, print diagnostics, and exit")
		profiles    = flag.String("profiles", "examples/server/profiles.hcl", "comma-separated profile files or directories")
		listen      = flag.String("listen", "127.0.0.1:0", "address the runner API listens on")
		advertise   = flag.String("advertise", "", "address on-demand runners dial (default: the listen address)")
		profileName = flag.String("profile", "", "profile of the job (default: the default profile)")
		runnerID    = flag.String("static-runner", "", "issue a token for a static runner with this ID and write it to -token-file")
		tokenFile   = flag.String("token-file", "runner.token", "file the static runner token is written to")
	)
	flag.Parse()
	registry := tasklauncher.NewRegistry(exec.Plugin())
	if *check {
		return runCheck(registry, flag.Args(), os.Stdout, os.Stderr)
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := serve(logger, registry, *profiles, *listen, *advertise, *profileName, *runnerID, *tokenFile, flag.Args()); err != nil {
		logger.Error("server failed", "error", err)
		return 1
	}
	return 0
}

func serve(logger *slog.Logger, registry *tasklauncher.Registry, profilePaths, listen, advertise, profileName, runnerID, tokenFile string, command []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	set, diags := profile.LoadFiles(registry, strings.Split(profilePaths, ",")...)
	if diags.HasErrors() {
		return fmt.Errorf("load profiles: %w", diags)
	}
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", listen, err)
	}
	if advertise == "" {
		advertise = lis.Addr().String()
	}
	mgr, err := ondemand.New(ctx, ondemand.Config{
		Launchers:     registry,
		Profiles:      set,
		AdvertiseAddr: advertise,
		Logger:        logger,
	})
	if err != nil {
		return err
	}
	defer mgr.Close()

	srv := grpc.NewServer(runnerapi.ServerOptions()...)
	runnerapi.NewServer(mgr, runnerapi.Config{Logger: logger}).Register(srv)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	defer func() {
		srv.Stop()
		<-served
	}()
	logger.Info("runner API listening", "addr", lis.Addr().String(), "profiles", set.Len())

	if runnerID != "" {
		token, err := mgr.IssueRunnerToken(runnerID, nil, 24*time.Hour)
		if err != nil {
			return err
		}
		if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
			return fmt.Errorf("write -token-file: %w", err)
		}
		logger.Info("static runner token written", "runner", runnerID, "file", tokenFile)
	}

	if len(command) == 0 {
		<-ctx.Done()
		return nil
	}
	return runJob(ctx, mgr, profileName, strings.Join(command, " "))
}

// runJob runs one shell command as a job, prints its output, and waits
// until its runner is stopped.
func runJob(ctx context.Context, mgr *ondemand.Manager, profileName, command string) error {
	job, err := mgr.Submit(ctx, ondemand.JobSpec{Kind: shelljob.Kind, Payload: []byte(command), Profile: profileName})
	if err != nil {
		return err
	}
	for ev, err := range mgr.Watch(ctx, job.ID) {
		if err != nil {
			return err
		}
		if ev.Type == ondemand.EventOutput {
			fmt.Println(ev.Line)
		}
	}
	done, err := mgr.Get(ctx, job.ID)
	if err != nil {
		return err
	}
	if _, err := mgr.WaitTask(ctx, job.TaskID); err != nil {
		return err
	}
	if done.Error != nil {
		return fmt.Errorf("job %s: %w", done.ID, done.Error)
	}
	if done.State != ondemand.StateSuccess {
		return errors.New("job " + done.ID + " ended " + string(done.State))
	}
	return nil
}
