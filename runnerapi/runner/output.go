package runner

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/odrkit/odrkit/runnerapi/runnerpb"
)

// Limits on output lines and batches. A batch is one Output message, and
// maxBatchBytes keeps it well below the 4 MiB that a gRPC server accepts by
// default.
const (
	// MaxLineBytes is the longest line sent to the host. Longer lines are
	// split into several lines of at most this size.
	MaxLineBytes = 64 << 10

	maxBatchLines   = 100
	maxBatchBytes   = 1 << 20
	maxPendingLines = 1000
)

// Stream names the stream an output line was written to.
type Stream int

// The streams of job output.
const (
	Stdout = Stream(runnerpb.Stream_STREAM_STDOUT)
	Stderr = Stream(runnerpb.Stream_STREAM_STDERR)
)

// String returns "stdout" or "stderr".
func (s Stream) String() string {
	switch s {
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	default:
		return fmt.Sprintf("Stream(%d)", int(s))
	}
}

// Output collects a job's output lines and hands them, in order, to the
// goroutine that sends them to the host. It is safe for concurrent use.
// Lines written after the job has completed or its stream has broken are
// dropped.
type Output struct {
	mu      sync.Mutex
	space   *sync.Cond // signalled when pending shrinks or the Output closes
	pending []*runnerpb.OutputLine
	closed  bool

	// ready receives a value when lines are pending. Its capacity is 1, so
	// one value stands for any number of appended lines.
	ready chan struct{}
}

func newOutput() *Output {
	o := &Output{ready: make(chan struct{}, 1)}
	o.space = sync.NewCond(&o.mu)
	return o
}

// Line writes one line to stream. A trailing line ending is removed, and
// text with inner newlines is sent as several lines. Invalid UTF-8 is
// replaced with U+FFFD, and lines longer than MaxLineBytes are split. Line
// blocks while 1000 lines wait to be sent, so a handler cannot outrun the
// connection to the host without bound.
func (o *Output) Line(stream Stream, line string) {
	line = strings.TrimSuffix(line, "\n")
	var lines []*runnerpb.OutputLine
	for part := range strings.SplitSeq(line, "\n") {
		part = strings.TrimSuffix(part, "\r")
		for _, chunk := range splitLong(part) {
			lines = append(lines, &runnerpb.OutputLine{
				Stream: runnerpb.Stream(stream),
				Line:   strings.ToValidUTF8(chunk, "\uFFFD"),
			})
		}
	}

	o.mu.Lock()
	defer o.mu.Unlock()
	for _, l := range lines {
		for len(o.pending) >= maxPendingLines && !o.closed {
			o.space.Wait()
		}
		if o.closed {
			return
		}
		o.pending = append(o.pending, l)
	}
	select {
	case o.ready <- struct{}{}:
	default:
	}
}

// splitLong splits s into pieces of at most MaxLineBytes, cutting at rune
// boundaries where it can.
func splitLong(s string) []string {
	if len(s) <= MaxLineBytes {
		return []string{s}
	}
	var pieces []string
	for len(s) > MaxLineBytes {
		cut := runeCut(s, MaxLineBytes)
		pieces = append(pieces, s[:cut])
		s = s[cut:]
	}
	return append(pieces, s)
}

// runeCut returns the largest index at most limit at which b can be cut
// without splitting a UTF-8 sequence, or limit when there is none nearby.
func runeCut[T string | []byte](b T, limit int) int {
	for cut := limit; cut > limit-utf8.UTFMax && cut > 0; cut-- {
		if cut >= len(b) || utf8.RuneStart(b[cut]) {
			return cut
		}
	}
	return limit
}

// pendingCount returns the number of lines waiting to be sent.
func (o *Output) pendingCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.pending)
}

// takeBatch removes and returns the oldest pending lines, at most
// maxBatchLines of them and about maxBatchBytes of text. It returns nil
// when nothing is pending.
func (o *Output) takeBatch() []*runnerpb.OutputLine {
	o.mu.Lock()
	defer o.mu.Unlock()
	n, size := 0, 0
	for n < len(o.pending) && n < maxBatchLines {
		size += len(o.pending[n].GetLine())
		if n > 0 && size > maxBatchBytes {
			break
		}
		n++
	}
	if n == 0 {
		return nil
	}
	batch := o.pending[:n:n]
	o.pending = o.pending[n:]
	o.space.Broadcast()
	return batch
}

// close drops pending lines and makes later lines be dropped. It unblocks
// writers that wait for space.
func (o *Output) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	o.pending = nil
	o.space.Broadcast()
}

// errWriterClosed is returned by Write after Close.
var errWriterClosed = errors.New("output writer is closed")

// Writer returns a writer that splits the bytes written to it into lines on
// stream. Close sends a last line that has no line ending. The writer is
// safe for concurrent use, and it fits os/exec.Cmd's Stdout and Stderr.
func (o *Output) Writer(stream Stream) io.WriteCloser {
	return &lineWriter{out: o, stream: stream}
}

type lineWriter struct {
	out    *Output
	stream Stream

	mu     sync.Mutex
	buf    []byte
	closed bool
}

// Write sends each complete line in p. It keeps a partial last line until
// the next Write or Close, but sends it early once it reaches MaxLineBytes.
func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, errWriterClosed
	}

	w.buf = append(w.buf, p...)
	rest := w.buf
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		w.out.Line(w.stream, string(rest[:i]))
		rest = rest[i+1:]
	}
	for len(rest) >= MaxLineBytes {
		cut := runeCut(rest, MaxLineBytes)
		w.out.Line(w.stream, string(rest[:cut]))
		rest = rest[cut:]
	}
	w.buf = append(w.buf[:0], rest...)
	return len(p), nil
}

// Close sends the partial last line, if any. Later writes fail.
func (w *lineWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if len(w.buf) > 0 {
		w.out.Line(w.stream, string(w.buf))
		w.buf = nil
	}
	return nil
}
