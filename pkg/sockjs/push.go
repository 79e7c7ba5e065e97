package sockjs

import (
	"io"

	"k8s.io/client-go/tools/remotecommand"
)

// StdinPusher is implemented by Streams.Stdin. An executor that can send
// keystrokes from any goroutine (a write to its connection) may call
// PushTo rather than read: what is buffered is sent at once, and each later
// keystroke is sent by the terminal's reader as it comes. No goroutine then
// waits for keystrokes, and none is handed them on the way (one hand-off
// less per keystroke). A slow send pushes back on the client, as a full
// buffer does.
type StdinPusher interface {
	io.Reader
	// PushTo sends what is buffered, then makes send the destination of
	// every later keystroke. It returns send's error for the buffered
	// bytes; keystrokes whose send fails are dropped (the exec stream has
	// failed, which ends the session).
	PushTo(send func(p []byte) error) error
}

// ResizePusher is implemented by Streams.Resize. PushTo makes send the
// destination of the pending size (if any) and of each later one. Sizes are
// sent from a goroutine that runs only while there is one to send: the
// client's reader never waits on the stream for a resize.
type ResizePusher interface {
	remotecommand.TerminalSizeQueue
	PushTo(send func(remotecommand.TerminalSize) error)
}

var (
	_ StdinPusher  = (*stdinPipe)(nil)
	_ ResizePusher = (*sizeQueue)(nil)
)

// PushTo implements StdinPusher.
func (p *stdinPipe) PushTo(send func([]byte) error) error {
	p.sinkMu.Lock()
	defer p.sinkMu.Unlock()
	p.mu.Lock()
	if !p.read {
		p.read = true
		if p.onFirst != nil {
			p.onFirst()
		}
	}
	if p.closed {
		p.mu.Unlock()
		return io.ErrClosedPipe
	}
	data := p.buf[p.off:]
	p.buf, p.off = nil, 0
	p.sink = send
	p.cond.Broadcast()
	p.mu.Unlock()
	// Keystrokes typed meanwhile wait for sinkMu, so they go after these.
	if len(data) > 0 {
		return send(data)
	}
	return nil
}

// PushTo implements ResizePusher.
func (q *sizeQueue) PushTo(send func(remotecommand.TerminalSize) error) {
	q.mu.Lock()
	first := !q.asked
	q.asked = true
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.send = send
	q.mu.Unlock()
	if first && q.onFirst != nil {
		q.onFirst()
	}
	q.kick()
}

// kick starts a sender unless one is running or nothing is pending.
func (q *sizeQueue) kick() {
	q.mu.Lock()
	if q.sending || q.send == nil || q.closed || q.latest == nil {
		q.mu.Unlock()
		return
	}
	q.sending = true
	q.mu.Unlock()
	go func() {
		for {
			q.mu.Lock()
			s, send := q.latest, q.send
			q.latest = nil
			if s == nil || q.closed {
				q.sending = false
				q.mu.Unlock()
				return
			}
			q.mu.Unlock()
			if send(*s) != nil {
				q.mu.Lock()
				q.send, q.sending = nil, false
				q.mu.Unlock()
				return
			}
		}
	}()
}
