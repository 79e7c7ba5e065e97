package sockjs

import (
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

type frameLog struct {
	frames []string
	raw    int
}

func (l *frameLog) send(f string, raw int) error {
	l.frames = append(l.frames, f)
	l.raw += raw
	return nil
}

func (l *frameLog) data(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, f := range l.frames {
		var m struct{ Op, Data string }
		if err := json.Unmarshal([]byte(f), &m); err != nil || m.Op != opStdout {
			t.Fatalf("frame %q: %v", truncate(f, 100), err)
		}
		if !utf8.ValidString(f) {
			t.Fatalf("frame is not valid UTF-8: %q", truncate(f, 100))
		}
		b.WriteString(m.Data)
	}
	return b.String()
}

// asJSON is what json.Marshal makes of b: invalid bytes each become U+FFFD.
func asJSON(b []byte) string {
	enc, _ := json.Marshal(string(b))
	var s string
	_ = json.Unmarshal(enc, &s)
	return s
}

func TestStdoutEscaping(t *testing.T) {
	in := "plain \"quoted\" back\\slash \r\n\t \x00\x01\x1b[0m\x7f / <>& é€😀 \u2028"
	var l frameLog
	w := newStdoutWriter(l.send)
	if _, err := w.Write([]byte(in)); err != nil {
		t.Fatal(err)
	}
	if got := l.data(t); got != in {
		t.Fatalf("got %q, want %q", got, in)
	}
	if len(l.frames) != 1 || !strings.HasPrefix(l.frames[0], stdoutPrefix) {
		t.Fatalf("frames %q", l.frames)
	}
	if !strings.Contains(l.frames[0], `\u001b`) || !strings.Contains(l.frames[0], `\r\n\t`) {
		t.Fatalf("escapes: %s", l.frames[0])
	}
}

func TestStdoutInvalidBytesAreReplaced(t *testing.T) {
	for _, in := range []string{"\xff", "a\x80b", "\xed\xa0\x80", "\xc0\xaf", "\xe2\x28\xa1", "\xf4\x90\x80\x80"} {
		var l frameLog
		w := newStdoutWriter(l.send)
		_, _ = w.Write([]byte(in))
		_ = w.finish()
		if got, want := l.data(t), asJSON([]byte(in)); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}

// Any stream, cut anywhere, reads as json.Marshal would read it whole.
func TestStdoutSplitWritesProperty(t *testing.T) {
	pieces := []string{"a", "\n", "\x1b", "é", "€", "😀", "\xff", "\x80", "\xe2\x82", "\xf0\x9f", "\xed\xa0\x80", "\"", "\\"}
	r := rand.New(rand.NewPCG(7, 8))
	for iter := 0; iter < 2000; iter++ {
		var all []byte
		for n := r.IntN(40); n > 0; n-- {
			all = append(all, pieces[r.IntN(len(pieces))]...)
		}
		if iter%100 == 0 { // now and then, larger than a frame
			all = append(all, bigText(maxFrameInput+r.IntN(3*maxFrameInput))...)
		}
		var l frameLog
		w := newStdoutWriter(l.send)
		for rest := all; len(rest) > 0; {
			n := 1 + r.IntN(min(len(rest), 9))
			if r.IntN(20) == 0 {
				n = len(rest)
			}
			if k, err := w.Write(rest[:n]); k != n || err != nil {
				t.Fatalf("Write = %d, %v", k, err)
			}
			rest = rest[n:]
		}
		if err := w.finish(); err != nil {
			t.Fatal(err)
		}
		if got, want := l.data(t), asJSON(all); got != want {
			t.Fatalf("stream %q:\n got %q\nwant %q", truncate(string(all), 200), truncate(got, 200), truncate(want, 200))
		}
		if l.raw != len(all) {
			t.Fatalf("accounted %d bytes of %d", l.raw, len(all))
		}
	}
}

func TestStdoutFrameSize(t *testing.T) {
	data := bigText(5*maxFrameInput + 17)
	var l frameLog
	w := newStdoutWriter(func(f string, raw int) error {
		if raw > maxFrameInput+utf8.UTFMax {
			t.Errorf("frame of %d output bytes", raw)
		}
		return l.send(f, raw)
	})
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	_ = w.finish()
	if len(l.frames) < 5 || l.data(t) != string(data) {
		t.Fatalf("%d frames", len(l.frames))
	}
}

func TestStdoutAfterClose(t *testing.T) {
	boom := errors.New("client gone")
	w := newStdoutWriter(func(string, int) error { return boom })
	if _, err := w.Write([]byte("x")); !errors.Is(err, boom) {
		t.Fatalf("send error not returned: %v", err)
	}
	w.close()
	if _, err := w.Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("Write after close: %v", err)
	}
}

// terminalOutput looks like what a shell prints: mostly text, with colour
// escapes and line ends, some non-ASCII.
func terminalOutput(n int) []byte {
	line := "\x1b[01;34mdrwxr-xr-x\x1b[0m  2 root root 4096 Jan  1 00:00 \x1b[01;32mbin\x1b[0m  naïve café ✓\r\n"
	return []byte(strings.Repeat(line, n/len(line)+1)[:n])
}

func BenchmarkStdoutEncode(b *testing.B) {
	for _, bc := range []struct {
		name string
		data []byte
	}{
		{"terminal", terminalOutput(32 << 10)},
		{"ascii", []byte(strings.Repeat("0123456789abcdef", 2<<10))},
		{"keystroke-echo", []byte("l")},
	} {
		b.Run(bc.name, func(b *testing.B) {
			w := newStdoutWriter(func(string, int) error { return nil })
			b.SetBytes(int64(len(bc.data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := w.Write(bc.data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// For comparison: what encoding/json would cost for the same frames.
	b.Run("json.Marshal-terminal", func(b *testing.B) {
		data := terminalOutput(32 << 10)
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			out, _ := json.Marshal(struct{ Op, Data string }{opStdout, string(data)})
			_ = string(out)
		}
	})
}
