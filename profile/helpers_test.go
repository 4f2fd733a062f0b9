package profile

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/stretchr/testify/require"

	"github.com/odrkit/odrkit/tasklauncher"
)

// fakeConfig is the config schema of the test-only "fake" plugin.
type fakeConfig struct {
	Memory int    `hcl:"memory,optional"`
	Image  string `hcl:"image,optional"`
	Region string `hcl:"region"`
}

// Validate rejects more memory than 65536, so tests can reach the
// ConfigValidator path.
func (c *fakeConfig) Validate() error {
	if c.Memory > 65536 {
		return fmt.Errorf("memory %d is more than 65536: lower it", c.Memory)
	}
	return nil
}

// emptyConfig is the config of a plugin that takes no keys.
type emptyConfig struct{}

func testPlugin(name string, newConfig func() any) tasklauncher.Plugin {
	return tasklauncher.Plugin{
		Name:      name,
		NewConfig: newConfig,
		New: func(any, tasklauncher.Options) (tasklauncher.Launcher, error) {
			return nil, errors.New("test plugins launch nothing")
		},
	}
}

// testRegistry holds "fake" (memory, image, required region), "docker"
// with the same schema, and "exec" that takes no config.
func testRegistry() *tasklauncher.Registry {
	newFake := func() any { return &fakeConfig{Memory: 256} }
	return tasklauncher.NewRegistry(
		testPlugin("fake", newFake),
		testPlugin("docker", newFake),
		testPlugin("exec", func() any { return &emptyConfig{} }),
	)
}

// lookupIn returns a LookupEnv function that reads env instead of the
// process environment.
func lookupIn(env map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	}
}

// hclDiagnosticText renders diags with HCL's own diagnostic writer, which
// prints the values of an expression's variables when it can.
func hclDiagnosticText(t *testing.T, buf *bytes.Buffer, diags hcl.Diagnostics) string {
	t.Helper()
	wr := hcl.NewDiagnosticTextWriter(buf, nil, 100, false)
	require.NoError(t, wr.WriteDiagnostics(diags))
	return buf.String()
}
