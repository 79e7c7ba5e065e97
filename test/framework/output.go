package framework

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
)

// Output collects what a process writes and lets a test wait for text in it.
type Output struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

// NewOutput returns an empty Output.
func NewOutput() *Output { return &Output{changed: make(chan struct{})} }

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

// String is everything written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// WaitFor blocks until the output contains want, or ctx ends.
func (o *Output) WaitFor(ctx context.Context, want string) error {
	for {
		o.mu.Lock()
		has := strings.Contains(o.buf.String(), want)
		ch := o.changed
		o.mu.Unlock()
		if has {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %q in output: %w; got %q", want, ctx.Err(), tail(o.String(), 400))
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
