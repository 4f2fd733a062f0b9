package profile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// maxFileSize is the largest file that file() reads. Profiles hold short
// values such as tokens and certificates, and a limit keeps a path such as
// /dev/zero from exhausting memory.
const maxFileSize = 1 << 20

// secretMark marks cty values read through env() or file().
type secretMark struct{}

// secrets evaluates expressions for one parse and remembers every secret
// value that env() and file() returned, and the source ranges of the
// expressions that called them, so that diagnostics can be scrubbed.
type secrets struct {
	lookupEnv func(string) (string, bool)
	disabled  bool

	// calls counts the successful calls of env() and file().
	calls int
	// values are the secret strings returned so far.
	values []string
	// ranges are the ranges of attribute expressions that called env()
	// or file().
	ranges []hcl.Range
	// failed are the ranges of expressions whose evaluation failed.
	failed []hcl.Range
}

// evalContext returns the context for the expressions of one file, whose
// file() calls resolve relative paths against baseDir.
func (s *secrets) evalContext(baseDir string) *hcl.EvalContext {
	return &hcl.EvalContext{Functions: map[string]function.Function{
		"env":  s.envFunc(),
		"file": s.fileFunc(baseDir),
	}}
}

// eval evaluates expr and returns its value without marks. The bool
// reports whether the value depends on env() or file(), in which case it
// must not be printed.
func (s *secrets) eval(expr hcl.Expression, ctx *hcl.EvalContext) (cty.Value, bool, hcl.Diagnostics) {
	before := s.calls
	val, diags := expr.Value(ctx)
	secret := s.calls > before || val.ContainsMarked()
	if secret {
		s.ranges = append(s.ranges, expr.Range())
	}
	if diags.HasErrors() {
		s.failed = append(s.failed, expr.Range())
	}
	val, _ = val.UnmarkDeep()
	return val, secret, diags
}

// remember records a secret string so that scrub can find it, also
// without surrounding white space, as a message might print it trimmed.
func (s *secrets) remember(v string) {
	if v != "" {
		s.values = append(s.values, v)
	}
	if t := strings.TrimSpace(v); t != "" && t != v {
		s.values = append(s.values, t)
	}
}

func (s *secrets) envFunc() function.Function {
	return function.New(&function.Spec{
		Description: "Reads a variable of the host's environment.",
		Params: []function.Parameter{
			{Name: "name", Type: cty.String, AllowMarked: true},
		},
		VarParam: &function.Parameter{Name: "default", Type: cty.String, AllowMarked: true},
		Type:     function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			if s.disabled {
				return cty.NilVal, errors.New("env() is disabled for these profiles: write the value itself, or let the host load the profile with functions enabled")
			}
			if len(args) > 2 {
				return cty.NilVal, function.NewArgErrorf(2, "env() takes a name and at most one default, such as env(\"NAME\", \"fallback\")")
			}
			nameVal, nameMarks := args[0].Unmark()
			name := nameVal.AsString()
			nameSecret := len(nameMarks) > 0
			if name == "" {
				return cty.NilVal, function.NewArgErrorf(0, "the variable name is empty: pass the name of an environment variable, such as env(\"API_KEY\")")
			}
			value, ok := s.lookupEnv(name)
			if !ok {
				if len(args) < 2 {
					if nameSecret {
						return cty.NilVal, function.NewArgErrorf(0, "the environment variable whose name is read through env() or file() is not set: set it in the host's environment, or give a default as the second argument")
					}
					return cty.NilVal, function.NewArgErrorf(0, "the environment variable %s is not set: set it in the host's environment, or give a default, such as env(%q, \"fallback\")", name, name)
				}
				def, _ := args[1].Unmark()
				value = def.AsString()
			}
			s.calls++
			s.remember(value)
			return cty.StringVal(value).Mark(secretMark{}), nil
		},
	})
}

func (s *secrets) fileFunc(baseDir string) function.Function {
	return function.New(&function.Spec{
		Description: "Reads a file relative to the directory of the profile file.",
		Params: []function.Parameter{
			{Name: "path", Type: cty.String, AllowMarked: true},
		},
		Type: function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			if s.disabled {
				return cty.NilVal, errors.New("file() is disabled for these profiles: write the value itself, or let the host load the profile with functions enabled")
			}
			pathVal, pathMarks := args[0].Unmark()
			path := pathVal.AsString()
			shown := strconv.Quote(path)
			if len(pathMarks) > 0 {
				shown = "whose path is read through env() or file()"
			}
			if path == "" {
				return cty.NilVal, function.NewArgErrorf(0, "the path is empty: pass a file path relative to the profile file, such as file(\"secrets/token\")")
			}
			if !filepath.IsAbs(path) {
				path = filepath.Join(baseDir, path)
			}
			content, err := readSmallFile(path)
			if err != nil {
				if len(pathMarks) > 0 {
					return cty.NilVal, function.NewArgErrorf(0, "reading the file %s failed: check that it exists, is a regular file of at most %d bytes, and is readable by the host", shown, maxFileSize)
				}
				return cty.NilVal, function.NewArgErrorf(0, "reading the file %s failed: %w; check that it exists, is a regular file of at most %d bytes, and is readable by the host", shown, err, maxFileSize)
			}
			if !utf8.Valid(content) {
				return cty.NilVal, function.NewArgErrorf(0, "the file %s is not valid UTF-8: file() reads text only, so store binary data encoded, such as in base64", shown)
			}
			s.calls++
			s.remember(string(content))
			return cty.StringVal(string(content)).Mark(secretMark{}), nil
		},
	})
}

// readSmallFile reads a regular file of at most maxFileSize bytes.
func readSmallFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	content, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(content) > maxFileSize {
		return nil, fmt.Errorf("larger than %d bytes", maxFileSize)
	}
	return content, nil
}

// scrub removes secret values from diagnostics that HCL, gohcl or a
// plugin's Validate produced. Such a diagnostic can quote a value, as in
// "Two different items produced the key ..." from a for expression. A
// diagnostic whose range overlaps an expression that called env() or
// file() loses its text when that text contains a secret. Secrets of 8 or
// more bytes are removed from every diagnostic, in case a message quotes
// a value far from where it was read. It also drops the Expression and
// EvalContext of every diagnostic, so that no diagnostic writer can print
// the values of the evaluation.
func (s *secrets) scrub(diags hcl.Diagnostics) {
	for _, d := range diags {
		d.Expression = nil
		d.EvalContext = nil
		if len(s.values) == 0 {
			continue
		}
		near := s.overlapsSecret(d.Subject) || s.overlapsSecret(d.Context)
		if s.containsSecret(d.Summary, near) {
			d.Summary = "Invalid value read through env() or file()"
		}
		if s.containsSecret(d.Detail, near) {
			d.Detail = "The value is invalid here. The detail is hidden because it would show a value read through env() or file(). Check the variable or file that this expression reads."
		}
	}
}

func (s *secrets) overlapsSecret(r *hcl.Range) bool {
	return overlapsAny(r, s.ranges)
}

// overlapsAny reports whether r overlaps one of ranges.
func overlapsAny(r *hcl.Range, ranges []hcl.Range) bool {
	if r == nil {
		return false
	}
	for _, other := range ranges {
		if other.Filename == r.Filename && other.Start.Byte <= r.End.Byte && r.Start.Byte <= other.End.Byte {
			return true
		}
	}
	return false
}

// containsSecret reports whether text contains a secret, as is or in Go's
// quoted form. When near is false it looks for long secrets only, because
// short ones, such as "1", appear in ordinary text.
func (s *secrets) containsSecret(text string, near bool) bool {
	for _, v := range s.values {
		if !near && len(v) < 8 {
			continue
		}
		if strings.Contains(text, v) {
			return true
		}
		quoted := strconv.Quote(v)
		if strings.Contains(text, quoted[1:len(quoted)-1]) {
			return true
		}
	}
	return false
}
