# Runner profiles for examples/server. Run from the repository root:
#   go run ./examples/server -- 'echo hello'
runner_profile "local" {
  plugin          = "exec"
  default         = true
  startup_timeout = "2m"

  config {
    # The runner is built and started with the Go toolchain, so the first
    # launch includes a compile.
    command = "go"
    args    = ["run", "./examples/runner"]
  }
}
