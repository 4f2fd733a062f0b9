package runner

import (
	"io"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/odrkit/odrkit/runnerapi/runnerpb"
)

// drain returns every pending line of o as "stream:line".
func drain(o *Output) []string {
	var lines []string
	for batch := o.takeBatch(); batch != nil; batch = o.takeBatch() {
		for _, l := range batch {
			lines = append(lines, Stream(l.GetStream()).String()+":"+l.GetLine())
		}
	}
	return lines
}

func TestOutputLine(t *testing.T) {
	tests := []struct {
		name string
		line string
		want []string
	}{
		{name: "plain", line: "hello", want: []string{"stdout:hello"}},
		{name: "trailing newline", line: "hello\n", want: []string{"stdout:hello"}},
		{name: "CRLF", line: "hello\r\n", want: []string{"stdout:hello"}},
		{name: "inner newlines", line: "a\nb\r\nc", want: []string{"stdout:a", "stdout:b", "stdout:c"}},
		{name: "empty", line: "", want: []string{"stdout:"}},
		{name: "invalid UTF-8", line: "bad \xff byte", want: []string{"stdout:bad \uFFFD byte"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newOutput()
			o.Line(Stdout, tt.line)
			require.Equal(t, tt.want, drain(o))
		})
	}
}

func TestOutputLineSplitsLongLines(t *testing.T) {
	o := newOutput()
	// "é" is two bytes, so a cut at MaxLineBytes falls inside a rune.
	long := "x" + strings.Repeat("é", MaxLineBytes)
	o.Line(Stderr, long)

	var joined strings.Builder
	batch := o.takeBatch()
	require.Len(t, batch, 3)
	for _, l := range batch {
		require.Equal(t, runnerpb.Stream_STREAM_STDERR, l.GetStream())
		require.LessOrEqual(t, len(l.GetLine()), MaxLineBytes)
		require.True(t, utf8.ValidString(l.GetLine()), "a split cut a rune in two")
		joined.WriteString(l.GetLine())
	}
	require.Equal(t, long, joined.String())
}

func TestOutputWriter(t *testing.T) {
	o := newOutput()
	w := o.Writer(Stdout)

	for _, chunk := range []string{"fir", "st\nsec", "ond\r\n\nthi", "rd"} {
		n, err := io.WriteString(w, chunk)
		require.NoError(t, err)
		require.Equal(t, len(chunk), n)
	}
	require.Equal(t, []string{"stdout:first", "stdout:second", "stdout:"}, drain(o))

	require.NoError(t, w.Close())
	require.Equal(t, []string{"stdout:third"}, drain(o), "Close sends the partial last line")
	require.NoError(t, w.Close(), "a second Close is a no-op")

	_, err := io.WriteString(w, "late\n")
	require.ErrorIs(t, err, errWriterClosed)
}

func TestOutputWriterBoundsPartialLine(t *testing.T) {
	o := newOutput()
	w := o.Writer(Stdout)

	_, err := io.WriteString(w, strings.Repeat("y", MaxLineBytes+10))
	require.NoError(t, err)
	lines := drain(o)
	require.Len(t, lines, 1, "the writer sends a line once it reaches MaxLineBytes")
	require.Len(t, lines[0], len("stdout:")+MaxLineBytes)

	require.NoError(t, w.Close())
	require.Equal(t, []string{"stdout:" + strings.Repeat("y", 10)}, drain(o))
}

func TestOutputBatchLimits(t *testing.T) {
	o := newOutput()
	for range 250 {
		o.Line(Stdout, "x")
	}

	var sizes []int
	for batch := o.takeBatch(); batch != nil; batch = o.takeBatch() {
		sizes = append(sizes, len(batch))
	}
	require.Equal(t, []int{100, 100, 50}, sizes)
}

func TestOutputLineBlocksUntilDrainedOrClosed(t *testing.T) {
	o := newOutput()
	for range maxPendingLines {
		o.Line(Stdout, "x")
	}

	written := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		o.Line(Stdout, "over the limit")
		close(written)
	})
	require.Never(t, func() bool {
		select {
		case <-written:
			return true
		default:
			return false
		}
	}, 100*time.Millisecond, 5*time.Millisecond, "Line returned while the pending lines were at their limit")
	require.Equal(t, maxPendingLines, o.pendingCount())

	require.Len(t, o.takeBatch(), maxBatchLines)
	wg.Wait()
	require.Equal(t, maxPendingLines-maxBatchLines+1, o.pendingCount())

	o.close()
	o.Line(Stdout, "after close")
	require.Zero(t, o.pendingCount(), "lines after close are dropped")
}
