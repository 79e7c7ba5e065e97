package sockjs

import (
	"encoding/binary"
	"io"
	"math/bits"
	"sync"
	"unicode/utf8"
	"unsafe"
)

// maxFrameInput is the most command output one stdout frame carries. It keeps
// a frame (and what SockJS transports write at once) bounded, and makes
// back-pressure act in steps no bigger than this. client-go copies with a
// 32 KiB buffer, so a frame per Write is the common case.
const maxFrameInput = 32 << 10

const (
	stdoutPrefix = `{"Op":"stdout","Data":"`
	stdoutSuffix = `"}`
	// The same message as a SockJS data frame of its own, as the WebSocket
	// transport writes it: the message is a JSON string in a JSON array, so
	// its quotes and backslashes are escaped once more.
	wireStdoutPrefix = `a["{\"Op\":\"stdout\",\"Data\":\"`
	wireStdoutSuffix = `\"}"]`
)

// frameSender delivers one encoded frame; raw is the number of output bytes
// it carries, for accounting.
type frameSender func(frame string, raw int) error

// wireSender delivers one frame already in the transport's wire format. The
// frame's memory is reused once it returns.
type wireSender func(frame []byte, raw int) error

// stdoutWriter turns a command's output stream into stdout frames.
//
// The frame is encoded by hand rather than with json.Marshal: that would
// build a Go string from the bytes (a copy), escape it into a buffer (a
// copy) and convert the result to a string (a third). Here the output is
// escaped straight into the buffer that becomes the frame: a string handed
// to sockjs-go (for the HTTP transports, which may queue it), or, for our
// own WebSocket transport, the whole SockJS frame, escaped twice in one pass
// into a pooled buffer and written through (no allocation per frame).
//
// A multi-byte character cut by the end of a Write is carried to the next
// one, so no frame ends in half a character (which the browser would show as
// two replacement characters). Bytes that can never be valid UTF-8 become
// U+FFFD, as json.Marshal would do, so they are visible rather than lost.
type stdoutWriter struct {
	send frameSender // string frames, or
	wire wireSender  // wire frames

	mu     sync.Mutex
	buf    []byte  // the frame being built
	pooled *[]byte // where buf came from, for wire frames
	carry  [utf8.UTFMax - 1]byte
	ncarry int
	closed bool
}

func newStdoutWriter(send frameSender) *stdoutWriter {
	return &stdoutWriter{send: send}
}

// newWireStdoutWriter writes whole SockJS data frames (see wireSender).
func newWireStdoutWriter(send wireSender) *stdoutWriter {
	return &stdoutWriter{wire: send}
}

func (w *stdoutWriter) double() bool { return w.wire != nil }

func (w *stdoutWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, io.ErrClosedPipe
	}
	defer w.release()
	total := len(p)
	started := false // buf holds a frame in progress
	raw := 0         // output bytes in it

	// Finish the character left over by the previous Write.
	for w.ncarry > 0 && len(p) > 0 {
		var tmp [2 * utf8.UTFMax]byte
		n := copy(tmp[:], w.carry[:w.ncarry])
		m := copy(tmp[n:utf8.UTFMax], p)
		t := tmp[:n+m]
		if !utf8.FullRune(t) {
			// Still short (p is tiny, and now all carried): keep carrying,
			// after sending what this Write has framed already.
			w.ncarry = copy(w.carry[:], t)
			p = p[m:]
			break
		}
		if !started {
			w.start(len(p))
			started = true
		}
		_, size := utf8.DecodeRune(t)
		// A whole character, or an invalid byte that becomes U+FFFD.
		w.buf, _ = appendEscaped(w.buf, t[:size], true, w.double())
		if size >= w.ncarry {
			p = p[size-w.ncarry:]
			raw += size
			w.ncarry = 0
		} else {
			// An invalid lead byte: drop just it and retry the rest.
			raw += size
			w.ncarry = copy(w.carry[:], w.carry[size:w.ncarry])
		}
	}

	for len(p) > 0 {
		if len(p) < utf8.UTFMax && !utf8.FullRune(p) {
			w.ncarry = copy(w.carry[:], p)
			break
		}
		if !started {
			w.start(min(len(p), maxFrameInput))
			started = true
		}
		chunk := p[:min(len(p), max(maxFrameInput-raw, utf8.UTFMax))]
		var n int
		w.buf, n = appendEscaped(w.buf, chunk, false, w.double())
		if n == 0 {
			// Unreachable (chunk holds at least one decidable character),
			// but a writer that stops making progress would hang the exec.
			w.buf, n = appendEscaped(w.buf, p[:1], true, w.double())
		}
		p = p[n:]
		raw += n
		if len(p) > 0 && raw >= maxFrameInput {
			if err := w.flushFrame(raw); err != nil {
				return 0, err
			}
			started, raw = false, 0
		}
	}
	if started {
		if err := w.flushFrame(raw); err != nil {
			return 0, err
		}
	}
	return total, nil
}

// finish sends what is carried (an incomplete character at the end of the
// output, hence invalid) and refuses further writes.
func (w *stdoutWriter) finish() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if w.ncarry == 0 {
		return nil
	}
	defer w.release()
	w.start(w.ncarry)
	w.buf, _ = appendEscaped(w.buf, w.carry[:w.ncarry], true, w.double())
	n := w.ncarry
	w.ncarry = 0
	return w.flushFrame(n)
}

// close refuses further writes. It waits for a Write in progress, which
// the caller bounds by cancelling the session (and by write timeouts).
func (w *stdoutWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

// start begins a frame for about n bytes of output.
func (w *stdoutWriter) start(n int) {
	if w.double() {
		if w.pooled == nil {
			w.pooled = wireBufs.Get().(*[]byte)
			w.buf = *w.pooled
		}
		w.buf = append(w.buf[:0], wireStdoutPrefix...)
		return
	}
	// Room for typical terminal output: mostly plain text, some escapes.
	// A fresh buffer per frame: it becomes the frame's string, which
	// sockjs-go may hold on to until a receiver picks it up.
	w.buf = make([]byte, 0, len(stdoutPrefix)+n+n/8+len(stdoutSuffix)+16)
	w.buf = append(w.buf, stdoutPrefix...)
}

func (w *stdoutWriter) flushFrame(raw int) error {
	if w.double() {
		w.buf = append(w.buf, wireStdoutSuffix...)
		return w.wire(w.buf, raw)
	}
	w.buf = append(w.buf, stdoutSuffix...)
	// The buffer is never written again: it is the string's from here on
	// (as strings.Builder does).
	frame := unsafe.String(unsafe.SliceData(w.buf), len(w.buf))
	w.buf = nil
	return w.send(frame, raw)
}

// release returns a wire frame buffer to the pool between Writes, so that
// an idle terminal holds none.
func (w *stdoutWriter) release() {
	if w.pooled != nil {
		if cap(w.buf) <= maxPooledFrame {
			*w.pooled = w.buf[:0]
			wireBufs.Put(w.pooled)
		}
		w.buf, w.pooled = nil, nil
	}
}

// wireBufs pools the buffers wire frames are built in: room for a frame of
// maxFrameInput bytes of plain text (escapes make some frames larger; those
// buffers are pooled as well, up to maxPooledFrame).
var wireBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, len(wireStdoutPrefix)+maxFrameInput+maxFrameInput/8+len(wireStdoutSuffix))
	return &b
}}

const maxPooledFrame = 4 * maxFrameInput

// safeASCII marks the bytes a JSON string holds as they are.
var safeASCII = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// asciiEscapes[double][c] is how the ASCII byte c, when not safe, appears in
// a JSON string (double: in a JSON string inside a JSON string).
var asciiEscapes = func() (t [2][utf8.RuneSelf]string) {
	const hexDigits = "0123456789abcdef"
	for c := 0; c < utf8.RuneSelf; c++ {
		var e string
		switch c {
		case '"':
			e = `\"`
		case '\\':
			e = `\\`
		case '\n':
			e = `\n`
		case '\r':
			e = `\r`
		case '\t':
			e = `\t`
		default:
			if c >= 0x20 {
				continue
			}
			e = `\u00` + string(hexDigits[c>>4]) + string(hexDigits[c&0xf])
		}
		t[0][c] = e
		// Escaped again: each backslash and quote of e gets a backslash.
		var d []byte
		for i := 0; i < len(e); i++ {
			if e[i] == '\\' || e[i] == '"' {
				d = append(d, '\\')
			}
			d = append(d, e[i])
		}
		t[1][c] = string(d)
	}
	return t
}()

var replacementEscapes = [2]string{`\ufffd`, `\\ufffd`}

const (
	lsbs = 0x0101010101010101
	msbs = 0x8080808080808080
)

// appendEscaped appends src to dst as the inside of a JSON string (double:
// of a JSON string inside a JSON string) and returns how many bytes of src
// it consumed. Unless final, it stops before a character that src cuts
// short, for the caller to complete later.
//
// Plain text is skipped eight bytes at a time, and the first byte that needs
// a look found from the word's test bits; runs are then copied at once.
func appendEscaped(dst, src []byte, final, double bool) ([]byte, int) {
	esc := &asciiEscapes[0]
	rep := replacementEscapes[0]
	if double {
		esc, rep = &asciiEscapes[1], replacementEscapes[1]
	}
	start, i := 0, 0
	for i < len(src) {
		// Skip plain ASCII.
		for i+8 <= len(src) {
			if m := specialBytes(binary.LittleEndian.Uint64(src[i:])); m != 0 {
				i += bits.TrailingZeros64(m) >> 3
				break
			}
			i += 8
		}
		for i < len(src) && src[i] < utf8.RuneSelf && safeASCII[src[i]] {
			i++
		}
		if i >= len(src) {
			break
		}
		c := src[i]
		if c < utf8.RuneSelf {
			dst = append(dst, src[start:i]...)
			dst = append(dst, esc[c]...)
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(src[i:])
		if r == utf8.RuneError && size == 1 {
			if !final && !utf8.FullRune(src[i:]) {
				break
			}
			dst = append(dst, src[start:i]...)
			dst = append(dst, rep...)
			i++
			start = i
			continue
		}
		i += size
	}
	return append(dst, src[start:i]...), i
}

// specialBytes has the top bit set in each byte of v (little-endian) that
// a JSON string does not hold as it is (a control character, '"', '\\')
// or that starts or continues a multi-byte character (>= 0x80). Bytes
// above the lowest such byte may be flagged falsely (a borrow carries); the
// lowest flagged byte never is, which is all the scan needs.
func specialBytes(v uint64) uint64 {
	ctl := (v - lsbs*0x20) & ^v
	q := v ^ (lsbs * '"')
	quote := (q - lsbs) & ^q
	b := v ^ (lsbs * '\\')
	backslash := (b - lsbs) & ^b
	return (ctl | quote | backslash | v) & msbs
}
