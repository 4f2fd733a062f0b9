package exec

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/odrkit/odrkit/tasklauncher"
)

// File name suffixes of a task's output files.
const (
	stdoutSuffix = ".stdout"
	stderrSuffix = ".stderr"
)

const (
	// maxLineBytes is the length at which an output line without a line
	// ending is split. It bounds the memory that one WatchTask call holds
	// per stream.
	maxLineBytes = 64 << 10

	// maxFileNameBytes bounds the part of an output file name taken from
	// the task ID, well below the 255 bytes most file systems allow.
	maxFileNameBytes = 128

	// createOutputAttempts is the number of file names StartTask tries
	// before it gives up: the task ID, then the task ID with a random
	// suffix.
	createOutputAttempts = 4
)

// DefaultOutputDir returns the output directory used when Config.OutputDir
// is empty: odrkit-exec-UID in os.TempDir(), where UID is the user ID of
// the host process.
func DefaultOutputDir() string {
	return filepath.Join(os.TempDir(), "odrkit-exec-"+strconv.Itoa(os.Getuid()))
}

// prepareOutputDir resolves dir against the working directory, creates it
// with mode 0700 when it does not exist, and returns its absolute path.
// An empty dir means DefaultOutputDir.
//
// The default directory sits in a directory that other users can write
// to, so it must be a real directory, not a symbolic link, owned by the
// host's user and not writable by others. Otherwise another user could
// read or replace the runners' output.
func prepareOutputDir(dir string) (string, error) {
	isDefault := dir == ""
	if isDefault {
		dir = DefaultOutputDir()
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("output_dir: resolve %q: %w; set output_dir to an absolute path", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return "", fmt.Errorf("output_dir: create %s: %w; set output_dir to a directory the host can write to", abs, err)
	}
	if !isDefault {
		return abs, nil
	}

	info, err := os.Lstat(abs)
	if err != nil {
		return "", fmt.Errorf("output_dir: %w", err)
	}
	if !info.IsDir() {
		return "", fmt.Errorf("output_dir: default directory %s is not a directory (mode %v); remove it, or set output_dir", abs, info.Mode())
	}
	if sys, ok := info.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Getuid() {
		return "", fmt.Errorf("output_dir: default directory %s is owned by user ID %d, not by the host's user ID %d; remove it, or set output_dir", abs, sys.Uid, os.Getuid())
	}
	if info.Mode().Perm()&0o022 != 0 {
		return "", fmt.Errorf("output_dir: default directory %s has mode %v, which lets other users write to it; run chmod 700 on it, or set output_dir", abs, info.Mode().Perm())
	}
	return abs, nil
}

// outputFileBase returns the file name, without suffix, for a task's
// output. It keeps letters, digits, '-', '_' and '.' of the task ID and
// replaces other bytes with '_', so that an ID cannot name a path outside
// the output directory. Distinct IDs can map to the same name, which
// createOutputFiles handles like any existing file.
func outputFileBase(taskID string) string {
	var b strings.Builder
	for i := 0; i < len(taskID) && b.Len() < maxFileNameBytes; i++ {
		c := taskID[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
			b.WriteByte(c)
		default:
			b.WriteByte('_')
		}
	}
	name := b.String()
	// A leading dot would hide the file and allows the names "." and "..".
	if name == "" || name[0] == '.' {
		name = "task-" + name
	}
	return name
}

// outputFiles are a task's output files, open for writing, as StartTask
// passes them to the runner.
type outputFiles struct {
	stdout, stderr         *os.File
	stdoutPath, stderrPath string
}

// createOutputFiles creates new files, with mode 0600, for the stdout and
// stderr of task taskID in dir. When a file of that name exists, for
// example from an earlier attempt of the same task that may still run, it
// adds a random suffix to the name instead of reusing the file.
func createOutputFiles(dir, taskID string) (*outputFiles, error) {
	base := filepath.Join(dir, outputFileBase(taskID))
	name := base
	for range createOutputAttempts {
		files, err := createOutputPair(name)
		if err == nil {
			return files, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		name = base + "." + strings.ToLower(rand.Text()[:8])
	}
	return nil, fmt.Errorf("create output files for task %q in %s: %d names were taken; remove stale files from the directory", taskID, dir, createOutputAttempts)
}

func createOutputPair(name string) (*outputFiles, error) {
	const flags = os.O_WRONLY | os.O_CREATE | os.O_EXCL | os.O_APPEND
	stdout, err := os.OpenFile(name+stdoutSuffix, flags, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create stdout file: %w", err)
	}
	stderr, err := os.OpenFile(name+stderrSuffix, flags, 0o600)
	if err != nil {
		stdout.Close()
		_ = os.Remove(stdout.Name())
		return nil, fmt.Errorf("create stderr file: %w", err)
	}
	return &outputFiles{stdout: stdout, stderr: stderr, stdoutPath: stdout.Name(), stderrPath: stderr.Name()}, nil
}

// closeFiles closes the launcher's handles of the files. The runner keeps
// its own.
func (o *outputFiles) closeFiles() {
	o.stdout.Close()
	o.stderr.Close()
}

// removeOutputFiles removes the output files that st names. A missing file
// is not an error.
func removeOutputFiles(st *taskState) error {
	var errs []error
	for _, path := range []string{st.StdoutPath, st.StderrPath} {
		if path == "" {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove output file: %w", err))
		}
	}
	return errors.Join(errs...)
}

// checkOutputPath checks an output path from a state: empty, or an absolute,
// clean path whose file name ends in suffix.
func checkOutputPath(path, suffix string) error {
	switch {
	case path == "":
		return nil
	case strings.ContainsRune(path, 0):
		return errors.New("path contains a NUL byte")
	case !filepath.IsAbs(path) || filepath.Clean(path) != path:
		return fmt.Errorf("path %q is not an absolute, clean path", path)
	case !strings.HasSuffix(filepath.Base(path), suffix) || filepath.Base(path) == suffix:
		return fmt.Errorf("file name of %q does not end in %q after a task name", path, suffix)
	}
	return nil
}

// lineReader reads lines from an output file that its runner may still
// write to. At the end of the file it keeps an incomplete line until the
// rest arrives, so it can be called again after the file grew.
type lineReader struct {
	file   *os.File
	stream tasklauncher.Stream
	// buf[start:end] is read but not yet returned, and buf[start:scanned]
	// is known to contain no line ending.
	buf     []byte
	start   int
	scanned int
	end     int
}

func newLineReader(file *os.File, stream tasklauncher.Stream) *lineReader {
	return &lineReader{file: file, stream: stream, buf: make([]byte, maxLineBytes)}
}

// next returns the next complete line without its line ending. A line of
// maxLineBytes without a line ending is returned as it is and the rest
// follows as the next line. It returns false when no complete line is
// available yet.
func (r *lineReader) next() (string, bool, error) {
	for {
		if i := bytes.IndexByte(r.buf[r.scanned:r.end], '\n'); i >= 0 {
			lineEnd := r.scanned + i + 1
			line := trimLineEnding(r.buf[r.start:lineEnd])
			r.start, r.scanned = lineEnd, lineEnd
			return line, true, nil
		}
		r.scanned = r.end
		if r.end-r.start == maxLineBytes {
			line := string(r.buf[r.start:r.end])
			r.start, r.scanned, r.end = 0, 0, 0
			return line, true, nil
		}

		// Move the incomplete line to the front to make room for more.
		if r.start > 0 {
			n := copy(r.buf, r.buf[r.start:r.end])
			r.scanned -= r.start
			r.start, r.end = 0, n
		}
		n, err := r.file.Read(r.buf[r.end:])
		r.end += n
		if err != nil && !errors.Is(err, io.EOF) {
			return "", false, fmt.Errorf("read %s file %s: %w", r.stream, r.file.Name(), err)
		}
		if n == 0 {
			return "", false, nil
		}
	}
}

// rest returns the incomplete line at the end of the file, and false when
// there is none. The caller calls it once the runner has stopped writing.
func (r *lineReader) rest() (string, bool) {
	if r.start == r.end {
		return "", false
	}
	line := string(r.buf[r.start:r.end])
	r.start, r.scanned, r.end = 0, 0, 0
	return line, true
}

func (r *lineReader) close() {
	r.file.Close()
}

func trimLineEnding(b []byte) string {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
	}
	return string(b)
}
