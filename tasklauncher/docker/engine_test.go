package docker_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"go.uber.org/goleak"
)

// envRequireEngine makes the engine tests fail, instead of skip, when no
// Docker Engine is reachable. CI sets it.
const envRequireEngine = "ODRKIT_TEST_DOCKER"

// engineTimeout bounds each engine call and wait of a test.
const engineTimeout = 60 * time.Second

// testImageRepo is the repository of the runner image the tests import.
const testImageRepo = "odrkit-launchertest-runner"

// testRunnerPackage is the launchertest runner program put into the image.
const testRunnerPackage = "github.com/odrkit/odrkit/tasklauncher/docker/internal/testrunner"

// testRun is unique to one test binary run. Tests label their containers
// with it, so that leftovers of an earlier run never match.
var testRun = randomHex()

func randomHex() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

var engine struct {
	once   sync.Once
	client *client.Client
	err    error

	imageOnce sync.Once
	image     string
	imageErr  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if err := removeTestImage(); err != nil {
		fmt.Fprintln(os.Stderr, "remove the test image:", err)
		code = 1
	}
	if engine.client != nil {
		_ = engine.client.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// requireEngine returns a client of the Docker Engine that DOCKER_HOST
// names. Without a reachable engine it skips the test, or fails it when
// ODRKIT_TEST_DOCKER=1.
func requireEngine(t testing.TB) *client.Client {
	t.Helper()
	engine.once.Do(func() {
		cli, err := client.New(client.FromEnv)
		if err != nil {
			engine.err = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
			_ = cli.Close()
			engine.err = fmt.Errorf("ping %s: %w", cli.DaemonHost(), err)
			return
		}
		engine.client = cli
	})
	if engine.err != nil {
		msg := fmt.Sprintf("no Docker Engine is reachable (%v). To run this test, start dockerd and set DOCKER_HOST to its socket, "+
			"such as DOCKER_HOST=unix:///tmp/odrkit-docker/docker.sock; set %s=1 to make a missing engine a failure", engine.err, envRequireEngine)
		if os.Getenv(envRequireEngine) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return engine.client
}

// testImage returns the reference of an image whose entrypoint is the
// launchertest runner program. It builds the program statically and
// imports it into the engine once per test binary.
func testImage(t testing.TB) string {
	t.Helper()
	cli := requireEngine(t)
	engine.imageOnce.Do(func() {
		engine.image, engine.imageErr = buildTestImage(cli)
	})
	if engine.imageErr != nil {
		t.Fatalf("build the runner image: %v", engine.imageErr)
	}
	return engine.image
}

func buildTestImage(cli *client.Client) (string, error) {
	ref := testImageRepo + ":" + testRun
	return ref, buildRunnerImage(cli, testRunnerPackage, ref)
}

// buildRunnerImage imports an image whose entrypoint /runner is a static
// build of the Go package pkg.
func buildRunnerImage(cli *client.Client, pkg, ref string) error {
	dir, err := os.MkdirTemp("", "odrkit-docker-test-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	binary := filepath.Join(dir, "runner")
	build := exec.Command(goTool(), "build", "-trimpath", "-ldflags=-s -w", "-o", binary, pkg)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	content, err := os.ReadFile(binary)
	if err != nil {
		return err
	}

	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	if err := tw.WriteHeader(&tar.Header{Name: "runner", Mode: 0o755, Size: int64(len(content)), ModTime: time.Now()}); err != nil {
		return err
	}
	if _, err := tw.Write(content); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), engineTimeout)
	defer cancel()
	res, err := cli.ImageImport(ctx, client.ImageImportSource{Source: &archive, SourceName: "-"}, ref,
		client.ImageImportOptions{Changes: []string{`ENTRYPOINT ["/runner"]`}})
	if err != nil {
		return fmt.Errorf("import image %s: %w", ref, err)
	}
	defer res.Close()
	if _, err := io.Copy(io.Discard, res); err != nil {
		return fmt.Errorf("import image %s: %w", ref, err)
	}
	return nil
}

func removeTestImage() error {
	if engine.image == "" || engine.client == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), engineTimeout)
	defer cancel()
	_, err := engine.client.ImageRemove(ctx, engine.image, client.ImageRemoveOptions{Force: true, PruneChildren: true})
	return err
}

// goTool returns the go command that runs the tests.
func goTool() string {
	if path, err := exec.LookPath("go"); err == nil {
		return path
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), engineTimeout)
	t.Cleanup(cancel)
	return ctx
}
