// Package runner is the runner side of the odrkit runner API: the library a
// runner binary is built on.
//
// A runner dials the host's runner API over gRPC, authenticates with the
// bearer token the host issued for its runner ID, and takes jobs. Each job
// travels on its own RunnerService.JobStream call: the runner sends Open, the
// host replies with an Assignment, the runner acknowledges it, runs the
// handler registered for the job's kind, streams output lines and heartbeats
// while the handler runs, and ends with Complete.
//
// An on-demand runner (Config.OnDemand) takes exactly one job and then Run
// returns. A static runner keeps Config.Concurrency streams open and takes job
// after job until its context is cancelled.
//
// A minimal runner binary:
//
//	cfg, err := runner.ConfigFromEnv()
//	if err != nil {
//		log.Fatal(err)
//	}
//	r, err := runner.New(cfg)
//	if err != nil {
//		log.Fatal(err)
//	}
//	r.Handle("echo", func(ctx context.Context, job *runner.Job, out *runner.Output) ([]byte, error) {
//		out.Line(runner.Stdout, string(job.Payload))
//		return job.Payload, nil
//	})
//	if err := r.Run(ctx); err != nil {
//		log.Fatal(err)
//	}
package runner
