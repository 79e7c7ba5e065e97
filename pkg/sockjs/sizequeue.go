package sockjs

import (
	"sync"

	"k8s.io/client-go/tools/remotecommand"
)

// sizeQueue hands terminal sizes from the client's reader to the exec
// stream. It keeps only the latest size: a terminal cares where the window
// ended up, not how it got there, and the client's reader must never wait on
// a kubelet that reads sizes slowly (or not yet: a resize sent before the
// stream is up is simply the first size Next returns).
type sizeQueue struct {
	mu      sync.Mutex
	latest  *remotecommand.TerminalSize
	closed  bool
	wake    chan struct{} // capacity 1: a pending "something changed"
	done    chan struct{}
	onFirst func() // called once, when the exec stream first asks for a size
	asked   bool

	// send, once an executor has called PushTo, takes sizes instead of
	// Next; sending is set while a goroutine is at it (see kick).
	send    func(remotecommand.TerminalSize) error
	sending bool
}

var _ remotecommand.TerminalSizeQueue = (*sizeQueue)(nil)

func newSizeQueue(onFirst func()) *sizeQueue {
	return &sizeQueue{wake: make(chan struct{}, 1), done: make(chan struct{}), onFirst: onFirst}
}

// push records a size. It never blocks.
func (q *sizeQueue) push(cols, rows uint16) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.latest = &remotecommand.TerminalSize{Width: cols, Height: rows}
	pushed := q.send != nil
	q.mu.Unlock()
	if pushed {
		q.kick()
		return
	}
	select {
	case q.wake <- struct{}{}:
	default: // a wake-up is already pending; it will see the latest size
	}
}

// Next blocks until a size newer than the last one returned is known, and
// returns nil once the session has ended: client-go's resize goroutine is not
// waited for by Exec, so it must be let go here.
func (q *sizeQueue) Next() *remotecommand.TerminalSize {
	q.mu.Lock()
	first := !q.asked
	q.asked = true
	q.mu.Unlock()
	if first && q.onFirst != nil {
		q.onFirst()
	}
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return nil
		}
		if s := q.latest; s != nil {
			q.latest = nil
			q.mu.Unlock()
			return s
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-q.done:
		}
	}
}

// close makes every pending and future Next return nil. Idempotent.
func (q *sizeQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed = true
		close(q.done)
	}
}
