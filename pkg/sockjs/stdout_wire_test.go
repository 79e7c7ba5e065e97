package sockjs

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// wireLog decodes wire frames as a SockJS client does: the frame is a JSON
// array of messages, each message the terminal's JSON.
type wireLog struct {
	t    *testing.T
	data strings.Builder
	raw  int
	n    int
}

func (l *wireLog) send(frame []byte, raw int) error {
	l.t.Helper()
	if !utf8.Valid(frame) || len(frame) < 2 || frame[0] != 'a' {
		l.t.Fatalf("bad wire frame %q", truncate(string(frame), 100))
	}
	var msgs []string
	if err := json.Unmarshal(frame[1:], &msgs); err != nil || len(msgs) != 1 {
		l.t.Fatalf("wire frame %q: %v", truncate(string(frame), 100), err)
	}
	if !strings.HasPrefix(msgs[0], stdoutPrefix) {
		l.t.Fatalf("message %q is not the stdout frame's own encoding", truncate(msgs[0], 100))
	}
	var m struct{ Op, Data string }
	if err := json.Unmarshal([]byte(msgs[0]), &m); err != nil || m.Op != opStdout {
		l.t.Fatalf("message %q: %v", truncate(msgs[0], 100), err)
	}
	l.data.WriteString(m.Data)
	l.raw += raw
	l.n++
	return nil
}

// The wire writer's frames carry exactly what the string writer's do, cut
// anywhere, as json.Marshal would read the whole stream.
func TestWireStdoutMatchesStringFrames(t *testing.T) {
	pieces := []string{"a", "\n", "\r\n", "\x1b", "\x00", "é", "€", "😀", "\xff", "\x80", "\xe2\x82", "\xf0\x9f", "\xed\xa0\x80", "\"", "\\", "/", "<>&", "\u2028"}
	r := rand.New(rand.NewPCG(3, 4))
	for iter := 0; iter < 1500; iter++ {
		var all []byte
		for n := r.IntN(40); n > 0; n-- {
			all = append(all, pieces[r.IntN(len(pieces))]...)
		}
		if iter%100 == 0 {
			all = append(all, bigText(maxFrameInput+r.IntN(3*maxFrameInput))...)
		}
		var sl frameLog
		wl := &wireLog{t: t}
		sw, ww := newStdoutWriter(sl.send), newWireStdoutWriter(wl.send)
		for rest := all; len(rest) > 0; {
			n := 1 + r.IntN(min(len(rest), 9))
			if r.IntN(20) == 0 {
				n = len(rest)
			}
			for _, w := range []*stdoutWriter{sw, ww} {
				if k, err := w.Write(rest[:n]); k != n || err != nil {
					t.Fatalf("Write = %d, %v", k, err)
				}
			}
			rest = rest[n:]
		}
		_ = sw.finish()
		_ = ww.finish()
		want := asJSON(all)
		if got := wl.data.String(); got != want {
			t.Fatalf("stream %q:\n got %q\nwant %q", truncate(string(all), 200), truncate(got, 200), truncate(want, 200))
		}
		if got := sl.data(t); got != want {
			t.Fatalf("string frames: got %q, want %q", truncate(got, 200), truncate(want, 200))
		}
		if wl.raw != len(all) || sl.raw != len(all) {
			t.Fatalf("accounted %d and %d bytes of %d", wl.raw, sl.raw, len(all))
		}
		if wl.n != len(sl.frames) {
			t.Fatalf("%d wire frames, %d string frames", wl.n, len(sl.frames))
		}
	}
}

// An invalid lead byte dropped from the carry, when what follows is still
// short, must not lose the replacement character already framed.
func TestStdoutCarryAfterInvalidLead(t *testing.T) {
	for _, mk := range []func(*frameLog, *wireLog) *stdoutWriter{
		func(l *frameLog, _ *wireLog) *stdoutWriter { return newStdoutWriter(l.send) },
		func(_ *frameLog, l *wireLog) *stdoutWriter { return newWireStdoutWriter(l.send) },
	} {
		var sl frameLog
		wl := &wireLog{t: t}
		w := mk(&sl, wl)
		for _, p := range []string{"\xf0\xe2", "\x82", "\xac!"} {
			if _, err := w.Write([]byte(p)); err != nil {
				t.Fatal(err)
			}
		}
		_ = w.finish()
		got := wl.data.String()
		if len(sl.frames) > 0 {
			got = sl.data(t)
		}
		if want := asJSON([]byte("\xf0\xe2\x82\xac!")); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

// An idle terminal holds no frame buffer.
func TestWireStdoutReleasesItsBuffer(t *testing.T) {
	wl := &wireLog{t: t}
	w := newWireStdoutWriter(wl.send)
	if _, err := w.Write(bigText(3 * maxFrameInput)); err != nil {
		t.Fatal(err)
	}
	if w.buf != nil {
		t.Fatal("the writer kept its frame buffer after Write")
	}
}

func BenchmarkWireStdoutEncode(b *testing.B) {
	for _, bc := range []struct {
		name string
		data []byte
	}{
		{"terminal", terminalOutput(32 << 10)},
		{"ascii", []byte(strings.Repeat("0123456789abcdef", 2<<10))},
		{"lines", []byte(strings.Repeat(strings.Repeat("a", 79)+"\r\n", 410)[:32<<10])},
		{"keystroke-echo", []byte("l")},
	} {
		b.Run(bc.name, func(b *testing.B) {
			w := newWireStdoutWriter(func([]byte, int) error { return nil })
			b.SetBytes(int64(len(bc.data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := w.Write(bc.data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Every byte value, in every position of the eight-byte scan, comes out as
// json.Marshal reads it, escaped once and twice.
func TestAppendEscapedEveryByte(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for iter := 0; iter < 20000; iter++ {
		src := make([]byte, r.IntN(40))
		for i := range src {
			switch r.IntN(4) {
			case 0:
				src[i] = byte(r.IntN(256))
			default:
				src[i] = "a #!\"\\\x1f\x20\x7f~"[r.IntN(10)]
			}
		}
		want := asJSON(src)
		one, n := appendEscaped(nil, src, true, false)
		if n != len(src) {
			t.Fatalf("%q: consumed %d", src, n)
		}
		var got string
		if err := json.Unmarshal([]byte(`"`+string(one)+`"`), &got); err != nil || got != want {
			t.Fatalf("%q: single %q: %q, %v", src, one, got, err)
		}
		two, _ := appendEscaped(nil, src, true, true)
		var inner string
		if err := json.Unmarshal([]byte(`"`+string(two)+`"`), &inner); err != nil || inner != string(one) {
			t.Fatalf("%q: double %q: %q, %v", src, two, inner, err)
		}
	}
}

// BenchmarkFramePath compares what a stdout frame costs on its way to a
// WebSocket: before, a string frame handed to sockjs-go, which quotes it
// with json.Marshal, formats it into "a[...]" and converts it to bytes for
// gorilla; now, the wire frame built once in a pooled buffer.
func BenchmarkFramePath(b *testing.B) {
	sockjsGo := func(frame string, _ int) error {
		q, _ := json.Marshal(frame)
		msg := fmt.Sprintf("a[%s]", strings.Join([]string{string(q)}, ","))
		sinkBytes = []byte(msg)
		return nil
	}
	for _, in := range []struct {
		name string
		data []byte
	}{
		{"lines-32KiB", []byte(strings.Repeat(strings.Repeat("a", 79)+"\r\n", 410)[:32<<10])},
		{"terminal-32KiB", terminalOutput(32 << 10)},
		{"keystroke", []byte("l")},
	} {
		for _, p := range []struct {
			name string
			w    *stdoutWriter
		}{
			{"sockjs-go", newStdoutWriter(sockjsGo)},
			{"wire", newWireStdoutWriter(func(f []byte, _ int) error { sinkBytes = f; return nil })},
		} {
			b.Run(in.name+"/"+p.name, func(b *testing.B) {
				b.SetBytes(int64(len(in.data)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := p.w.Write(in.data); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

var sinkBytes []byte
