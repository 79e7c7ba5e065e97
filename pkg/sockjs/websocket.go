package sockjs

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	sockjsgo "github.com/igm/sockjs-go/v3/sockjs"
)

// sockSession is what a terminal needs of a SockJS session: sockjs-go's
// (the HTTP transports) or this package's own WebSocket session.
type sockSession interface {
	ID() string
	Request() *http.Request
	// Context ends when the session closes or its client goes away.
	Context() context.Context
	// RecvCtx returns the client's next message.
	RecvCtx(ctx context.Context) (string, error)
	// Send sends one message.
	Send(msg string) error
	// Close sends a close frame and ends the session.
	Close(status uint32, reason string) error
}

var _ sockSession = sockjsgo.Session{}

// wsWriteBufferSize fits a stdout frame of maxFrameInput bytes of plain
// text, the SockJS framing and the WebSocket header.
const wsWriteBufferSize = len(wireStdoutPrefix) + maxFrameInput + maxFrameInput/8 + len(wireStdoutSuffix) + 16

// wsSession serves the SockJS WebSocket transport of one terminal itself,
// rather than through sockjs-go. The wire protocol is the same (frames "o",
// "h", "a[...]" and "c[code,reason]"; the client sends JSON arrays of
// strings), but sockjs-go spends most of a terminal's CPU on its way out:
// every message is json.Marshal'ed again (the terminal's JSON escaped a
// second time), then formatted and copied twice more, a handful of
// allocations the size of the output for each frame, and as much again in
// garbage collection. Here stdout frames are built once, in the wire format,
// into a pooled buffer (see stdoutWriter), and written straight to the
// connection.
//
// It also takes fewer goroutines and hand-offs: sockjs-go reads the
// connection in a goroutine of its own and hands each message over to the
// terminal's reader (and keeps another goroutine per session to watch its
// receiver); here the terminal's reader reads the connection itself
// (RecvCtx), and the request's goroutine runs the terminal.
type wsSession struct {
	id           string
	req          *http.Request
	conn         *websocket.Conn
	writeTimeout time.Duration

	ctx    context.Context // ends when the session closes or the client goes
	cancel context.CancelFunc

	pending []string // messages of the last client frame not returned yet (reader only)

	wmu       sync.Mutex // serializes writes, guards below
	closing   bool       // a close frame was sent, or the connection failed
	heartbeat *time.Timer
	hbDelay   time.Duration
}

func newWSSession(conn *websocket.Conn, r *http.Request, id string, opts Options) *wsSession {
	ctx, cancel := context.WithCancel(context.Background())
	return &wsSession{
		id: id, req: r, conn: conn, writeTimeout: opts.WriteTimeout,
		ctx: ctx, cancel: cancel, hbDelay: opts.HeartbeatDelay,
	}
}

// serveWebSocket runs one terminal over a WebSocket, in the request's
// goroutine, until it has ended.
func (t *Terminal) serveWebSocket(w http.ResponseWriter, r *http.Request, key string) {
	conn, err := t.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade has answered the request
	}
	s := newWSSession(conn, r, key, t.opts)
	defer s.shutdown()
	if err := s.writeFrame([]byte("o")); err != nil {
		return
	}
	s.scheduleHeartbeat()
	t.serveSockSession(s)
}

// shutdown ends the session without a close frame (the client went away,
// or the session has closed already) and releases the connection.
func (s *wsSession) shutdown() {
	s.wmu.Lock()
	s.closing = true
	if s.heartbeat != nil {
		s.heartbeat.Stop()
	}
	s.wmu.Unlock()
	s.cancel()
	_ = s.conn.Close()
}

func (s *wsSession) ID() string               { return s.id }
func (s *wsSession) Request() *http.Request   { return s.req }
func (s *wsSession) Context() context.Context { return s.ctx }

// RecvCtx reads the client's next message from the connection. Only the
// terminal's reader calls it. ctx ending interrupts a read in progress.
// Anything but a JSON array of strings ends the session, as with sockjs-go.
func (s *wsSession) RecvCtx(ctx context.Context) (string, error) {
	for len(s.pending) == 0 {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		stop := context.AfterFunc(ctx, func() { _ = s.conn.SetReadDeadline(time.Unix(1, 0)) })
		_, data, err := s.conn.ReadMessage()
		stop()
		if err == nil {
			err = json.Unmarshal(data, &s.pending)
		}
		if err != nil {
			s.pending = nil
			if ctx.Err() != nil {
				// Interrupted: the terminal is ending and will still
				// write its last frames.
				return "", ctx.Err()
			}
			// The client went away or broke the protocol.
			s.shutdown()
			return "", err
		}
	}
	m := s.pending[0]
	s.pending = s.pending[1:]
	return m, nil
}

// Send sends one message in a data frame of its own.
func (s *wsSession) Send(msg string) error {
	q, _ := json.Marshal(msg)
	frame := make([]byte, 0, len(q)+3)
	frame = append(append(append(frame, "a["...), q...), ']')
	return s.writeFrame(frame)
}

// Close sends the close frame, then closes the connection (as sockjs-go
// does: no WebSocket close handshake).
func (s *wsSession) Close(status uint32, reason string) error {
	r, _ := json.Marshal(reason)
	frame := append(strconv.AppendUint([]byte("c["), uint64(status), 10), ',')
	frame = append(append(frame, r...), ']')
	s.wmu.Lock()
	if s.closing {
		s.wmu.Unlock()
		return sockjsgo.ErrSessionNotOpen
	}
	_ = s.writeLocked(frame)
	s.closing = true
	s.wmu.Unlock()
	s.shutdown()
	return nil
}

// writeFrame writes one SockJS frame, bounded by the write timeout. A
// failed write closes the connection, which ends the session.
func (s *wsSession) writeFrame(frame []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closing {
		return sockjsgo.ErrSessionNotOpen
	}
	return s.writeLocked(frame)
}

func (s *wsSession) writeLocked(frame []byte) error {
	if s.writeTimeout > 0 {
		if err := s.conn.SetWriteDeadline(time.Now().Add(s.writeTimeout)); err != nil {
			s.failLocked()
			return err
		}
	}
	if err := s.conn.WriteMessage(websocket.TextMessage, frame); err != nil {
		s.failLocked()
		return err
	}
	return nil
}

func (s *wsSession) failLocked() {
	s.closing = true
	s.cancel()
	_ = s.conn.Close()
}

func (s *wsSession) scheduleHeartbeat() {
	if s.hbDelay <= 0 {
		return
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closing {
		return
	}
	s.heartbeat = time.AfterFunc(s.hbDelay, func() {
		if s.writeFrame([]byte("h")) == nil {
			s.scheduleHeartbeat()
		}
	})
}
