package profile

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestNewSetValid(t *testing.T) {
	a := &Profile{Name: "a", Plugin: "exec"}
	b := &Profile{Name: "b-prod", Plugin: "docker", Default: true, Env: map[string]string{"K_1": "v"},
		TargetRunner: &TargetRunner{Labels: map[string]string{"zone": "eu"}}, StartupTimeout: time.Minute}
	set, err := NewSet(a, b)
	require.NoError(t, err)
	require.Equal(t, []*Profile{a, b}, set.All())
	got, ok := set.Get("b-prod")
	require.True(t, ok)
	require.Same(t, b, got)
	_, ok = set.Get("b")
	require.False(t, ok, "Get matches exact names only")
	def, ok := set.Default()
	require.True(t, ok)
	require.Same(t, b, def)
}

func TestNewSetErrors(t *testing.T) {
	tests := []struct {
		name     string
		profiles []*Profile
		want     []string
	}{
		{
			name:     "nil profile",
			profiles: []*Profile{nil},
			want:     []string{"runner profile 1 of 1 is nil"},
		},
		{
			name:     "duplicate name",
			profiles: []*Profile{{Name: "a", Plugin: "exec"}, {Name: "a", Plugin: "exec"}},
			want:     []string{`runner profile "a": the name is used by profiles 1 and 2: give each profile its own name`},
		},
		{
			name:     "invalid name",
			profiles: []*Profile{{Name: "A b", Plugin: "exec"}},
			want:     []string{`runner profile "A b": the name "A b" does not match`, `such as "a-b"`},
		},
		{
			name:     "two defaults",
			profiles: []*Profile{{Name: "a", Plugin: "exec", Default: true}, {Name: "b", Plugin: "exec", Default: true}},
			want:     []string{`profiles "a" and "b" are both the default: set Default on at most one profile`},
		},
		{
			name:     "target runner with id and labels",
			profiles: []*Profile{{Name: "a", Plugin: "exec", TargetRunner: &TargetRunner{ID: "r", Labels: map[string]string{"k": "v"}}}},
			want:     []string{`runner profile "a": the target_runner block sets both id and labels`},
		},
		{
			name:     "target runner empty",
			profiles: []*Profile{{Name: "a", Plugin: "exec", TargetRunner: &TargetRunner{}}},
			want:     []string{`runner profile "a": the target_runner block sets neither id nor labels`},
		},
		{
			name:     "env name",
			profiles: []*Profile{{Name: "a", Plugin: "exec", Env: map[string]string{"BAD-NAME": "secret-v"}}},
			want:     []string{`runner profile "a": the env key "BAD-NAME" is not a valid environment variable name`},
		},
		{
			name:     "env overrides runner token",
			profiles: []*Profile{{Name: "a", Plugin: "exec", Env: map[string]string{"ODRKIT_RUNNER_TOKEN": "secret-v"}}},
			want:     []string{`runner profile "a": the env key "ODRKIT_RUNNER_TOKEN" is reserved`, "remove the key"},
		},
		{
			name:     "env overrides runner ID",
			profiles: []*Profile{{Name: "a", Plugin: "exec", Env: map[string]string{"ODRKIT_RUNNER_ID": "secret-v"}}},
			want:     []string{`runner profile "a": the env key "ODRKIT_RUNNER_ID" is reserved`},
		},
		{
			name:     "env overrides runner labels in lower case",
			profiles: []*Profile{{Name: "a", Plugin: "exec", Env: map[string]string{"odrkit_runner_labels": "secret-v"}}},
			want:     []string{`runner profile "a": the env key "odrkit_runner_labels" is reserved`},
		},
		{
			name:     "empty plugin",
			profiles: []*Profile{{Name: "a"}},
			want:     []string{`runner profile "a": plugin is empty`},
		},
		{
			name:     "negative limits",
			profiles: []*Profile{{Name: "a", Plugin: "exec", StartupTimeout: -time.Second, MaxConcurrent: -2}},
			want:     []string{"startup timeout -1s is negative", "max concurrent -2 is negative"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, err := NewSet(tt.profiles...)
			require.Nil(t, set)
			require.Error(t, err)
			for _, want := range tt.want {
				require.Contains(t, err.Error(), want)
			}
			require.NotContains(t, err.Error(), "secret-v", "env values are secrets")
		})
	}
}

func TestNewSetAllowsServerEnv(t *testing.T) {
	p := &Profile{Name: "a", Plugin: "exec", Env: map[string]string{
		"ODRKIT_SERVER_ADDR":    "odrkit.example.com:9090",
		"ODRKIT_SERVER_TLS":     "1",
		"ODRKIT_SERVER_CA_FILE": "/etc/odrkit/ca.pem",
		"ODRKIT_RUNNERS":        "not the reserved prefix",
	}}
	set, err := NewSet(p)
	require.NoError(t, err)
	require.Equal(t, 1, set.Len())
}

func TestNilSet(t *testing.T) {
	var s *Set
	_, ok := s.Get("a")
	require.False(t, ok)
	_, ok = s.Default()
	require.False(t, ok)
	require.Empty(t, s.All())
	require.Zero(t, s.Len())
}

func TestClosest(t *testing.T) {
	names := []string{"docker", "exec", "kubernetes"}
	require.Equal(t, "docker", closest("dockr", names))
	require.Equal(t, "docker", closest("Docker", names))
	require.Equal(t, "kubernetes", closest("kubernets", names))
	require.Equal(t, "", closest("nomad", names))
	require.Equal(t, "", closest("x", names))
}
