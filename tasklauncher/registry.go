package tasklauncher

import (
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
)

// Plugin describes one launcher plugin: its name in runner profiles, the
// schema of its `config` block and its constructor.
type Plugin struct {
	// Name is the value of a runner profile's `plugin` attribute, such as
	// "exec" or "docker".
	Name string

	// NewConfig returns a pointer to a new config struct with its defaults
	// set. The struct's fields carry gohcl `hcl` tags: a profile's `config`
	// block is decoded into it, so its tags are the plugin's schema. The
	// decoded struct is sent to remote launcher runners as JSON, so it must
	// survive encoding/json.
	NewConfig func() any

	// New builds a launcher from a config made by NewConfig and decoded
	// from a profile.
	New func(config any, opts Options) (Launcher, error)
}

// Options holds the values odrkit passes to every plugin constructor.
type Options struct {
	// Logger receives the launcher's log records. Never nil.
	Logger *slog.Logger
}

// ConfigValidator is implemented by plugin config structs that check their
// values after decoding. The error names the key and the fix.
type ConfigValidator interface {
	Validate() error
}

// Registry maps plugin names to plugins. It is safe for concurrent use.
type Registry struct {
	mu      sync.RWMutex
	plugins map[string]Plugin
}

// NewRegistry returns a registry holding the given plugins. It panics on an
// invalid or duplicate plugin, because that is a programming error in the
// host.
func NewRegistry(plugins ...Plugin) *Registry {
	r := &Registry{plugins: make(map[string]Plugin)}
	for _, p := range plugins {
		if err := r.Register(p); err != nil {
			panic(err)
		}
	}
	return r
}

// Register adds a plugin. It fails when the name is empty or taken, or a
// function is missing.
func (r *Registry) Register(p Plugin) error {
	switch {
	case p.Name == "":
		return fmt.Errorf("register launcher plugin: name is empty")
	case p.NewConfig == nil:
		return fmt.Errorf("register launcher plugin %q: NewConfig is nil", p.Name)
	case p.New == nil:
		return fmt.Errorf("register launcher plugin %q: New is nil", p.Name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.plugins[p.Name]; ok {
		return fmt.Errorf("register launcher plugin %q: a plugin with this name is already registered", p.Name)
	}
	r.plugins[p.Name] = p
	return nil
}

// Lookup returns the plugin registered under name.
func (r *Registry) Lookup(name string) (Plugin, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	p, ok := r.plugins[name]
	return p, ok
}

// Names returns the registered plugin names in sorted order.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.plugins))
	for name := range r.plugins {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// NewLauncher builds a launcher of the named plugin from a decoded config.
func (r *Registry) NewLauncher(name string, config any, opts Options) (Launcher, error) {
	p, ok := r.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("launcher plugin %q is not registered; registered plugins: %s", name, strings.Join(r.Names(), ", "))
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return p.New(config, opts.withPlugin(name))
}

func (o Options) withPlugin(name string) Options {
	o.Logger = o.Logger.With("launcher", name)
	return o
}

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}

// NewPlugin builds a Plugin from a constructor of the plugin's config struct
// (with its defaults set) and a constructor of its launcher, so that a
// plugin needs no type assertions of its own. New rejects a config of
// another type with an error that names both types.
func NewPlugin[C any, L Launcher](name string, newConfig func() *C, newLauncher func(*C, Options) (L, error)) Plugin {
	return Plugin{
		Name:      name,
		NewConfig: func() any { return newConfig() },
		New: func(config any, opts Options) (Launcher, error) {
			cfg, ok := config.(*C)
			if !ok {
				return nil, fmt.Errorf("%s launcher: config has type %T; pass the %T returned by the plugin's NewConfig", name, config, cfg)
			}
			l, err := newLauncher(cfg, opts)
			if err != nil {
				// An untyped nil lets callers compare the Launcher with nil.
				return nil, err
			}
			return l, nil
		},
	}
}
