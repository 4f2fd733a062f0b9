package main

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	osexec "os/exec"
	"path/filepath"
	"time"

	"github.com/moby/moby/client"

	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/tasklauncher/docker"
)

// dockerImage is the runner image the -docker mode builds and runs.
const dockerImage = "odrkit-quickstart-runner:local"

// staticShells lists the paths of a statically linked busybox. Debian's
// busybox-static package installs it at /bin/busybox.
var staticShells = []string{"/bin/busybox", "/usr/bin/busybox"}

// dockerProfile builds the runner image in the Docker engine that
// DOCKER_HOST names and returns a profile that runs each runner as a
// container of it, with host networking so that it reaches the host on
// loopback.
func dockerProfile(ctx context.Context) (*profile.Profile, error) {
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	defer cli.Close()
	if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return nil, fmt.Errorf("no Docker engine responds at DOCKER_HOST=%q; start one or run without -docker: %w", os.Getenv("DOCKER_HOST"), err)
	}
	if err := buildImage(ctx, cli); err != nil {
		return nil, err
	}
	config := docker.Plugin().NewConfig().(*docker.Config)
	config.NetworkMode = "host"
	return &profile.Profile{
		Name:           "docker",
		Plugin:         docker.PluginName,
		Default:        true,
		OCIURL:         dockerImage,
		StartupTimeout: time.Minute,
		Config:         config,
	}, nil
}

// buildImage imports an image that holds a static build of this program
// as its entrypoint and a static busybox as /bin/sh for the shell jobs.
func buildImage(ctx context.Context, cli *client.Client) error {
	shell, err := findStaticShell()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "odrkit-quickstart-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	binary := filepath.Join(dir, "quickstart")
	build := osexec.CommandContext(ctx, "go", "build", "-trimpath", "-o", binary, "github.com/odrkit/odrkit/examples/quickstart")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build a static quickstart for the image (run from the odrkit repository): %w\n%s", err, out)
	}

	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	if err := addFile(tw, binary, "quickstart"); err != nil {
		return err
	}
	if err := addFile(tw, shell, "bin/busybox"); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/sh", Linkname: "busybox", Mode: 0o777}); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	res, err := cli.ImageImport(ctx, client.ImageImportSource{Source: &archive, SourceName: "-"}, dockerImage,
		client.ImageImportOptions{Changes: []string{`ENTRYPOINT ["/quickstart"]`, `ENV PATH=/bin`}})
	if err != nil {
		return fmt.Errorf("import image %s: %w", dockerImage, err)
	}
	defer res.Close()
	if _, err := io.Copy(io.Discard, res); err != nil {
		return fmt.Errorf("import image %s: %w", dockerImage, err)
	}
	return nil
}

func addFile(tw *tar.Writer, path, name string) error {
	content, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(content)), ModTime: time.Now()}); err != nil {
		return err
	}
	_, err = tw.Write(content)
	return err
}

// findStaticShell returns a statically linked busybox, which runs in an
// image that has no C library.
func findStaticShell() (string, error) {
	for _, path := range staticShells {
		f, err := elf.Open(path)
		if err != nil {
			continue
		}
		static := true
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				static = false
			}
		}
		_ = f.Close()
		if static {
			return path, nil
		}
	}
	return "", errors.New("the -docker mode needs a statically linked busybox as the jobs' shell; on Debian or Ubuntu: apt-get install busybox-static")
}
