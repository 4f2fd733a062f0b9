package profile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	hcljson "github.com/hashicorp/hcl/v2/json"

	"github.com/odrkit/odrkit/tasklauncher"
)

// Format is the syntax of profile source.
type Format int

// Profile syntaxes.
const (
	// FormatHCL is the native HCL syntax, as in .hcl files.
	FormatHCL Format = iota
	// FormatJSON is the HCL JSON syntax, as in .json files.
	FormatJSON
)

// String returns "hcl" or "json".
func (f Format) String() string {
	switch f {
	case FormatHCL:
		return "hcl"
	case FormatJSON:
		return "json"
	}
	return fmt.Sprintf("Format(%d)", int(f))
}

// ParseOptions change how profiles are parsed. The zero value reads the
// host's environment and files, as [Parse], [ParseFormat] and [LoadFiles]
// do.
type ParseOptions struct {
	// LookupEnv reads the host's environment for env(). Nil means
	// os.LookupEnv.
	LookupEnv func(name string) (string, bool)

	// DisableFunctions makes every call of env() and file() an error.
	// Set it for profiles from a source less trusted than the host, such
	// as an API request. Otherwise such a profile can copy the host's
	// environment variables and files into a runner that its author
	// controls.
	DisableFunctions bool

	// BaseDir is the directory against which Parse and ParseFormat
	// resolve the relative paths of file(). Empty means the directory of
	// the filename argument. LoadFiles always uses each file's own
	// directory.
	BaseDir string
}

// Parse parses and checks the runner profiles in src with the default
// [ParseOptions]. A filename ending in ".json" selects the HCL JSON syntax,
// any other the native syntax. The filename appears in diagnostics and is
// the base of relative file() paths.
//
// When the diagnostics contain an error, the set is nil.
func Parse(src []byte, filename string, reg *tasklauncher.Registry) (*Set, hcl.Diagnostics) {
	return ParseOptions{}.Parse(src, filename, reg)
}

// ParseFormat is like [Parse] with the syntax given explicitly, for
// profiles that arrive over an API rather than from a file.
func ParseFormat(src []byte, filename string, format Format, reg *tasklauncher.Registry) (*Set, hcl.Diagnostics) {
	return ParseOptions{}.ParseFormat(src, filename, format, reg)
}

// LoadFiles loads the runner profiles of the given paths with the default
// [ParseOptions]. Each path is a file or a directory. Of a directory, it
// reads the files ending in ".hcl" or ".json", in name order, without
// descending into subdirectories. All files form one set, so names must be
// unique across them and at most one profile is the default.
//
// When the diagnostics contain an error, the set is nil.
func LoadFiles(reg *tasklauncher.Registry, paths ...string) (*Set, hcl.Diagnostics) {
	return ParseOptions{}.LoadFiles(reg, paths...)
}

// Parse is like the package function [Parse] with these options.
func (o ParseOptions) Parse(src []byte, filename string, reg *tasklauncher.Registry) (*Set, hcl.Diagnostics) {
	return o.ParseFormat(src, filename, formatOf(filename), reg)
}

// ParseFormat is like the package function [ParseFormat] with these
// options.
func (o ParseOptions) ParseFormat(src []byte, filename string, format Format, reg *tasklauncher.Registry) (*Set, hcl.Diagnostics) {
	l := o.newLoader(reg)
	baseDir := o.BaseDir
	if baseDir == "" {
		baseDir = filepath.Dir(filename)
	}
	l.parseFile(src, filename, format, baseDir)
	return l.finish()
}

// LoadFiles is like the package function [LoadFiles] with these options,
// except that BaseDir is ignored.
func (o ParseOptions) LoadFiles(reg *tasklauncher.Registry, paths ...string) (*Set, hcl.Diagnostics) {
	l := o.newLoader(reg)
	files, diags := listFiles(paths)
	l.diags = append(l.diags, diags...)
	for _, path := range files {
		src, err := os.ReadFile(path)
		if err != nil {
			l.diags = append(l.diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Failed to read profile file",
				Detail:   fmt.Sprintf("Reading %s failed: %v. Check the path and its permissions.", path, err),
				Subject:  &hcl.Range{Filename: path},
			})
			continue
		}
		l.parseFile(src, path, formatOf(path), filepath.Dir(path))
	}
	return l.finish()
}

func formatOf(filename string) Format {
	if strings.EqualFold(filepath.Ext(filename), ".json") {
		return FormatJSON
	}
	return FormatHCL
}

// listFiles expands directories into their profile files and drops paths
// listed twice.
func listFiles(paths []string) ([]string, hcl.Diagnostics) {
	var files []string
	var diags hcl.Diagnostics
	seen := make(map[string]bool)
	add := func(path string) {
		key := path
		if abs, err := filepath.Abs(path); err == nil {
			key = abs
		}
		if !seen[key] {
			seen[key] = true
			files = append(files, path)
		}
	}
	for _, path := range paths {
		info, err := os.Stat(path)
		if err != nil {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Failed to read profile path",
				Detail:   fmt.Sprintf("%v. Pass an existing profile file or a directory of .hcl and .json files.", err),
				Subject:  &hcl.Range{Filename: path},
			})
			continue
		}
		if !info.IsDir() {
			add(path)
			continue
		}
		entries, err := os.ReadDir(path)
		if err != nil {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Failed to read profile directory",
				Detail:   fmt.Sprintf("%v. Check the directory's permissions.", err),
				Subject:  &hcl.Range{Filename: path},
			})
			continue
		}
		found := false
		for _, e := range entries { // os.ReadDir sorts by name
			ext := strings.ToLower(filepath.Ext(e.Name()))
			if e.IsDir() || (ext != ".hcl" && ext != ".json") {
				continue
			}
			found = true
			add(filepath.Join(path, e.Name()))
		}
		if !found {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "No profile files in directory",
				Detail:   fmt.Sprintf("The directory %s contains no .hcl or .json files. Add profile files to it, or pass another path.", path),
				Subject:  &hcl.Range{Filename: path},
			})
		}
	}
	return files, diags
}

// loader collects the profiles and diagnostics of one parse or load.
type loader struct {
	reg     *tasklauncher.Registry
	secrets *secrets
	decls   []*decl
	diags   hcl.Diagnostics
}

// decl is one runner_profile block, kept also when it is invalid so that
// checks across profiles still see its name and default flag.
type decl struct {
	profile      *Profile // nil when the block has errors
	name         string
	nameRange    hcl.Range
	isDefault    bool
	defaultRange hcl.Range
}

func (o ParseOptions) newLoader(reg *tasklauncher.Registry) *loader {
	lookup := o.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	if reg == nil {
		reg = tasklauncher.NewRegistry()
	}
	return &loader{
		reg:     reg,
		secrets: &secrets{lookupEnv: lookup, disabled: o.DisableFunctions},
	}
}

var fileSchema = &hcl.BodySchema{
	Blocks: []hcl.BlockHeaderSchema{{Type: "runner_profile", LabelNames: []string{"name"}}},
}

// parseFile parses one source and decodes its runner_profile blocks.
func (l *loader) parseFile(src []byte, filename string, format Format, baseDir string) {
	var file *hcl.File
	var diags hcl.Diagnostics
	switch format {
	case FormatHCL:
		file, diags = hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	case FormatJSON:
		file, diags = hcljson.Parse(src, filename)
	default:
		l.diags = append(l.diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Unknown profile format",
			Detail:   fmt.Sprintf("%s is not a profile format: use FormatHCL or FormatJSON.", format),
			Subject:  &hcl.Range{Filename: filename},
		})
		return
	}
	l.diags = append(l.diags, diags...)
	// Syntax errors leave a partial tree whose follow-up errors would only
	// repeat them.
	if diags.HasErrors() || file == nil {
		return
	}
	content, diags := file.Body.Content(fileSchema)
	l.diags = append(l.diags, diags...)
	ctx := l.secrets.evalContext(baseDir)
	for _, block := range content.Blocks {
		l.decls = append(l.decls, l.decodeProfile(block, ctx))
	}
}

// finish applies the checks across profiles, removes secrets from the
// diagnostics and builds the set.
func (l *loader) finish() (*Set, hcl.Diagnostics) {
	l.checkUnique()
	l.checkDefaults()
	l.secrets.scrub(l.diags)
	if l.diags.HasErrors() {
		return nil, l.diags
	}
	profiles := make([]*Profile, 0, len(l.decls))
	for _, d := range l.decls {
		profiles = append(profiles, d.profile)
	}
	return newSet(profiles), l.diags
}

func (l *loader) checkUnique() {
	first := make(map[string]*decl, len(l.decls))
	for _, d := range l.decls {
		prev, ok := first[d.name]
		if !ok {
			first[d.name] = d
			continue
		}
		l.diags = append(l.diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Duplicate runner profile name",
			Detail: fmt.Sprintf("A runner profile named %q is already defined at %s. Rename or remove one of the two: names must be unique across all loaded profile files.",
				d.name, shortPos(prev.nameRange)),
			Subject: d.nameRange.Ptr(),
		})
	}
}

func (l *loader) checkDefaults() {
	var first *decl
	for _, d := range l.decls {
		if !d.isDefault {
			continue
		}
		if first == nil {
			first = d
			continue
		}
		l.diags = append(l.diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "More than one default runner profile",
			Detail: fmt.Sprintf("The runner profiles %q (%s) and %q (%s) both set default = true. Keep default = true on one of them only.",
				first.name, shortPos(first.defaultRange), d.name, shortPos(d.defaultRange)),
			Subject: d.defaultRange.Ptr(),
		})
	}
}

// shortPos formats a range as FILE:LINE.
func shortPos(r hcl.Range) string {
	return fmt.Sprintf("%s:%d", r.Filename, r.Start.Line)
}
