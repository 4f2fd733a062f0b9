// Command runner is a standalone odrkit runner. It executes "shell" jobs
// (the payload is a shell command) and, with -launch, the start, watch and
// stop jobs of on-demand runners, using the exec and docker launchers.
//
// Settings come from the ODRKIT_* environment variables that a host sets
// when it launches an on-demand runner. Flags override them for a static
// runner started by hand:
//
//	go run ./examples/runner -addr 127.0.0.1:9090 -id static-1 \
//	    -token-file runner.token -labels zone=local -launch
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/odrkit/odrkit/examples/internal/shelljob"
	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/runnerapi"
	"github.com/odrkit/odrkit/runnerapi/runner"
	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/docker"
	"github.com/odrkit/odrkit/tasklauncher/exec"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "runner:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		addr        = flag.String("addr", "", "host:port of the runner API (default $"+runner.EnvServerAddr+")")
		id          = flag.String("id", "", "runner ID (default $"+runner.EnvRunnerID+")")
		tokenFile   = flag.String("token-file", "", "file holding the runner token (default: the token in $"+runner.EnvRunnerToken+")")
		labels      = flag.String("labels", "", "runner labels as key=value,key2=value2")
		concurrency = flag.Int("concurrency", 0, "jobs a static runner runs at once (default 1, or 16 with -launch)")
		launch      = flag.Bool("launch", false, "also execute start, watch and stop jobs with the exec and docker launchers")
		verbose     = flag.Bool("v", false, "log at debug level")
	)
	flag.Parse()
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	cfg, err := configFromEnvAndFlags(*addr, *id, *tokenFile, *labels)
	if err != nil {
		return err
	}
	cfg.Logger = logger
	if *concurrency > 0 {
		cfg.Concurrency = *concurrency
	} else if *launch && cfg.Concurrency == 0 {
		// Each watch job holds a slot while its task runs.
		cfg.Concurrency = 16
	}
	r, err := runner.New(cfg)
	if err != nil {
		return err
	}
	r.Handle(shelljob.Kind, shelljob.Handler)
	if *launch {
		executor := ondemand.NewLaunchExecutor(tasklauncher.NewRegistry(exec.Plugin(), docker.Plugin()), logger)
		defer executor.Close()
		runnerapi.HandleLaunchJobs(r, executor)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return r.Run(ctx)
}

// configFromEnvAndFlags reads the ODRKIT_* variables and lets non-empty
// flags replace them.
func configFromEnvAndFlags(addr, id, tokenFile, labels string) (runner.Config, error) {
	for name, value := range map[string]string{runner.EnvServerAddr: addr, runner.EnvRunnerID: id, runner.EnvRunnerLabels: labels} {
		if value != "" {
			if err := os.Setenv(name, value); err != nil {
				return runner.Config{}, err
			}
		}
	}
	if tokenFile != "" {
		token, err := os.ReadFile(tokenFile)
		if err != nil {
			return runner.Config{}, fmt.Errorf("read -token-file: %w", err)
		}
		if err := os.Setenv(runner.EnvRunnerToken, strings.TrimSpace(string(token))); err != nil {
			return runner.Config{}, err
		}
	}
	return runner.ConfigFromEnv()
}
