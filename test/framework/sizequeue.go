package framework

import (
	"k8s.io/client-go/tools/remotecommand"
)

// SizeQueue is a TerminalSizeQueue a test pushes sizes into. Close it when
// the exec ends so that client-go's resize goroutine returns.
type SizeQueue struct {
	ch chan remotecommand.TerminalSize
}

// NewSizeQueue returns a queue whose first size is initial.
func NewSizeQueue(rows, cols uint16) *SizeQueue {
	q := &SizeQueue{ch: make(chan remotecommand.TerminalSize, 16)}
	q.ch <- remotecommand.TerminalSize{Height: rows, Width: cols}
	return q
}

// Resize queues a new size.
func (q *SizeQueue) Resize(rows, cols uint16) {
	q.ch <- remotecommand.TerminalSize{Height: rows, Width: cols}
}

// Close ends the queue.
func (q *SizeQueue) Close() { close(q.ch) }

// Next implements remotecommand.TerminalSizeQueue.
func (q *SizeQueue) Next() *remotecommand.TerminalSize {
	s, ok := <-q.ch
	if !ok {
		return nil
	}
	return &s
}
