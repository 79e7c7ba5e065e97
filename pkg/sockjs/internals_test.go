package sockjs

import (
	"bytes"
	"encoding/binary"
	"io"
	"strings"
	"testing"
	"time"
)

func TestSizeQueueCoalescesAndEnds(t *testing.T) {
	ups := 0
	q := newSizeQueue(func() { ups++ })
	q.push(80, 24)
	q.push(100, 30)
	if got := sizeString(q.Next()); got != "100x30" {
		t.Fatalf("Next = %s, want the latest", got)
	}
	got := make(chan string)
	go func() { got <- sizeString(q.Next()) }()
	time.Sleep(20 * time.Millisecond)
	q.push(120, 40)
	if s := <-got; s != "120x40" {
		t.Fatalf("Next = %s", s)
	}
	go func() { got <- sizeString(q.Next()) }()
	time.Sleep(20 * time.Millisecond)
	q.close()
	if s := <-got; s != "nil" {
		t.Fatalf("Next after close = %s, want nil", s)
	}
	q.push(1, 1) // after close: ignored, never blocks
	if q.Next() != nil {
		t.Fatal("Next after close returned a size")
	}
	if ups != 1 {
		t.Fatalf("stream-up callback ran %d times", ups)
	}
}

func TestStdinPipe(t *testing.T) {
	p := newStdinPipe(nil)
	if err := p.write([]byte("early ")); err != nil {
		t.Fatal(err)
	}
	if err := p.write([]byte("keys")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := p.Read(buf)
	if err != nil || string(buf[:n]) != "early keys" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	// A full buffer makes the writer wait, and close lets it go.
	big := bytes.Repeat([]byte("x"), stdinLimit+10)
	werr := make(chan error)
	go func() { werr <- p.write(big) }()
	select {
	case err := <-werr:
		t.Fatalf("write past the limit returned early: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	rerr := make(chan error)
	go func() {
		_, err := io.ReadAll(p)
		rerr <- err
	}()
	time.Sleep(20 * time.Millisecond)
	p.close()
	if err := <-werr; err != nil && err != io.ErrClosedPipe {
		t.Fatalf("write: %v", err)
	}
	if err := <-rerr; err != nil {
		t.Fatalf("ReadAll after close: %v", err)
	}
	if err := p.write([]byte("late")); err != io.ErrClosedPipe {
		t.Fatalf("write after close: %v", err)
	}
}

// wsFrame builds a masked client frame header and payload.
func wsFrame(fin bool, opcode byte, payload int) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	var h []byte
	switch {
	case payload < 126:
		h = []byte{b0, 0x80 | byte(payload)}
	case payload <= 0xffff:
		h = []byte{b0, 0x80 | 126, 0, 0}
		binary.BigEndian.PutUint16(h[2:], uint16(payload))
	default:
		h = make([]byte, 10)
		h[0], h[1] = b0, 0x80|127
		binary.BigEndian.PutUint64(h[2:], uint64(payload))
	}
	h = append(h, 1, 2, 3, 4) // masking key
	return append(h, bytes.Repeat([]byte{'x'}, payload)...)
}

func TestWSScanner(t *testing.T) {
	const limit = 1000
	cat := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	for _, tc := range []struct {
		name   string
		stream []byte
		over   bool
	}{
		{"small", wsFrame(true, 1, 10), false},
		{"at limit", wsFrame(true, 1, limit), false},
		{"over", wsFrame(true, 1, limit+1), true},
		{"16-bit length", wsFrame(true, 2, 5000), true},
		{"64-bit length", wsFrame(true, 1, 70000), true},
		{"many small messages", cat(wsFrame(true, 1, 600), wsFrame(true, 1, 600), wsFrame(true, 1, 600)), false},
		{"fragments add up", cat(wsFrame(false, 1, 600), wsFrame(false, 0, 300), wsFrame(true, 0, 200)), true},
		{"fragments within", cat(wsFrame(false, 1, 600), wsFrame(true, 9, 4), wsFrame(true, 0, 400)), false},
		{"pings do not count", cat(wsFrame(true, 9, 125), wsFrame(true, 10, 125), wsFrame(true, 1, limit)), false},
		{"empty frames", cat(wsFrame(true, 1, 0), wsFrame(true, 1, 0)), false},
	} {
		for _, step := range []int{1, 3, 7, 1 << 20} {
			s := wsScanner{limit: limit}
			over := false
			for rest := tc.stream; len(rest) > 0 && !over; {
				n := min(step, len(rest))
				over = s.feed(rest[:n])
				rest = rest[n:]
			}
			if over != tc.over {
				t.Errorf("%s (step %d): over = %v", tc.name, step, over)
			}
		}
	}
	// A length field near 2^64 must not wrap around.
	s := wsScanner{limit: limit}
	h := []byte{0x81, 0x80 | 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4}
	if !s.feed(h) {
		t.Fatal("a 2^64-1 byte message passed")
	}
}

func TestFrameBodyAndCount(t *testing.T) {
	const data = `a["{\"Op\":\"stdout\",\"Data\":\"a,\\\"b\\\\\"}","pong"]`
	quoted := `"a[\"{\\\"Op\\\":\\\"stdout\\\",\\\"Data\\\":\\\"a,\\\\\\\"b\\\\\\\\\\\"}\",\"pong\"]"`
	for _, tc := range []struct {
		transport, write string
		want             string
	}{
		{"xhr", data + "\n", data},
		{"xhr_streaming", data + "\n", data},
		{"xhr_streaming", strings.Repeat("h", 2048) + "\n", strings.Repeat("h", 2048)},
		{"eventsource", "data: " + data + "\r\n\r\n", data},
		{"eventsource", "\r\n", ""},
		{"htmlfile", "<script>\np(" + quoted + ");\n</script>\r\n", data},
		{"jsonp", "cb.x_1(" + quoted + ");\r\n", data},
		{"xhr", `c[2010,"Another connection still open"]` + "\n", `c[2010,"Another connection still open"]`},
	} {
		if got := string(frameBody(tc.transport, []byte(tc.write))); got != tc.want {
			t.Errorf("%s %q: body %q, want %q", tc.transport, tc.write, got, tc.want)
		}
	}
	if n := countMessages([]byte(data)); n != 2 {
		t.Fatalf("countMessages = %d, want 2", n)
	}
	if n := countMessages([]byte(`a[]`)); n != 0 {
		t.Fatalf("countMessages(a[]) = %d", n)
	}
}

// maskedText is one masked WebSocket frame carrying payload as is.
func maskedText(fin bool, opcode byte, payload []byte) []byte {
	f := wsFrame(fin, opcode, len(payload))
	body := f[len(f)-len(payload):]
	key := f[len(f)-len(payload)-4 : len(f)-len(payload)]
	for i, c := range payload {
		body[i] = c ^ key[i%4]
	}
	return f
}

func TestWSScannerChecksText(t *testing.T) {
	const limit = 1000
	cat := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	euro := []byte("€") // e2 82 ac
	for _, tc := range []struct {
		name   string
		stream []byte
		bad    bool
	}{
		{"ascii", maskedText(true, 1, []byte(`["x"]`)), false},
		{"multi-byte", maskedText(true, 1, []byte(`["€ ü 😀"]`)), false},
		{"U+FFFD itself", maskedText(true, 1, []byte("\xef\xbf\xbd")), false},
		{"invalid byte", maskedText(true, 1, []byte("a\xffb")), true},
		{"surrogate", maskedText(true, 1, []byte("\xed\xa0\x80")), true},
		{"cut at the end", maskedText(true, 1, euro[:2]), true},
		{"split across fragments", cat(maskedText(false, 1, euro[:1]), maskedText(true, 0, euro[1:])), false},
		{"ping between fragments", cat(maskedText(false, 1, euro[:2]), maskedText(true, 9, []byte{0xff}), maskedText(true, 0, euro[2:])), false},
		{"binary is not checked", maskedText(true, 2, []byte{0xff, 0xfe}), false},
		{"next message starts clean", cat(maskedText(true, 1, []byte("ok")), maskedText(true, 1, []byte{0x80})), true},
	} {
		for _, step := range []int{1, 2, 5, 1 << 20} {
			s := wsScanner{limit: limit}
			refused := false
			for rest := tc.stream; len(rest) > 0 && !refused; {
				n := min(step, len(rest))
				refused = s.feed(rest[:n])
				rest = rest[n:]
			}
			if refused != tc.bad {
				t.Errorf("%s (step %d): refused = %v", tc.name, step, refused)
			}
			if refused && s.violation() != "a message is not valid UTF-8" {
				t.Errorf("%s: violation %q", tc.name, s.violation())
			}
		}
	}
}
