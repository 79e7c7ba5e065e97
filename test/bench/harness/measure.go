package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Commands. Every one ends by itself or on a keystroke, so that no
// process outlives its measurement on kwok (which keeps the processes of
// sessions whose client went away), and none prints right before it exits
// what the measurement waits for (kwok loses such output now and then with
// a TTY).
const (
	// lineLen is the length of the bulk output's lines, newline included:
	// terminal output comes in lines, and a TTY turns each \n into \r\n.
	lineLen = 80
	// echoScript: raw mode, no echo, then copy each keystroke back as it
	// comes, as `exec cat` would, but ending after the run's last keystroke
	// (dd bs=1 reads and writes one byte at a time; GNU head -c would wait
	// to fill its buffer).
	echoScript = "stty raw -echo; echo READY; exec dd bs=1 count=%d status=none"
	// setupScript prints a byte at once, then waits for EOF (^D).
	setupScript = "printf R; exec cat"
	eof         = "\x04"
)

func bulkScript(n int64, tty bool) string {
	gen := fmt.Sprintf("yes %s | head -c %d", strings.Repeat("a", lineLen-1), n)
	if tty {
		// The output is counted, so no echo; cat keeps the process (and
		// its output) alive until the client has all of it and types ^D.
		return "stty -echo; " + gen + "; exec cat"
	}
	return gen
}

// BulkResult is one bulk transfer.
type BulkResult struct {
	// MiBps is the command's output (n bytes, before any TTY
	// translation) over the time from its first to its last byte.
	MiBps float64
	// CPU is the CPU seconds each process spent on the whole run.
	CPU map[string]float64
	// Syscalls are the read and write system calls of the relaying
	// processes (console-apiserver, rawhop, kube-apiserver) on the run.
	Syscalls map[string]float64
	Elapsed  time.Duration
}

// Bulk has the command write n bytes of lines and counts them as they come.
func (e *Env) Bulk(ctx context.Context, v Variant, tty bool, n int64) (BulkResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	newlines := n / lineLen
	want := n
	if tty {
		want += newlines // \n becomes \r\n
	}
	var (
		mu            sync.Mutex
		total, nl     int64
		first, last   time.Time
		complete      = make(chan struct{})
		completedOnce sync.Once
	)
	sink := func(p []byte) {
		now := time.Now()
		mu.Lock()
		if total == 0 {
			first = now
		}
		total += int64(len(p))
		nl += int64(bytes.Count(p, []byte{'\n'}))
		if total >= want {
			last = now
			completedOnce.Do(func() { close(complete) })
		}
		mu.Unlock()
	}
	pids := e.PIDs()
	before := SnapshotCPU(pids)
	busyBefore := ReadSystemBusy()
	relay := map[string]int{"console-apiserver": e.Console.PID(), "rawhop": e.Rawhop.PID(), "kube-apiserver": pids["kube-apiserver"]}
	callsBefore := map[string]float64{}
	for name, pid := range relay {
		callsBefore[name], _ = ReadSyscalls(pid)
	}
	s, err := e.Open(ctx, v, OpenOptions{Script: bulkScript(n, tty), TTY: tty, Sink: sink})
	if err != nil {
		return BulkResult{}, err
	}
	defer s.Close()
	select {
	case <-complete:
	case <-s.Done():
		// The end may race the last output; give the reader a moment.
		select {
		case <-complete:
		case <-time.After(2 * time.Second):
		}
	case <-ctx.Done():
	}
	mu.Lock()
	got, gotNL, elapsed := total, nl, last.Sub(first)
	mu.Unlock()
	if got < want {
		err := ctx.Err()
		select {
		case <-s.Done():
			err = s.Err()
		default:
		}
		return BulkResult{}, fmt.Errorf("%s bulk (tty=%v): got %d of %d bytes: %v", v, tty, got, want, err)
	}
	if tty {
		_ = s.Write([]byte(eof))
	}
	select {
	case <-s.Done():
	case <-time.After(30 * time.Second):
		return BulkResult{}, fmt.Errorf("%s bulk (tty=%v): session did not end", v, tty)
	}
	if err := s.Err(); err != nil {
		return BulkResult{}, fmt.Errorf("%s bulk (tty=%v): %w", v, tty, err)
	}
	after := SnapshotCPU(pids)
	busy := ReadSystemBusy() - busyBefore
	cpu := after.Since(before)
	ours := 0.0
	for _, c := range cpu {
		ours += c
	}
	// What else ran on the machine meanwhile (other test runs share it).
	cpu["other"] = max(0, busy-ours)
	syscalls := map[string]float64{}
	for name, pid := range relay {
		n, _ := ReadSyscalls(pid)
		syscalls[name] = n - callsBefore[name]
	}
	mu.Lock()
	got, gotNL = total, nl
	mu.Unlock()
	if got != want || gotNL != newlines {
		return BulkResult{}, fmt.Errorf("%s bulk (tty=%v): got %d bytes and %d newlines, want %d and %d", v, tty, got, gotNL, want, newlines)
	}
	return BulkResult{
		MiBps:    float64(n) / (1 << 20) / elapsed.Seconds(),
		CPU:      cpu,
		Syscalls: syscalls,
		Elapsed:  elapsed,
	}, nil
}

// echoer is a session in raw mode that echoes keystrokes.
type echoer struct {
	s     Session
	ready chan struct{}
	got   chan byte

	mu       sync.Mutex
	preamble []byte
	isReady  bool
}

func newEchoer() *echoer {
	return &echoer{ready: make(chan struct{}), got: make(chan byte, 64)}
}

func (x *echoer) sink(p []byte) {
	x.mu.Lock()
	if !x.isReady {
		x.preamble = append(x.preamble, p...)
		i := bytes.Index(x.preamble, []byte("READY\n"))
		if i < 0 {
			x.mu.Unlock()
			return
		}
		x.isReady = true
		p = x.preamble[i+len("READY\n"):]
		close(x.ready)
	}
	x.mu.Unlock()
	for _, c := range p {
		select {
		case x.got <- c:
		default: // a byte nobody waits for
		}
	}
}

// openEchoer opens a session that echoes up to keys keystrokes and waits
// (up to a minute) until it is ready. ctx bounds the session's life.
func (e *Env) openEchoer(ctx context.Context, v Variant, keys int, fresh bool) (*echoer, error) {
	x := newEchoer()
	s, err := e.Open(ctx, v, OpenOptions{Script: fmt.Sprintf(echoScript, keys), TTY: true, Sink: x.sink, Fresh: fresh})
	if err != nil {
		return nil, err
	}
	x.s = s
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	select {
	case <-x.ready:
		return x, nil
	case <-s.Done():
		return nil, fmt.Errorf("%s: session ended before it was ready: %v", v, s.Err())
	case <-t.C:
		s.Close()
		return nil, fmt.Errorf("%s: the shell was not ready within a minute", v)
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("%s: waiting for the shell: %w", v, ctx.Err())
	}
}

var errEchoTimeout = errors.New("no echo within 10s")

// key types one byte and waits for it to come back.
func (x *echoer) key(c byte) (time.Duration, error) {
	start := time.Now()
	if err := x.s.Write([]byte{c}); err != nil {
		return 0, err
	}
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case got := <-x.got:
		d := time.Since(start)
		if got != c {
			return d, fmt.Errorf("echo %q, want %q", got, c)
		}
		return d, nil
	case <-x.s.Done():
		return 0, fmt.Errorf("session ended: %v", x.s.Err())
	case <-t.C:
		return 0, errEchoTimeout
	}
}

// finish types the last keystroke the command waits for (not waiting for
// its echo, which kwok may lose as the command exits) and waits for the end.
func (x *echoer) finish() {
	_ = x.s.Write([]byte{'.'})
	select {
	case <-x.s.Done():
	case <-time.After(10 * time.Second):
		x.s.Close()
	}
}

const echoWarmup = 20

// Echo measures samples keystroke round trips, one at a time, after a
// short warm-up.
func (e *Env) Echo(ctx context.Context, v Variant, samples int) ([]time.Duration, error) {
	x, err := e.openEchoer(ctx, v, echoWarmup+samples+1, false)
	if err != nil {
		return nil, err
	}
	defer x.finish()
	out := make([]time.Duration, 0, samples)
	for i := 0; i < echoWarmup+samples; i++ {
		d, err := x.key(byte('a' + i%26))
		if err != nil {
			return nil, fmt.Errorf("%s echo %d: %w", v, i, err)
		}
		if i >= echoWarmup {
			out = append(out, d)
		}
	}
	return out, nil
}

// SetupPhases splits a console setup: the create request, the WebSocket's
// opening, and from the bind to the first byte.
type SetupPhases struct{ Create, Dial, Bind time.Duration }

// Setup measures one shell from nothing to its first output byte over new
// connections: for D and H the exec's own; for C the create request, the
// WebSocket and the bind.
func (e *Env) Setup(ctx context.Context, v Variant) (time.Duration, error) {
	d, _, err := e.SetupPhased(ctx, v, false)
	return d, err
}

// SetupPhased is Setup, with C's phases; warmCreate sends C's create
// request on a kept-alive connection (as a browser that loaded the page
// would) rather than a new one.
func (e *Env) SetupPhased(ctx context.Context, v Variant, warmCreate bool) (time.Duration, SetupPhases, error) {
	var ph SetupPhases
	first := make(chan struct{})
	var once sync.Once
	sink := func([]byte) { once.Do(func() { close(first) }) }
	start := time.Now()
	s, err := e.Open(ctx, v, OpenOptions{Script: setupScript, TTY: true, Sink: sink, Fresh: !warmCreate})
	if err != nil {
		return 0, ph, err
	}
	defer s.Close()
	select {
	case <-first:
	case <-s.Done():
		return 0, ph, fmt.Errorf("%s setup: ended before any output: %v", v, s.Err())
	case <-time.After(30 * time.Second):
		return 0, ph, fmt.Errorf("%s setup: no output within 30s", v)
	}
	d := time.Since(start)
	if cs, ok := s.(*consoleSession); ok {
		ph = SetupPhases{Create: cs.created, Dial: cs.dialed, Bind: d - cs.created - cs.dialed}
	}
	_ = s.Write([]byte(eof))
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		return d, ph, fmt.Errorf("%s setup: the shell did not end on ^D", v)
	}
	return d, ph, nil
}
