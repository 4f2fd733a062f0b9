// Command server is a small odrkit host: it loads runner profiles, keeps
// jobs in a durable store (-data), serves the runner API, and runs the shell
// command given on its command line as a job on an on-demand runner.
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
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/odrkit/odrkit/examples/internal/shelljob"
	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/ondemand/boltstore"
	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/runnerapi"
	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/docker"
	"github.com/odrkit/odrkit/tasklauncher/exec"
)

func main() {
	os.Exit(run())
}

// options are the server's command-line settings.
type options struct {
	profiles         string
	listen           string
	advertise        string
	data             string
	memory           bool
	hostID           string
	profileName      string
	staticRunner     string
	tokenFile        string
	heartbeatTimeout time.Duration
	wait             bool
	crashAt          string
}

func run() int {
	var o options
	check := flag.Bool("check", false, "validate the profile files given as arguments, print diagnostics, and exit")
	flag.StringVar(&o.profiles, "profiles", "examples/server/profiles.hcl", "comma-separated profile files or directories")
	flag.StringVar(&o.listen, "listen", "127.0.0.1:0", "address the runner API listens on")
	flag.StringVar(&o.advertise, "advertise", "", "address on-demand runners dial (default: the listen address)")
	flag.StringVar(&o.data, "data", "odrkit-data", "directory of the durable job store and the token signing key")
	flag.BoolVar(&o.memory, "memory", false, "keep jobs in memory only, instead of in -data")
	flag.StringVar(&o.hostID, "host-id", "", "identity of this host on the tasks it launches; keep it across restarts and make it differ between hosts that share a machine or platform (default: the host name)")
	flag.StringVar(&o.profileName, "profile", "", "profile of the job (default: the default profile)")
	flag.StringVar(&o.staticRunner, "static-runner", "", "issue a token for a static runner with this ID and write it to -token-file")
	flag.StringVar(&o.tokenFile, "token-file", "runner.token", "file the static runner token is written to")
	flag.DurationVar(&o.heartbeatTimeout, "heartbeat-timeout", 0, "time a running job may go without hearing from its runner (default 30s)")
	flag.BoolVar(&o.wait, "wait", false, "run no new job: wait until every stored job has ended and every task is stopped, print one line per job, and exit")
	flag.StringVar(&o.crashAt, "crash-at", "", "for fault-injection tests: kill this process with SIGKILL when the job records this event (queued, launched, running, output, done)")
	flag.Parse()
	registry := tasklauncher.NewRegistry(exec.Plugin(), docker.Plugin())
	if *check {
		return runCheck(registry, flag.Args(), os.Stdout, os.Stderr)
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	err := serve(logger, registry, o, flag.Args())
	var jobErr *ondemand.JobError
	switch {
	case errors.As(err, &jobErr):
		fmt.Fprintln(os.Stderr, "job failed:", err)
		return 1
	case err != nil:
		logger.Error("server failed", "error", err)
		return 1
	}
	return 0
}

func serve(logger *slog.Logger, registry *tasklauncher.Registry, o options, command []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	set, diags := profile.LoadFiles(registry, strings.Split(o.profiles, ",")...)
	if diags.HasErrors() {
		return fmt.Errorf("load profiles: %w", diags)
	}
	cfg := ondemand.Config{
		Launchers:        registry,
		Profiles:         set,
		HostID:           o.hostID,
		HeartbeatTimeout: o.heartbeatTimeout,
		Logger:           logger,
	}
	if !o.memory {
		store, key, err := openData(o.data, logger)
		if err != nil {
			return err
		}
		defer store.Close()
		cfg.Store, cfg.TokenKey = store, key
	}

	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.listen, err)
	}
	cfg.AdvertiseAddr = o.advertise
	if cfg.AdvertiseAddr == "" {
		cfg.AdvertiseAddr = lis.Addr().String()
	}
	mgr, err := ondemand.New(ctx, cfg)
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

	if o.staticRunner != "" {
		token, err := mgr.IssueRunnerToken(o.staticRunner, nil, 24*time.Hour)
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.tokenFile, []byte(token+"\n"), 0o600); err != nil {
			return fmt.Errorf("write -token-file: %w", err)
		}
		logger.Info("static runner token written", "runner", o.staticRunner, "file", o.tokenFile)
	}

	switch {
	case o.wait:
		return waitAll(ctx, mgr, os.Stdout)
	case len(command) == 0:
		<-ctx.Done()
		return nil
	}
	return runJob(ctx, mgr, o.profileName, strings.Join(command, " "), o.crashAt)
}

// openData opens the bbolt store in dir and the token signing key beside
// it, creating both on first use. A stable key lets runners launched before
// a restart connect to the restarted host.
func openData(dir string, logger *slog.Logger) (*boltstore.Store, []byte, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create -data directory: %w", err)
	}
	keyPath := filepath.Join(dir, "token.key")
	key, err := os.ReadFile(keyPath)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, nil, err
		}
		err = os.WriteFile(keyPath, key, 0o600)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("token signing key %s: %w", keyPath, err)
	}
	store, err := boltstore.Open(filepath.Join(dir, "odrkit.db"), boltstore.Options{Logger: logger})
	if err != nil {
		return nil, nil, err
	}
	return store, key, nil
}

// runJob runs one shell command as a job, prints its output, and waits
// until its runner is stopped.
func runJob(ctx context.Context, mgr *ondemand.Manager, profileName, command, crashAt string) error {
	job, err := mgr.Submit(ctx, ondemand.JobSpec{Kind: shelljob.Kind, Payload: []byte(command), Profile: profileName})
	if err != nil {
		return err
	}
	for ev, err := range mgr.Watch(ctx, job.ID) {
		if err != nil {
			return err
		}
		if string(ev.Type) == crashAt {
			// Watch shows only stored events, so the crash happens after
			// the event is on disk.
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
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

// waitAll waits until every host job has ended and every task is stopped,
// then prints "JOB-ID STATE REASON" for each host job.
func waitAll(ctx context.Context, mgr *ondemand.Manager, stdout io.Writer) error {
	jobs := mgr.ListJobs(ctx, ondemand.RoleJob)
	for _, job := range jobs {
		if _, err := mgr.Wait(ctx, job.ID); err != nil {
			return err
		}
	}
	for _, task := range mgr.ListTasks(ctx) {
		if _, err := mgr.WaitTask(ctx, task.ID); err != nil {
			return err
		}
	}
	for _, job := range mgr.ListJobs(ctx, ondemand.RoleJob) {
		reason := "-"
		if job.Error != nil {
			reason = string(job.Error.Reason)
		}
		fmt.Fprintf(stdout, "%s %s %s\n", job.ID, job.State, reason)
	}
	return nil
}
