package sockjs

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"
)

// errMessageRefused ends a WebSocket whose client sent a message over the
// limit, or a text message that is not UTF-8. sockjs-go gives no access to
// the gorilla connection and so to SetReadLimit, and reads every message
// whole into memory; the guard below stops an oversized one while it
// streams in. Neither gorilla nor sockjs-go checks that text messages are
// UTF-8 (RFC 6455 requires it), and sockjs-go's JSON decoding turns bad
// bytes into U+FFFD, which the command would then get as typed input; the
// guard stops those too.
var errMessageRefused = errors.New("websocket message refused")

// tripWait bounds how long the reader of a refused message waits for the
// session to tell its client why, before the connection is dropped anyway.
const tripWait = 5 * time.Second

// wsGuard connects the reading side of one WebSocket with its terminal
// session, which starts a little later (sockjs-go starts it after the
// upgrade).
type wsGuard struct {
	limit uint64

	once   sync.Once
	ready  chan struct{}
	onTrip func(why string) // set before ready is closed; tells the client and closes
}

func newWSGuard(limit int) *wsGuard {
	return &wsGuard{limit: uint64(limit), ready: make(chan struct{})}
}

// setHandler registers the session's reaction to a refused message (too
// large, or not UTF-8).
func (g *wsGuard) setHandler(f func(why string)) {
	g.once.Do(func() {
		g.onTrip = f
		close(g.ready)
	})
}

func (g *wsGuard) trip(why string) {
	timer := time.NewTimer(tripWait)
	defer timer.Stop()
	select {
	case <-g.ready:
		g.onTrip(why)
	case <-timer.C:
	}
}

// hijackWriter hands gorilla/websocket a connection whose reads pass through
// the guard.
type hijackWriter struct {
	http.ResponseWriter
	guard *wsGuard
}

func (w *hijackWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	// Bytes the server already buffered are read through the guard too:
	// the guarded connection reads from the server's reader, and gorilla
	// gets a fresh reader on top.
	gc := &guardedConn{Conn: conn, src: brw.Reader, guard: w.guard, scan: wsScanner{limit: w.guard.limit}}
	return gc, bufio.NewReadWriter(bufio.NewReaderSize(gc, 4096), brw.Writer), nil
}

// guardedConn is read by one goroutine only (gorilla allows one reader).
type guardedConn struct {
	net.Conn
	src     *bufio.Reader
	guard   *wsGuard
	scan    wsScanner
	tripped bool
}

func (c *guardedConn) Read(p []byte) (int, error) {
	if c.tripped {
		return 0, errMessageRefused
	}
	n, err := c.src.Read(p)
	if n > 0 && c.scan.feed(p[:n]) {
		c.tripped = true
		c.guard.trip(c.scan.violation())
		return 0, errMessageRefused
	}
	return n, err
}

// wsScanner follows the frame headers of a client-to-server WebSocket stream
// (RFC 6455 section 5.2) to add up the payload of each data message, and
// checks that text messages are UTF-8, without buffering payloads.
// Compression is not negotiated, so payload length is message length.
type wsScanner struct {
	limit uint64
	hdr   [14]byte
	nhdr  int
	need  int    // header bytes wanted; 0 between frames
	left  uint64 // payload bytes of the current frame still to pass
	msg   uint64 // payload bytes of the data message in progress

	mask    [4]byte
	masked  bool
	pos     uint64 // payload bytes of the current frame passed
	fin     bool   // the current frame ends its message
	check   bool   // the current frame's payload is text to check
	inText  bool   // the data message in progress is a text message
	text    utf8Stream
	badText bool // feed refused invalid text (rather than a size)
}

// violation says why feed returned true.
func (s *wsScanner) violation() string {
	if s.badText {
		return "a message is not valid UTF-8"
	}
	return fmt.Sprintf("a message exceeds the limit of %d bytes", s.limit)
}

// feed consumes b and reports whether a data message went over the limit
// or a text message is not UTF-8.
func (s *wsScanner) feed(b []byte) bool {
	for len(b) > 0 {
		if s.left > 0 {
			k := min(uint64(len(b)), s.left)
			if s.check && !s.checkText(b[:k]) {
				s.badText = true
				return true
			}
			s.left -= k
			b = b[k:]
			if s.left == 0 && !s.frameDone() {
				return true
			}
			continue
		}
		if s.need == 0 {
			s.need = 2
		}
		k := copy(s.hdr[s.nhdr:s.need], b)
		s.nhdr += k
		b = b[k:]
		if s.nhdr < s.need {
			return false
		}
		if s.need == 2 {
			n := 2
			switch s.hdr[1] & 0x7f {
			case 126:
				n += 2
			case 127:
				n += 8
			}
			if s.hdr[1]&0x80 != 0 {
				n += 4 // masking key
			}
			if n > 2 {
				s.need = n
				continue
			}
		}
		var length uint64
		switch l := s.hdr[1] & 0x7f; l {
		case 126:
			length = uint64(binary.BigEndian.Uint16(s.hdr[2:4]))
		case 127:
			length = binary.BigEndian.Uint64(s.hdr[2:10])
		default:
			length = uint64(l)
		}
		s.masked = s.hdr[1]&0x80 != 0
		if s.masked {
			copy(s.mask[:], s.hdr[s.need-4:s.need])
		}
		s.check = false
		if opcode := s.hdr[0] & 0x0f; opcode < 8 { // control frames are not part of a message
			if opcode != 0 { // not a continuation: a new message starts
				s.msg = 0
				s.inText = opcode == 1
				s.text = utf8Stream{}
			}
			if length > s.limit || s.msg+length > s.limit {
				return true
			}
			s.msg += length
			s.check, s.fin = s.inText, s.hdr[0]&0x80 != 0
		}
		s.left, s.nhdr, s.need, s.pos = length, 0, 0, 0
		if length == 0 && !s.frameDone() {
			return true
		}
	}
	return false
}

// frameDone ends a frame: a text message must not end within a character.
func (s *wsScanner) frameDone() bool {
	if s.check && s.fin && !s.text.end() {
		s.badText = true
		return false
	}
	return true
}

// checkText unmasks and checks payload bytes of a text message.
func (s *wsScanner) checkText(p []byte) bool {
	var buf [512]byte
	for len(p) > 0 {
		n := min(len(p), len(buf))
		for i, c := range p[:n] {
			if s.masked {
				c ^= s.mask[(s.pos+uint64(i))&3]
			}
			buf[i] = c
		}
		if !s.text.feed(buf[:n]) {
			return false
		}
		s.pos += uint64(n)
		p = p[n:]
	}
	return true
}

// utf8Stream checks that a byte stream fed in pieces is UTF-8.
type utf8Stream struct {
	carry [utf8.UTFMax]byte
	n     int // bytes of an incomplete character carried from the last piece
}

func (u *utf8Stream) feed(p []byte) bool {
	// Complete a carried character a byte at a time.
	for u.n > 0 && len(p) > 0 {
		u.carry[u.n] = p[0]
		u.n++
		p = p[1:]
		if utf8.FullRune(u.carry[:u.n]) {
			if r, size := utf8.DecodeRune(u.carry[:u.n]); r == utf8.RuneError && size == 1 {
				return false
			}
			u.n = 0
		}
	}
	for i := 0; i < len(p); {
		if p[i] < utf8.RuneSelf {
			i++
			continue
		}
		if !utf8.FullRune(p[i:]) { // only at the end: a character cut short
			u.n = copy(u.carry[:], p[i:])
			return true
		}
		r, size := utf8.DecodeRune(p[i:])
		if r == utf8.RuneError && size == 1 {
			return false
		}
		i += size
	}
	return true
}

// end reports whether the stream did not stop within a character.
func (u *utf8Stream) end() bool { return u.n == 0 }
