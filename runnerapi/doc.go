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
// ("Bearer <token>"). The token is checked before anything else, and the
// runner ID in the stream's Open message must be the one the token was
// issued for. A failed check ends the stream with codes.Unauthenticated or
// codes.PermissionDenied, and neither the status nor the log contains the
// token. Messages out of order or over the limits (MaxRunnerIDBytes,
// MaxLabels, MaxOutputLines, MaxOutputLineBytes, MaxErrorMessageBytes,
// MaxMessageSize) end the stream with codes.InvalidArgument or
// codes.ResourceExhausted. Bytes that do not decode as a message are
// rejected by gRPC itself, with codes.Internal.
//
// # TLS
//
// ServerTLS builds the server's credentials from PEM files. With a client
// CA file, every runner must also present a client certificate signed by
// that CA (mutual TLS):
//
//	creds, err := runnerapi.ServerTLS("/etc/odrkit/host.pem", "/etc/odrkit/host-key.pem", "/etc/odrkit/runner-ca.pem")
//	if err != nil {
//		return err
//	}
//	srv := grpc.NewServer(append(runnerapi.ServerOptions(), grpc.Creds(creds))...)
//
// On-demand runners learn how to connect from their environment, which the
// host extends with ondemand.Config.RunnerEnv. The files must exist where
// the runner runs, for example mounted into its container:
//
//	cfg.RunnerEnv = map[string]string{
//		runner.EnvServerTLS:      "1",
//		runner.EnvServerCAFile:   "/etc/odrkit/ca.pem",          // CA of the host's certificate
//		runner.EnvClientCertFile: "/etc/odrkit/runner.pem",      // only for mutual TLS
//		runner.EnvClientKeyFile:  "/etc/odrkit/runner-key.pem",  // only for mutual TLS
//	}
//
// These are ODRKIT_SERVER_TLS, ODRKIT_SERVER_CA_FILE, ODRKIT_CLIENT_CERT_FILE
// and ODRKIT_CLIENT_KEY_FILE. A profile's env may override them, but not
// the ODRKIT_RUNNER_* variables that carry the runner's ID and token. The
// runner-side library is package runnerapi/runner.
package runnerapi
