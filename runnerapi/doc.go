// Package runnerapi is the host side of the runner API: the gRPC service
// runners connect to, defined in proto/odrkit/runner/v1/runner.proto and
// generated into package runnerpb.
//
// A host registers the service on its own grpc.Server, so it keeps control
// of listeners, TLS credentials and interceptors:
//
//	srv := grpc.NewServer(runnerapi.ServerOptions()...)
//	runnerapi.NewServer(mgr, runnerapi.Config{Logger: logger}).Register(srv)
//
// Every stream must carry a runner token in its "authorization" metadata
// ("Bearer <token>"); the token is checked before anything else, and the
// runner ID in the stream's Open message must be the one the token was
// issued for. The runner-side library is package runnerapi/runner.
package runnerapi
