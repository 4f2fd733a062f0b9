package odrkit_test

import (
	"context"
	"fmt"
	"log"
	"net"

	"google.golang.org/grpc"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/runnerapi"
	"github.com/odrkit/odrkit/tasklauncher"
	"github.com/odrkit/odrkit/tasklauncher/exec"
)

// A host that runs one job on an on-demand runner started as a local
// process. The runner is this program's own executable (see TestMain),
// which handles "greet" jobs.
func Example() {
	ctx := context.Background()

	// On-demand runners dial the runner API at this address.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}

	// One profile: each runner is a local process.
	launchers := tasklauncher.NewRegistry(exec.Plugin())
	profiles, err := profile.NewSet(&profile.Profile{
		Name:    "local",
		Plugin:  exec.PluginName,
		Default: true,
		Config:  exec.Plugin().NewConfig(),
	})
	if err != nil {
		log.Fatal(err)
	}

	mgr, err := ondemand.New(ctx, ondemand.Config{
		Launchers:     launchers,
		Profiles:      profiles,
		AdvertiseAddr: lis.Addr().String(),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer mgr.Close()

	// The runner API goes on the host's own gRPC server.
	srv := grpc.NewServer(runnerapi.ServerOptions()...)
	runnerapi.NewServer(mgr, runnerapi.Config{}).Register(srv)
	go srv.Serve(lis)
	defer srv.Stop()

	job, err := mgr.Submit(ctx, ondemand.JobSpec{Kind: "greet", Payload: []byte("world")})
	if err != nil {
		log.Fatal(err)
	}
	for ev, err := range mgr.Watch(ctx, job.ID) {
		if err != nil {
			log.Fatal(err)
		}
		if ev.Type == ondemand.EventOutput {
			fmt.Println(ev.Line)
		}
	}
	done, err := mgr.Get(ctx, job.ID)
	if err != nil {
		log.Fatal(err)
	}
	task, err := mgr.WaitTask(ctx, job.TaskID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("job:", done.State)
	fmt.Println("runner task:", task.State)
	// Output:
	// hello, world
	// job: SUCCESS
	// runner task: STOPPED
}
