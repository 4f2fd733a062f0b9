package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/odrkit/odrkit/profile"
	"github.com/odrkit/odrkit/tasklauncher"
)

// runCheck validates the runner profiles in paths, each a file or a
// directory of .hcl and .json files, against the plugins of reg. It
// prints each diagnostic to stderr as
//
//	FILE:LINE:COL: summary
//	    detail
//
// (FILE: summary for a problem with a whole file, and "warning: " before
// the summary of a warning). With no error it prints "N profiles OK" to
// stdout. It returns the exit code: 0 when the profiles are valid, 1 when
// they are not, and 2 when no path was given.
func runCheck(reg *tasklauncher.Registry, paths []string, stdout, stderr io.Writer) int {
	if len(paths) == 0 {
		fmt.Fprintln(stderr, "check: no profile path given: pass one or more profile files or directories")
		return 2
	}
	set, diags := profile.LoadFiles(reg, paths...)
	for _, d := range diags {
		writeDiagnostic(stderr, d)
	}
	if diags.HasErrors() {
		return 1
	}
	fmt.Fprintf(stdout, "%d profiles OK\n", set.Len())
	return 0
}

// writeDiagnostic prints one diagnostic in the FILE:LINE:COL form that
// editors and terminals link to the source.
func writeDiagnostic(w io.Writer, d *hcl.Diagnostic) {
	var pos string
	switch {
	case d.Subject == nil:
		pos = "profiles"
	case d.Subject.Start.Line == 0:
		pos = d.Subject.Filename
	default:
		pos = fmt.Sprintf("%s:%d:%d", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column)
	}
	severity := ""
	if d.Severity == hcl.DiagWarning {
		severity = "warning: "
	}
	fmt.Fprintf(w, "%s: %s%s\n", pos, severity, d.Summary)
	for line := range strings.Lines(d.Detail) {
		line = strings.TrimRight(line, "\n")
		if line != "" {
			fmt.Fprintf(w, "    %s\n", line)
		}
	}
}
