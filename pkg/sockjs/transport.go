package sockjs

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// sendBudget bounds what a session has queued in sockjs-go while no HTTP
// receiver is attached to take it. sockjs-go queues such messages without
// limit; past this much the command's output waits (and with it, through
// the exec stream, the command) until the client polls again.
const sendBudget = 256 << 10

// messageOverhead is what a queued message costs besides its bytes (string
// header, quoting, bookkeeping), so that many tiny messages (pongs) count
// for something.
const messageOverhead = 32

// link is what the HTTP requests of one SockJS session key share with the
// terminal session behind them. Requests come and go (a poll per message
// with xhr polling); the link lives while any of them, or the session, does.
type link struct {
	key  string
	refs int // guarded by Terminal.mu

	mu        sync.Mutex
	written   uint64        // messages written to clients in data frames
	wake      chan struct{} // closed when written moves; nil until someone waits
	receiving int           // receiving requests in progress
	term      *termSession
}

func (l *link) messagesWritten(n int) {
	if n == 0 {
		return
	}
	l.mu.Lock()
	l.written += uint64(n)
	if l.wake != nil {
		close(l.wake)
		l.wake = nil
	}
	l.mu.Unlock()
}

func (l *link) writtenCount() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.written
}

// changedSince returns a channel closed once written is no longer seq.
func (l *link) changedSince(seq uint64) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.written != seq {
		return closedChan
	}
	if l.wake == nil {
		l.wake = make(chan struct{})
	}
	return l.wake
}

func (l *link) receivingDelta(d int) {
	l.mu.Lock()
	l.receiving += d
	l.mu.Unlock()
}

func (l *link) receivingCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.receiving
}

func (l *link) session() *termSession {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term
}

func (l *link) setSession(ts *termSession) {
	l.mu.Lock()
	l.term = ts
	l.mu.Unlock()
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (t *Terminal) acquireLink(key string) *link {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.links[key]
	if l == nil {
		l = &link{key: key}
		t.links[key] = l
	}
	l.refs++
	return l
}

func (t *Terminal) releaseLink(l *link) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l.refs--; l.refs <= 0 && t.links[l.key] == l {
		delete(t.links, l.key)
	}
}

func (t *Terminal) lookupLink(key string) *link {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.links[key]
}

// receiverWriter wraps the response of a receiving HTTP transport request
// (xhr, xhr_streaming, eventsource, htmlfile, jsonp).
//
// It counts the messages in each data frame ("a[...]") sockjs-go writes:
// sockjs-go queues messages while no receiver is attached and gives no sign
// when its queue goes out, so this count is how the session's sender knows
// how much of what it sent is still queued (see sender).
//
// It bounds each write with a deadline: sockjs-go writes while holding the
// session's lock, so a client that stops reading would otherwise stall the
// session, and its end, for good.
//
// And it hides one race of sockjs-go: when a streaming response ends at its
// size limit (or a poll ends), sockjs-go detaches the receiver in a goroutine
// of its own, so a client that reconnects at once can find it still attached
// and gets c[2010,"Another connection still open"], which sockjs-client
// takes as the end of the session. If no other receiving request is in
// progress, that close frame can only be this race; it is dropped, the
// response ends empty, and the client polls again.
type receiverWriter struct {
	http.ResponseWriter
	rc        *http.ResponseController
	link      *link
	transport string
	timeout   time.Duration
	abort     context.CancelFunc // interrupts the request, which closes the SockJS session
	swallowed bool
}

func (w *receiverWriter) Write(p []byte) (int, error) {
	body := frameBody(w.transport, p)
	if bytes.HasPrefix(body, []byte(`c[2010,`)) && w.link.receivingCount() <= 1 {
		w.swallowed = true
		return len(p), nil
	}
	w.setDeadline()
	n, err := w.ResponseWriter.Write(p)
	w.clearDeadline()
	if err != nil {
		w.abort()
		return n, err
	}
	if bytes.HasPrefix(body, []byte("a[")) {
		w.link.messagesWritten(countMessages(body))
	}
	return n, nil
}

// Flush is required: sockjs-go asserts http.Flusher on every receiving
// transport, and panics without it.
func (w *receiverWriter) Flush() {
	w.setDeadline()
	err := w.rc.Flush()
	w.clearDeadline()
	if err != nil {
		w.abort()
	}
}

func (w *receiverWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *receiverWriter) setDeadline() {
	if w.timeout > 0 {
		// Not every ResponseWriter supports deadlines; then only TCP
		// keep-alive and the idle timeout end a stuck client.
		_ = w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	}
}

func (w *receiverWriter) clearDeadline() {
	if w.timeout > 0 {
		_ = w.rc.SetWriteDeadline(time.Time{})
	}
}

// frameBody returns the SockJS frame in one write of the given transport's
// framing (each of sockjs-go's frame writers writes a frame in one call),
// or nil for other writes (preludes, errors).
func frameBody(transport string, p []byte) []byte {
	switch transport {
	case "xhr", "xhr_streaming":
		return bytes.TrimSuffix(p, []byte("\n"))
	case "eventsource":
		// The event-stream escaping touches none of '"', '\\', ',', '['.
		if b, ok := bytes.CutPrefix(p, []byte("data: ")); ok {
			return bytes.TrimSuffix(b, []byte("\r\n\r\n"))
		}
	case "htmlfile":
		if b, ok := bytes.CutPrefix(p, []byte("<script>\np(")); ok {
			return unquoteFrame(bytes.TrimSuffix(b, []byte(");\n</script>\r\n")))
		}
	case "jsonp":
		// callback("...");  with a callback of [a-zA-Z0-9_.]
		if i := bytes.IndexByte(p, '('); i > 0 {
			return unquoteFrame(bytes.TrimSuffix(p[i+1:], []byte(");\r\n")))
		}
	}
	return nil
}

func unquoteFrame(q []byte) []byte {
	var s string
	if len(q) == 0 || q[0] != '"' || json.Unmarshal(q, &s) != nil {
		return nil
	}
	return []byte(s)
}

// countMessages counts the JSON strings in a data frame, a["...","..."].
func countMessages(frame []byte) int {
	n := 0
	in := false
	for i := 0; i < len(frame); i++ {
		switch c := frame[i]; {
		case !in && c == '"':
			in = true
			n++
		case in && c == '\\':
			i++
		case in && c == '"':
			in = false
		}
	}
	return n
}

// sender hands a session's messages to sockjs-go.
//
// Over WebSocket, sockjs-go writes every message through to the socket while
// the caller waits, so a slow client slows the command down by itself. Over
// the HTTP transports it queues messages while no request is attached; the
// sender keeps the sizes of what it sent, oldest first, drops them as the
// link sees them written, and past sendBudget holds further stdout until
// the client takes some.
type sender struct {
	sess sockSession
	link *link // nil for WebSocket

	mu     sync.Mutex
	queue  []int  // costs of messages sent and not yet seen written, oldest first
	queued int    // their sum
	acked  uint64 // link.written already taken into account
}

func newSender(sess sockSession, l *link) *sender {
	s := &sender{sess: sess, link: l}
	if l != nil {
		s.acked = l.writtenCount()
	}
	return s
}

// send delivers msg, first waiting for room in the budget for as long as
// ctx allows. Pongs wait too: a client that pings without ever polling
// would otherwise grow sockjs-go's queue; this way its reader, and so its
// xhr_send requests, wait instead.
func (s *sender) send(ctx context.Context, msg string) error {
	if s.link != nil {
		if err := s.waitUntil(ctx, sendBudget); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.sess.Send(msg)
	if s.link != nil {
		if err == nil {
			cost := len(msg) + messageOverhead
			s.queue = append(s.queue, cost)
			s.queued += cost
		}
		s.syncLocked()
	}
	return err
}

// awaitDelivery waits until nothing sent is still queued in sockjs-go, so
// that closing the session (which drops sockjs-go's queue for a receiver
// that attaches later) does not lose the last output, the exit code or the
// toast.
func (s *sender) awaitDelivery(ctx context.Context) {
	if s.link != nil {
		_ = s.waitUntil(ctx, 1)
	}
}

// waitUntil waits until fewer than limit bytes are queued.
func (s *sender) waitUntil(ctx context.Context, limit int) error {
	for {
		s.mu.Lock()
		changed := s.syncLocked()
		full := s.queued >= limit
		s.mu.Unlock()
		if !full {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// syncLocked drops the messages the link has seen written since last time
// and returns a channel that is closed when more are.
func (s *sender) syncLocked() <-chan struct{} {
	w := s.link.writtenCount()
	for ; s.acked < w && len(s.queue) > 0; s.acked++ {
		s.queued -= s.queue[0]
		s.queue = s.queue[1:]
	}
	// More written than queued: messages sockjs-go wrote twice after a
	// failed write. They are not ours to count again.
	s.acked = w
	if len(s.queue) == 0 {
		s.queue = s.queue[:0:0]
	}
	return s.link.changedSince(w)
}
