package sockjs

import (
	"bufio"
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
)

// errMessageTooLarge ends a WebSocket whose client sent a message over the
// limit. sockjs-go gives no access to the gorilla connection and so to
// SetReadLimit, and reads every message whole into memory; the guard below
// stops an oversized one while it streams in.
var errMessageTooLarge = errors.New("websocket message exceeds the size limit")

// tripWait bounds how long the reader of an oversized message waits for the
// session to tell its client why, before the connection is dropped anyway.
const tripWait = 5 * time.Second

// wsGuard connects the reading side of one WebSocket with its terminal
// session, which starts a little later (sockjs-go starts it after the
// upgrade).
type wsGuard struct {
	limit uint64

	once   sync.Once
	ready  chan struct{}
	onTrip func() // set before ready is closed; tells the client and closes
}

func newWSGuard(limit int) *wsGuard {
	return &wsGuard{limit: uint64(limit), ready: make(chan struct{})}
}

// setHandler registers the session's reaction to an oversized message.
func (g *wsGuard) setHandler(f func()) {
	g.once.Do(func() {
		g.onTrip = f
		close(g.ready)
	})
}

func (g *wsGuard) trip() {
	timer := time.NewTimer(tripWait)
	defer timer.Stop()
	select {
	case <-g.ready:
		g.onTrip()
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
		return 0, errMessageTooLarge
	}
	n, err := c.src.Read(p)
	if n > 0 && c.scan.feed(p[:n]) {
		c.tripped = true
		c.guard.trip()
		return 0, errMessageTooLarge
	}
	return n, err
}

// wsScanner follows the frame headers of a client-to-server WebSocket stream
// (RFC 6455 section 5.2) to add up the payload of each data message, without
// buffering payloads. Compression is not negotiated, so payload length is
// message length.
type wsScanner struct {
	limit uint64
	hdr   [14]byte
	nhdr  int
	need  int    // header bytes wanted; 0 between frames
	left  uint64 // payload bytes of the current frame still to pass
	msg   uint64 // payload bytes of the data message in progress
}

// feed consumes b and reports whether a data message went over the limit.
func (s *wsScanner) feed(b []byte) bool {
	for len(b) > 0 {
		if s.left > 0 {
			k := min(uint64(len(b)), s.left)
			s.left -= k
			b = b[k:]
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
		if opcode := s.hdr[0] & 0x0f; opcode < 8 { // control frames are not part of a message
			if opcode != 0 { // not a continuation: a new message starts
				s.msg = 0
			}
			if length > s.limit || s.msg+length > s.limit {
				return true
			}
			s.msg += length
		}
		s.left, s.nhdr, s.need = length, 0, 0
	}
	return false
}
