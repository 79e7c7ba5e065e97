package sockjs

import (
	"io"
	"sync"
)

// stdinLimit bounds keystrokes held for a command that is not reading (or
// not started yet). Past it the client's reader waits, which pushes back on
// the client through SockJS instead of growing memory.
const stdinLimit = 256 << 10

// stdinPipe carries the client's keystrokes to the exec stream. Unlike
// io.Pipe it buffers, so keys typed before the stream is up are kept and the
// client's reader goes on to see resizes and pings meanwhile.
type stdinPipe struct {
	mu      sync.Mutex
	cond    sync.Cond
	buf     []byte
	off     int
	closed  bool
	onFirst func() // called once, when the exec stream first reads
	read    bool

	// sink, once an executor has called PushTo, takes keystrokes instead
	// of buf; sinkMu keeps them in order.
	sink   func([]byte) error
	sinkMu sync.Mutex
}

func newStdinPipe(onFirst func()) *stdinPipe {
	p := &stdinPipe{onFirst: onFirst}
	p.cond.L = &p.mu
	return p
}

// write queues b, waiting while the buffer is full. It fails once closed.
func (p *stdinPipe) write(b []byte) error {
	p.mu.Lock()
	if sink := p.sink; sink != nil && !p.closed {
		p.mu.Unlock()
		p.sinkMu.Lock()
		_ = sink(b) // a failed stream ends the session; drop the keys
		p.sinkMu.Unlock()
		return nil
	}
	defer p.mu.Unlock()
	for len(b) > 0 {
		for !p.closed && len(p.buf)-p.off >= stdinLimit {
			p.cond.Wait()
		}
		if p.closed {
			return io.ErrClosedPipe
		}
		if p.off > 0 && p.off == len(p.buf) {
			p.buf, p.off = p.buf[:0], 0
		}
		n := min(len(b), stdinLimit-(len(p.buf)-p.off))
		p.buf = append(p.buf, b[:n]...)
		b = b[n:]
		p.cond.Broadcast()
	}
	return nil
}

// Read implements io.Reader for the exec stream. After close it returns
// io.EOF at once, dropping what is left: the command is being torn down, and
// client-go's stdin goroutine is not waited for by Exec, so it must not stay
// blocked here.
func (p *stdinPipe) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.read {
		p.read = true
		if p.onFirst != nil {
			p.onFirst()
		}
	}
	for !p.closed && p.off == len(p.buf) {
		p.cond.Wait()
	}
	if p.closed {
		return 0, io.EOF
	}
	n := copy(b, p.buf[p.off:])
	p.off += n
	if p.off == len(p.buf) {
		p.buf, p.off = p.buf[:0], 0
	}
	p.cond.Broadcast()
	return n, nil
}

// WriteTo writes keystrokes to w as they come, until the pipe is closed
// (then it returns nil, as a copy does at EOF). An executor's stdin copy
// uses it (io.Copy does): then no buffer of the executor's waits for
// keystrokes, and bytes are handed over without another copy. Buffered bytes
// are taken out and written without the lock held, so a slow write holds up
// neither the terminal's reader (up to stdinLimit) nor close.
func (p *stdinPipe) WriteTo(w io.Writer) (int64, error) {
	var total int64
	p.mu.Lock()
	if !p.read {
		p.read = true
		if p.onFirst != nil {
			p.onFirst()
		}
	}
	for {
		for !p.closed && p.off == len(p.buf) {
			p.cond.Wait()
		}
		if p.closed {
			p.mu.Unlock()
			return total, nil
		}
		data := p.buf[p.off:]
		p.buf, p.off = nil, 0
		p.cond.Broadcast()
		p.mu.Unlock()
		n, err := w.Write(data)
		total += int64(n)
		if err != nil {
			return total, err
		}
		p.mu.Lock()
		if p.buf == nil && !p.closed {
			p.buf = data[:0] // nothing came meanwhile: keep the array
		}
	}
}

func (p *stdinPipe) close() {
	p.mu.Lock()
	p.closed = true
	p.sink = nil
	p.buf, p.off = nil, 0
	p.mu.Unlock()
	p.cond.Broadcast()
}
