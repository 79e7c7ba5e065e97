package sockjs

import (
	"encoding/binary"
	"io"
	"strings"
	"sync"
	"unicode/utf8"
)

// maxFrameInput is the most command output one stdout frame carries. It keeps
// a frame (and what SockJS transports write at once) bounded, and makes
// back-pressure act in steps no bigger than this. client-go copies with a
// 32 KiB buffer, so a frame per Write is the common case.
const maxFrameInput = 32 << 10

const (
	stdoutPrefix = `{"Op":"stdout","Data":"`
	stdoutSuffix = `"}`
)

// frameSender delivers one encoded frame; raw is the number of output bytes
// it carries, for accounting.
type frameSender func(frame string, raw int) error

// stdoutWriter turns a command's output stream into stdout frames.
//
// The frame is encoded by hand rather than with json.Marshal: that would
// build a Go string from the bytes (a copy), escape it into a buffer (a
// copy) and convert the result to a string (a third). Here the output is
// escaped straight into the builder that becomes the frame's string.
//
// A multi-byte character cut by the end of a Write is carried to the next
// one, so no frame ends in half a character (which the browser would show as
// two replacement characters). Bytes that can never be valid UTF-8 become
// U+FFFD, as json.Marshal would do, so they are visible rather than lost.
type stdoutWriter struct {
	send frameSender

	mu     sync.Mutex
	carry  [utf8.UTFMax - 1]byte
	ncarry int
	closed bool
}

func newStdoutWriter(send frameSender) *stdoutWriter {
	return &stdoutWriter{send: send}
}

func (w *stdoutWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, io.ErrClosedPipe
	}
	total := len(p)
	var sb strings.Builder
	raw := 0 // output bytes in sb's frame

	// Finish the character left over by the previous Write.
	for w.ncarry > 0 && len(p) > 0 {
		var tmp [2 * utf8.UTFMax]byte
		n := copy(tmp[:], w.carry[:w.ncarry])
		m := copy(tmp[n:utf8.UTFMax], p)
		t := tmp[:n+m]
		if !utf8.FullRune(t) {
			// Still short (p is tiny): keep carrying.
			w.ncarry = copy(w.carry[:], t)
			return total, nil
		}
		if sb.Len() == 0 {
			startFrame(&sb, len(p))
		}
		r, size := utf8.DecodeRune(t)
		if r == utf8.RuneError && size == 1 {
			sb.WriteString(`\ufffd`)
		} else {
			sb.Write(t[:size])
		}
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
		if sb.Len() == 0 {
			startFrame(&sb, min(len(p), maxFrameInput))
		}
		chunk := p[:min(len(p), max(maxFrameInput-raw, utf8.UTFMax))]
		n := appendEscaped(&sb, chunk, false)
		if n == 0 {
			// Unreachable (chunk holds at least one decidable character),
			// but a writer that stops making progress would hang the exec.
			n = appendEscaped(&sb, p[:1], true)
		}
		p = p[n:]
		raw += n
		if len(p) > 0 && raw >= maxFrameInput {
			if err := w.flushFrame(&sb, raw); err != nil {
				return 0, err
			}
			raw = 0
		}
	}
	if sb.Len() > 0 {
		if err := w.flushFrame(&sb, raw); err != nil {
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
	var sb strings.Builder
	startFrame(&sb, w.ncarry)
	appendEscaped(&sb, w.carry[:w.ncarry], true)
	n := w.ncarry
	w.ncarry = 0
	return w.flushFrame(&sb, n)
}

// close refuses further writes. It waits for a Write in progress, which
// the caller bounds by cancelling the session (and by write timeouts).
func (w *stdoutWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

func (w *stdoutWriter) flushFrame(sb *strings.Builder, raw int) error {
	sb.WriteString(stdoutSuffix)
	err := w.send(sb.String(), raw)
	// A fresh builder per frame: the string just sent shares its memory, and
	// SockJS may hold on to it until a receiver picks it up.
	*sb = strings.Builder{}
	return err
}

func startFrame(sb *strings.Builder, n int) {
	// Room for typical terminal output: mostly plain text, some escapes.
	sb.Grow(len(stdoutPrefix) + n + n/8 + len(stdoutSuffix) + 16)
	sb.WriteString(stdoutPrefix)
}

// safeASCII marks the bytes a JSON string holds as they are.
var safeASCII = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

const hexDigits = "0123456789abcdef"

const (
	lsbs = 0x0101010101010101
	msbs = 0x8080808080808080
)

// plainWord reports whether all eight bytes of v are ASCII that a JSON
// string holds as is: none is a control character, '"', '\\' or >= 0x80.
// (The zero-byte tests can report false positives only next to a true
// one, and a false "no" just means the slow path.)
func plainWord(v uint64) bool {
	ctl := (v - lsbs*0x20) & ^v & msbs
	q := v ^ (lsbs * '"')
	quote := (q - lsbs) & ^q & msbs
	b := v ^ (lsbs * '\\')
	backslash := (b - lsbs) & ^b & msbs
	return (ctl | quote | backslash | v&msbs) == 0
}

// appendEscaped writes src as the inside of a JSON string and returns how
// many bytes of src it consumed. Unless final, it stops before a character
// that src cuts short, for the caller to complete later.
func appendEscaped(sb *strings.Builder, src []byte, final bool) int {
	start, i := 0, 0
	for i < len(src) {
		c := src[i]
		if c < utf8.RuneSelf {
			if safeASCII[c] {
				i++
				// Plain text comes in runs: skip it a word at a time.
				for i+8 <= len(src) && plainWord(binary.LittleEndian.Uint64(src[i:])) {
					i += 8
				}
				continue
			}
			sb.Write(src[start:i])
			switch c {
			case '"':
				sb.WriteString(`\"`)
			case '\\':
				sb.WriteString(`\\`)
			case '\n':
				sb.WriteString(`\n`)
			case '\r':
				sb.WriteString(`\r`)
			case '\t':
				sb.WriteString(`\t`)
			default:
				sb.WriteString(`\u00`)
				sb.WriteByte(hexDigits[c>>4])
				sb.WriteByte(hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(src[i:])
		if r == utf8.RuneError && size == 1 {
			if !final && !utf8.FullRune(src[i:]) {
				break
			}
			sb.Write(src[start:i])
			sb.WriteString(`\ufffd`)
			i++
			start = i
			continue
		}
		i += size
	}
	sb.Write(src[start:i])
	return i
}
