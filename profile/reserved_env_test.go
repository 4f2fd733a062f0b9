package profile

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseAllowsServerEnv(t *testing.T) {
	src := `runner_profile "a" {
  plugin = "exec"
  env = {
    ODRKIT_SERVER_ADDR    = "odrkit.example.com:9090"
    ODRKIT_SERVER_TLS     = "1"
    ODRKIT_SERVER_CA_FILE = "/etc/odrkit/ca.pem"
  }
}
`
	set, diags := ParseOptions{LookupEnv: lookupIn(nil)}.Parse([]byte(src), "a.hcl", testRegistry())
	require.False(t, diags.HasErrors(), diags.Error())
	p, ok := set.Get("a")
	require.True(t, ok)
	require.Equal(t, "1", p.Env["ODRKIT_SERVER_TLS"])
}

func TestParseReservedEnvKeyFromSecret(t *testing.T) {
	src := `runner_profile "a" {
  plugin = "exec"
  env    = { (env("KEY_NAME")) = "x" }
}
`
	set, diags := ParseOptions{LookupEnv: lookupIn(map[string]string{"KEY_NAME": "ODRKIT_RUNNER_TOKEN"})}.Parse([]byte(src), "a.hcl", testRegistry())
	require.Nil(t, set)
	require.Len(t, diags, 1, diags.Error())
	require.Equal(t, "Invalid env key", diags[0].Summary)
	require.Contains(t, diags[0].Detail, "read through env() or file() is invalid")
	require.NotContains(t, diags[0].Detail, "ODRKIT_RUNNER_TOKEN", "a key read through env() is a secret")
}
