// Package odrkit is a library for job servers that run each job on an
// on-demand runner: a runner launched for that one job, on a platform the
// operator picks, and reclaimed when the job ends.
//
// This package holds no code; it is the tour. The packages below do the
// work.
//
// # What a host does
//
// A host is the program that owns the jobs: a CI server, a build farm, a
// deployment tool. It embeds odrkit in three steps:
//
//  1. It builds a [github.com/odrkit/odrkit/tasklauncher.Registry] with the
//     launcher plugins it offers, such as
//     [github.com/odrkit/odrkit/tasklauncher/exec] for local processes,
//     and loads runner profiles with [github.com/odrkit/odrkit/profile].
//  2. It creates an [github.com/odrkit/odrkit/ondemand.Manager] and
//     registers the runner API of [github.com/odrkit/odrkit/runnerapi] on
//     its own gRPC server.
//  3. It submits jobs with Manager.Submit and follows them with
//     Manager.Watch, Manager.Wait and Manager.Get.
//
// Runner programs are built on [github.com/odrkit/odrkit/runnerapi/runner]:
// they register a handler per job kind and call Run.
//
// # The flow of one job
//
// Submit stores four jobs in one transaction: the host's job, held for a
// new runner ID, and the start, watch and stop jobs of the task that
// launches that runner. A launcher runner (by default one embedded in the
// host) takes the start job and calls the profile's Launcher.StartTask,
// which creates a process, container or pod with the runner ID and a token
// bound to it in its environment. The runner dials the host, presents the
// token, and receives its job at once. No other runner can take it. The runner
// streams output while it works and reports the result. The stop job then
// calls Launcher.StopTask, so the platform resource is reclaimed whether
// the job succeeded, failed, was cancelled or its runner never came.
//
// The watch job follows the task's own output and exit code, so a runner
// that dies before it connects fails its job at once, with its exit code
// and last output lines, instead of at the startup timeout.
//
// # Where to start
//
// Run the quickstart (go run ./examples/quickstart), then read
// examples/quickstart/main.go, the Manager's documentation in package
// ondemand, and docs/architecture.md for the job states and the promises
// the library keeps.
package odrkit
