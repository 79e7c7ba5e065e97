package sockjs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	sockjsgo "github.com/igm/sockjs-go/v3/sockjs"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	utilexec "k8s.io/client-go/util/exec"
	"k8s.io/klog/v2"

	"github.com/kubecube-io/console-apiserver/pkg/session"
)

// Reasons a session ends, as logged and as the ended-sessions metric's label.
const (
	reasonExited       = "exited"
	reasonClientClosed = "client-closed"
	reasonBindTimeout  = "bind-timeout"
	reasonBindRefused  = "bind-refused"
	reasonIdle         = "idle-timeout"
	reasonMaxDuration  = "max-duration"
	reasonShutdown     = "shutdown"
	reasonExecFailed   = "exec-failed"
	reasonPodGone      = "pod-gone"
	reasonProtocol     = "protocol-error"
)

// attachInfo is what ServeAttach learned about a request, passed to the
// session through the request's context (sockjs-go gives the session
// nothing else).
type attachInfo struct {
	user      session.Identity
	namespace string
	pod       string
	transport string
	guard     *wsGuard // WebSocket only
}

type attachInfoKey struct{}

// outcome is how a session ended. The first ending wins.
type outcome struct {
	reason   string
	text     string // why, for the toast and the close frame; "" for a normal end
	exitCode int    // the command's, or -1
}

func failure(reason, text string) outcome { return outcome{reason: reason, text: text, exitCode: -1} }

// termSession is one terminal: a SockJS session, at most one claimed
// session.Session, and the command it runs.
//
// Goroutines: the one sockjs-go starts for the session runs watch and then
// the ordered teardown; readLoop turns client frames into actions; runExec
// runs the command. Every ending goes through end, which cancels ctx; the
// teardown then waits for the other two.
type termSession struct {
	t      *Terminal
	sess   sockSession
	info   *attachInfo
	link   *link // HTTP transports only
	snd    *sender
	opened time.Time

	ctx    context.Context // the command's and the reader's; cancelled by end
	cancel context.CancelFunc

	endOnce sync.Once
	endCh   chan struct{}
	outcome outcome // written before endCh is closed

	stdin          *stdinPipe
	stdout, stderr *stdoutWriter
	sizes          *sizeQueue
	outCtx         atomic.Pointer[context.Context] // bounds waits for send budget

	bindSeen   atomic.Bool
	streamUp   sync.Once
	readerDone chan struct{}
	closedCh   chan struct{} // closed once the client has been told, or is gone

	mu       sync.Mutex
	closing  bool
	claimed  session.Session
	release  func()
	execDone chan struct{} // nil until a claim succeeded

	bytesIn, bytesOut atomic.Int64
	lastActive        atomic.Int64 // unix nanoseconds
}

// serveSession is the sockjs-go handler func: it runs once per SockJS
// session, in a goroutine of its own, for as long as the session lives.
func (t *Terminal) serveSession(s sockjsgo.Session) { t.serveSockSession(s) }

// serveSockSession runs the terminal of one SockJS session, sockjs-go's or
// our own WebSocket one.
func (t *Terminal) serveSockSession(s sockSession) {
	// The request that opened the session; its context has ended or will
	// (XHR requests are short), so only its values are used.
	info, _ := s.Request().Context().Value(attachInfoKey{}).(*attachInfo)
	if info == nil {
		_ = s.Close(closeFailed, "internal error: request did not come through ServeAttach")
		return
	}
	ts := t.newTermSession(s, info)
	t.register()
	defer t.unregister()
	ts.run()
}

func (t *Terminal) newTermSession(s sockSession, info *attachInfo) *termSession {
	ctx, cancel := context.WithCancel(context.Background())
	ts := &termSession{
		t:          t,
		sess:       s,
		info:       info,
		opened:     time.Now(),
		ctx:        ctx,
		cancel:     cancel,
		endCh:      make(chan struct{}),
		readerDone: make(chan struct{}),
		closedCh:   make(chan struct{}),
	}
	ts.outCtx.Store(&ts.ctx)
	if info.transport != "websocket" {
		ts.link = t.acquireLink(s.ID())
		ts.link.setSession(ts)
	}
	ts.snd = newSender(s, ts.link)
	ts.stdin = newStdinPipe(ts.markStreamUp)
	ts.sizes = newSizeQueue(ts.markStreamUp)
	if ws, ok := s.(*wsSession); ok {
		// Frames go out in the wire format, built once (see wsSession).
		ts.stdout = newWireStdoutWriter(ts.wireOutput(ws))
		ts.stderr = newWireStdoutWriter(ts.wireOutput(ws))
	} else {
		ts.stdout = newStdoutWriter(ts.sendOutput)
		ts.stderr = newStdoutWriter(ts.sendOutput)
	}
	ts.lastActive.Store(ts.opened.UnixNano())
	return ts
}

func (ts *termSession) run() {
	if info := ts.info; info.guard != nil {
		info.guard.setHandler(func(why string) {
			ts.violation(why)
			timer := time.NewTimer(tripWait)
			defer timer.Stop()
			select {
			case <-ts.closedCh:
			case <-timer.C:
			}
		})
	}
	select {
	case <-ts.t.shutdownCh:
		ts.end(failure(reasonShutdown, shuttingDownText))
	default:
	}
	go ts.readLoop()
	ts.watch()
	ts.teardown()
}

// end records how the session ends and stops the command and the reader.
// Only the first call counts.
func (ts *termSession) end(o outcome) {
	ts.endOnce.Do(func() {
		ts.outcome = o
		ts.cancel()
		close(ts.endCh)
	})
}

// violation ends the session for bad client input.
func (ts *termSession) violation(text string) {
	ts.end(failure(reasonProtocol, "protocol error: "+text))
}

func (ts *termSession) watch() {
	opts := &ts.t.opts
	bind := time.NewTimer(opts.BindTimeout)
	defer bind.Stop()
	bindC := bind.C
	var idleC, maxC <-chan time.Time
	var idle *time.Timer
	if opts.IdleTimeout > 0 {
		idle = time.NewTimer(opts.IdleTimeout)
		defer idle.Stop()
		idleC = idle.C
	}
	if opts.MaxDuration > 0 {
		maxT := time.NewTimer(opts.MaxDuration)
		defer maxT.Stop()
		maxC = maxT.C
	}
	for {
		select {
		case <-ts.endCh:
			return
		case <-ts.sess.Context().Done():
			ts.end(failure(reasonClientClosed, ""))
		case <-ts.t.shutdownCh:
			ts.end(failure(reasonShutdown, shuttingDownText))
		case <-bindC:
			bindC = nil
			if !ts.bindSeen.Load() {
				ts.end(failure(reasonBindTimeout, fmt.Sprintf("no bind frame within %s", opts.BindTimeout)))
			}
		case <-idleC:
			quiet := time.Since(time.Unix(0, ts.lastActive.Load()))
			if quiet >= opts.IdleTimeout {
				ts.end(failure(reasonIdle, fmt.Sprintf("session idle for %s", opts.IdleTimeout)))
			} else {
				idle.Reset(opts.IdleTimeout - quiet)
			}
		case <-maxC:
			ts.end(failure(reasonMaxDuration, fmt.Sprintf("session reached its maximum duration of %s", opts.MaxDuration)))
		}
	}
}

func (ts *termSession) readLoop() {
	defer close(ts.readerDone)
	for {
		msg, err := ts.sess.RecvCtx(ts.ctx)
		if err != nil {
			// Either we ended (ctx) or sockjs-go closed the session
			// because the client went away.
			ts.end(failure(reasonClientClosed, ""))
			return
		}
		if !ts.handle(msg) {
			return
		}
	}
}

// handle acts on one client message; false ends the reader.
func (ts *termSession) handle(msg string) bool {
	if msg == pingMessage {
		_ = ts.snd.send(ts.ctx, pongMessage)
		return true
	}
	if limit := ts.t.opts.MaxMessageSize; len(msg) > limit {
		ts.violation(fmt.Sprintf("a frame of %d bytes exceeds the limit of %d bytes", len(msg), limit))
		return false
	}
	f, err := decodeFrame(msg)
	if err != nil {
		ts.violation(err.Error())
		return false
	}
	if f.Op == opBind {
		if ts.bindSeen.Swap(true) {
			ts.violation("the session is already bound")
			return false
		}
		return ts.bind(f.SessionID)
	}
	if !ts.bindSeen.Load() {
		ts.violation(errNotBind.Error())
		return false
	}
	switch f.Op {
	case opStdin:
		if f.Data == "" {
			return true
		}
		ts.touch()
		ts.bytesIn.Add(int64(len(f.Data)))
		ts.t.metrics.bytesIn.Add(float64(len(f.Data)))
		// Waits while the command is not reading and the buffer is full,
		// which pushes back on the client; fails once the session ended.
		return ts.stdin.write([]byte(f.Data)) == nil
	case opResize:
		ts.sizes.push(uint16(f.Cols), uint16(f.Rows))
	}
	return true
}

func (ts *termSession) bind(id string) bool {
	info := ts.info
	s, release, err := ts.t.store.Claim(id, info.user, info.namespace, info.pod)
	if err != nil {
		klog.InfoS("Terminal bind refused", "user", info.user.Name, "namespace", info.namespace, "pod", info.pod, "err", err)
		ts.end(failure(reasonBindRefused, bindRefusal(err)))
		return false
	}
	ts.mu.Lock()
	if ts.closing {
		ts.mu.Unlock()
		release()
		return false
	}
	ts.claimed, ts.release, ts.execDone = s, release, make(chan struct{})
	ts.mu.Unlock()
	klog.InfoS("Terminal session bound", "user", info.user.Name, "namespace", info.namespace, "pod", info.pod,
		"container", s.Target.Container, "cluster", s.Target.Cluster, "command", s.Command, "tty", s.TTY, "transport", info.transport)
	go ts.runExec(s)
	return true
}

// bindRefusal is the toast for a failed claim.
func bindRefusal(err error) string {
	var le *session.LimitError
	switch {
	case errors.Is(err, session.ErrInvalidID):
		return "cannot bind: invalid session ID (expected 32 lowercase hexadecimal characters)"
	case errors.Is(err, session.ErrNotFound):
		return "cannot bind: the session does not exist, has expired or was already used; create a new one"
	case errors.Is(err, session.ErrNotOwner):
		return "cannot bind: the session belongs to another user or pod (it can no longer be used)"
	case errors.As(err, &le):
		return fmt.Sprintf("cannot bind: too many terminal sessions (limit %s=%d); retry in %s", le.Limit, le.Max, le.RetryAfter)
	default:
		return "cannot bind: " + err.Error()
	}
}

func (ts *termSession) runExec(s session.Session) {
	defer close(ts.execDone)
	streams := Streams{Stdin: ts.stdin, Stdout: ts.stdout}
	if s.TTY {
		streams.Resize = ts.sizes
	} else {
		streams.Stderr = ts.stderr
	}
	err := ts.execute(s, streams)
	var exitErr utilexec.ExitError
	switch {
	case err == nil:
		ts.end(outcome{reason: reasonExited})
	case errors.As(err, &exitErr):
		ts.end(outcome{reason: reasonExited, exitCode: exitErr.ExitStatus()})
	case errors.Is(err, ErrPodGone):
		ts.end(failure(reasonPodGone, err.Error()))
	default:
		// A no-op when the session ended first and the command stopped
		// because ctx was cancelled.
		ts.end(failure(reasonExecFailed, "exec failed: "+err.Error()))
	}
}

// execute runs the Executor, which is not our code: a panic in it ends this
// session, not the server.
func (ts *termSession) execute(s session.Session, streams Streams) (err error) {
	defer func() {
		if r := recover(); r != nil {
			utilruntime.HandleError(fmt.Errorf("terminal executor panicked: %v", r))
			err = fmt.Errorf("internal error in the executor")
		}
	}()
	return ts.t.exec.Exec(ts.ctx, s, streams)
}

func (ts *termSession) markStreamUp() {
	ts.streamUp.Do(func() {
		ts.t.metrics.bindLatency.Observe(time.Since(ts.opened).Seconds())
	})
}

func (ts *termSession) touch() { ts.lastActive.Store(time.Now().UnixNano()) }

// sendOutput is the stdout writers' sink.
func (ts *termSession) sendOutput(frame string, raw int) error {
	ts.markStreamUp()
	if err := ts.snd.send(*ts.outCtx.Load(), frame); err != nil {
		return fmt.Errorf("terminal output: %w", err)
	}
	ts.touch()
	ts.bytesOut.Add(int64(raw))
	ts.t.metrics.bytesOut.Add(float64(raw))
	return nil
}

// wireOutput is the stdout writers' sink over our own WebSocket session:
// frames arrive in the wire format and are written through at once, so a
// slow client slows the command down (back-pressure), as with sendOutput.
func (ts *termSession) wireOutput(ws *wsSession) wireSender {
	return func(frame []byte, raw int) error {
		ts.markStreamUp()
		if err := ws.writeFrame(frame); err != nil {
			return fmt.Errorf("terminal output: %w", err)
		}
		ts.touch()
		ts.bytesOut.Add(int64(raw))
		ts.t.metrics.bytesOut.Add(float64(raw))
		return nil
	}
}

// teardown runs after end: it tells the client, closes the SockJS session,
// and releases everything the session holds.
func (ts *termSession) teardown() {
	o := ts.outcome
	ts.mu.Lock()
	ts.closing = true
	execDone, release, claimed := ts.execDone, ts.release, ts.claimed
	ts.mu.Unlock()

	// The client may still take the last words for a while; not forever.
	linger, cancelLinger := context.WithTimeout(ts.sess.Context(), ts.t.lingerTimeout())
	defer cancelLinger()

	ts.stdin.close()
	ts.sizes.close()
	if o.reason == reasonExited {
		// The command is done, so its output is complete: send what is
		// left of it, before the exit frame.
		<-execDone
		ts.outCtx.Store(&linger)
		_ = ts.stdout.finish()
		_ = ts.stderr.finish()
	} else {
		ts.stdout.close()
		ts.stderr.close()
	}

	switch {
	case o.reason == reasonClientClosed:
	case o.reason == reasonExited:
		_ = ts.snd.send(linger, exitFrame(o.exitCode))
		ts.snd.awaitDelivery(linger)
		_ = ts.sess.Close(closeExited, exitedReason)
	default:
		_ = ts.snd.send(linger, toastFrame(o.text))
		ts.snd.awaitDelivery(linger)
		_ = ts.sess.Close(closeFailed, o.text)
	}
	close(ts.closedCh)

	<-ts.readerDone
	if execDone != nil {
		<-execDone
	}
	if release != nil {
		release()
	}
	if ts.link != nil {
		ts.link.setSession(nil)
		ts.t.releaseLink(ts.link)
	}

	ts.t.metrics.ended.WithLabelValues(o.reason).Inc()
	info := ts.info
	klog.InfoS("Terminal session ended",
		"user", info.user.Name, "namespace", info.namespace, "pod", info.pod,
		"container", claimed.Target.Container, "command", claimed.Command,
		"duration", time.Since(ts.opened).Round(time.Millisecond),
		"bytesIn", ts.bytesIn.Load(), "bytesOut", ts.bytesOut.Load(),
		"reason", o.reason, "exitCode", o.exitCode, "message", o.text)
}
