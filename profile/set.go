package profile

import (
	"errors"
	"fmt"
)

// Set is a checked collection of runner profiles with unique names and at
// most one default. A nil *Set is empty. A Set is safe for concurrent use
// because it is never modified after it is built.
type Set struct {
	profiles []*Profile
	byName   map[string]*Profile
	def      *Profile
}

// NewSet checks profiles built in Go and returns them as a set. It applies
// the checks of [Parse] that need no registry and no source: names are
// unique and match [NamePattern], and at most one profile is the default.
// Each TargetRunner has either an ID or labels, env keys match
// [EnvNamePattern] and do not start with [ReservedEnvPrefix], Plugin is not
// empty, and StartupTimeout and MaxConcurrent are not negative. NewSet neither checks that the plugin is
// registered nor decodes Config. The error names each invalid profile and
// the fix.
//
// The set keeps the given pointers, so the profiles must not be modified
// afterwards.
func NewSet(profiles ...*Profile) (*Set, error) {
	var errs []error
	seen := make(map[string]int, len(profiles))
	defaultIndex := -1
	for i, p := range profiles {
		if p == nil {
			errs = append(errs, fmt.Errorf("runner profile %d of %d is nil: pass only non-nil profiles", i+1, len(profiles)))
			continue
		}
		for _, err := range checkProfile(p) {
			errs = append(errs, fmt.Errorf("runner profile %q: %w", p.Name, err))
		}
		if first, ok := seen[p.Name]; ok {
			errs = append(errs, fmt.Errorf("runner profile %q: the name is used by profiles %d and %d: give each profile its own name", p.Name, first+1, i+1))
		} else {
			seen[p.Name] = i
		}
		if p.Default {
			if defaultIndex >= 0 {
				errs = append(errs, fmt.Errorf("runner profile %q: profiles %q and %q are both the default: set Default on at most one profile", p.Name, profiles[defaultIndex].Name, p.Name))
			} else {
				defaultIndex = i
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("invalid runner profiles: %w", err)
	}
	return newSet(profiles), nil
}

// checkProfile applies the checks of a single profile that need neither a
// registry nor the other profiles.
func checkProfile(p *Profile) []error {
	var errs []error
	if err := checkName(p.Name); err != nil {
		errs = append(errs, err)
	}
	if p.Plugin == "" {
		errs = append(errs, errors.New("plugin is empty: set it to the name of a registered launcher plugin, such as \"docker\""))
	}
	for _, k := range sortedKeys(p.Env) {
		if err := checkEnvName(k); err != nil {
			errs = append(errs, err)
		}
	}
	if p.StartupTimeout < 0 {
		errs = append(errs, fmt.Errorf("startup timeout %s is negative: use a positive duration, or 0 for the host's default", p.StartupTimeout))
	}
	if p.LaunchRetries < 0 {
		errs = append(errs, fmt.Errorf("launch retries %d is negative: use a positive number, or 0 for no retry", p.LaunchRetries))
	}
	if p.MaxConcurrent < 0 {
		errs = append(errs, fmt.Errorf("max concurrent %d is negative: use a positive number, or 0 for no limit", p.MaxConcurrent))
	}
	if p.TargetRunner != nil {
		if err := checkTargetRunner(p.TargetRunner); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// newSet builds a set from profiles that passed every check.
func newSet(profiles []*Profile) *Set {
	s := &Set{
		profiles: append([]*Profile(nil), profiles...),
		byName:   make(map[string]*Profile, len(profiles)),
	}
	for _, p := range profiles {
		s.byName[p.Name] = p
		if p.Default {
			s.def = p
		}
	}
	return s
}

// Get returns the profile with exactly this name. There is no prefix or
// case-insensitive matching: "docker" does not find "docker-prod".
func (s *Set) Get(name string) (*Profile, bool) {
	if s == nil {
		return nil, false
	}
	p, ok := s.byName[name]
	return p, ok
}

// Default returns the profile marked as the default. It returns false when
// no profile is, also when the set holds a single profile.
func (s *Set) Default() (*Profile, bool) {
	if s == nil || s.def == nil {
		return nil, false
	}
	return s.def, true
}

// All returns the profiles in definition order: files in the order they
// were loaded, and profiles in the order they appear in each file. The
// slice is a copy, but the profiles are shared and must not be modified.
func (s *Set) All() []*Profile {
	if s == nil {
		return nil
	}
	return append([]*Profile(nil), s.profiles...)
}

// Len returns the number of profiles in the set.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.profiles)
}
