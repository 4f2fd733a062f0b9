package runnerapi

import (
	"context"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/runnerapi/runner"
	"github.com/odrkit/odrkit/tasklauncher"
)

// HandleLaunchJobs registers handlers on r for the start, watch and stop
// jobs of on-demand runners, executed with x. A static runner that a
// profile's target_runner selects calls it, so that it launches runners for
// the host. Give such a runner a Concurrency above the number of tasks it
// watches at once: each watch job holds a slot for as long as its task
// runs.
func HandleLaunchJobs(r *runner.Runner, x *ondemand.LaunchExecutor) {
	for _, kind := range ondemand.LaunchKinds() {
		r.Handle(kind, func(ctx context.Context, job *runner.Job, out *runner.Output) ([]byte, error) {
			return x.Execute(ctx, job.Kind, job.Payload, func(line tasklauncher.OutputLine) {
				stream := runner.Stdout
				if line.Stream == tasklauncher.Stderr {
					stream = runner.Stderr
				}
				out.Line(stream, line.Line)
			})
		})
	}
}
