package sockjs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/component-base/metrics/legacyregistry"

	"github.com/kubecube-io/console-apiserver/pkg/session"
)

func TestBindEchoAndExitCode(t *testing.T) {
	e := newEnv(t, echoExec())
	id := e.newSession("alice", testPod, true)
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(id))
	c.send(stdinMsg("hello\r"))
	c.expectStdout("hello\r")
	c.send(stdinMsg("ünïcödé €"))
	c.expectStdout("ünïcödé €")
	c.send(stdinMsg("\x04"))
	tr := c.readAll()
	if got := tr.stdout(); got != "bye" {
		t.Fatalf("stdout before exit = %q, want %q", got, "bye")
	}
	last := tr.msgs[len(tr.msgs)-1]
	if last.Op != opExit || last.Code == nil || *last.Code != 3 || last.Data != exitedReason {
		t.Fatalf("last message = %+v, want exit code 3", last)
	}
	if tr.code != closeExited || tr.reason != exitedReason {
		t.Fatalf("close = %d %q, want 1 %q", tr.code, tr.reason, exitedReason)
	}
	e.idle()
}

func TestOutputRightBeforeExitPrecedesExitFrame(t *testing.T) {
	chunks := [][]byte{[]byte("first "), []byte("last words\r\n")}
	e := newEnv(t, scriptExec(0, chunks...))
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)))
	tr := c.readAll()
	if got := tr.stdout(); got != "first last words\r\n" {
		t.Fatalf("stdout = %q", got)
	}
	if ops := tr.ops(); !slices.Equal(ops, []string{opStdout, opExit}) {
		t.Fatalf("ops = %v, want stdout then exit", ops)
	}
	if c := tr.msgs[len(tr.msgs)-1].Code; c == nil || *c != 0 {
		t.Fatalf("exit code = %v, want 0", c)
	}
	if tr.code != closeExited {
		t.Fatalf("close code %d, want 1", tr.code)
	}
	e.idle()
}

func TestResizeBeforeExecIsAppliedFirst(t *testing.T) {
	gate := make(chan struct{})
	first := make(chan string, 1)
	e := newEnv(t, execFunc(func(ctx context.Context, _ session.Session, st Streams) error {
		<-gate // the stream comes up late
		first <- sizeString(st.Resize.Next())
		_, _ = st.Stdout.Write([]byte("ready"))
		return nil
	}))
	c := e.dialWS("alice", testPod, "s1")
	// In one message with the bind, as a front-end sending on open would.
	c.send(bindMsg(e.newSession("alice", testPod, true)), resizeMsg(24, 80))
	c.send(resizeMsg(50, 132))
	// Let the reader see both before the stream asks.
	c.send("ping")
	if ev := c.next(); len(ev.msgs) != 1 || ev.msgs[0].Raw != pongMessage {
		t.Fatalf("want pong, got %+v", ev)
	}
	close(gate)
	if got := <-first; got != "132x50" {
		t.Fatalf("first size = %s, want the latest, 132x50", got)
	}
	if tr := c.readAll(); tr.stdout() != "ready" || tr.code != closeExited {
		t.Fatalf("got %q, close %d", tr.stdout(), tr.code)
	}
	e.idle()
}

func TestResizesDuringSession(t *testing.T) {
	sizes := make(chan string, 16)
	e := newEnv(t, execFunc(func(ctx context.Context, _ session.Session, st Streams) error {
		for {
			s := st.Resize.Next()
			if s == nil {
				close(sizes)
				return ctx.Err()
			}
			sizes <- sizeString(s)
		}
	}))
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)))
	c.send(resizeMsg(24, 80))
	if got := <-sizes; got != "80x24" {
		t.Fatalf("size = %s", got)
	}
	c.send(resizeMsg(30, 100))
	if got := <-sizes; got != "100x30" {
		t.Fatalf("size = %s", got)
	}
	_ = c.conn.Close()
	// Next returns nil once the session ends: the loop above exits.
	for range sizes {
	}
	e.idle()
}

func TestKeystrokesBeforeExecAreKept(t *testing.T) {
	gate := make(chan struct{})
	e := newEnv(t, execFunc(func(ctx context.Context, _ session.Session, st Streams) error {
		<-gate
		buf := make([]byte, 64)
		var got []byte
		for !bytes.HasSuffix(got, []byte("\r")) {
			n, err := st.Stdin.Read(buf)
			if err != nil {
				return err
			}
			got = append(got, buf[:n]...)
		}
		_, err := st.Stdout.Write(got)
		return err
	}))
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)), stdinMsg("l"))
	c.send(stdinMsg("s"))
	c.send(stdinMsg(" -la\r"))
	c.send("ping")
	c.next() // pong: all keystrokes were read before the stream is up
	close(gate)
	if tr := c.readAll(); tr.stdout() != "ls -la\r" || tr.code != closeExited {
		t.Fatalf("got %q (close %d)", tr.stdout(), tr.code)
	}
	e.idle()
}

func TestBindByAnotherUserIsRefusedAndBurnsTheSession(t *testing.T) {
	exec := newBlockingExec()
	e := newEnv(t, exec)
	id := e.newSession("alice", testPod, true)

	mallory := e.dialWS("mallory", testPod, "s1")
	mallory.send(bindMsg(id))
	mallory.readAll().expectFailure(t, "belongs to another user or pod")

	alice := e.dialWS("alice", testPod, "s1")
	alice.send(bindMsg(id))
	alice.readAll().expectFailure(t, "already used")

	// The same owner, but another pod.
	id = e.newSession("alice", testPod, true)
	other := e.dialWS("alice", "db-0", "s2")
	other.send(bindMsg(id))
	other.readAll().expectFailure(t, "belongs to another user or pod")

	select {
	case <-exec.started:
		t.Fatal("a refused bind ran a command")
	default:
	}
	e.idle()
}

func TestBindErrors(t *testing.T) {
	e := newEnv(t, newBlockingExec())
	for _, tc := range []struct{ id, want string }{
		{"not-hex", "invalid session ID"},
		{strings.Repeat("a", 32), "does not exist"},
	} {
		c := e.dialWS("alice", testPod, "s-"+tc.id[:3])
		c.send(bindMsg(tc.id))
		c.readAll().expectFailure(t, tc.want)
	}
	e.idle()
}

func TestBindLimit(t *testing.T) {
	e := newEnv(t, newBlockingExec())
	e.store = session.NewMemoryStore(session.Limits{MaxActivePerUser: 1}, nil)
	e.term.store = e.store
	id1 := e.newSession("alice", testPod, true)
	id := e.newSession("alice", testPod, true) // pending is fine; the claim is not
	first := e.dialWS("alice", testPod, "s1")
	first.send(bindMsg(id1))
	e.eventually("first bind", func() bool { _, a := e.store.Counts(); return a == 1 })
	second := e.dialWS("alice", testPod, "s2")
	second.send(bindMsg(id))
	second.readAll().expectFailure(t, "too many terminal sessions")
	_ = first.conn.Close()
	e.idle()
}

func TestProtocolViolations(t *testing.T) {
	e := newEnv(t, newBlockingExec())
	long := strings.Repeat("x", testMsgLimit)
	for _, tc := range []struct {
		name      string
		bindFirst bool
		msgs      []string
		want      string
	}{
		{"first frame not bind", false, []string{stdinMsg("ls")}, "first frame must be a bind"},
		{"resize before bind", false, []string{resizeMsg(24, 80)}, "first frame must be a bind"},
		{"malformed JSON", false, []string{`{"Op":"bind",`}, "malformed frame"},
		{"not an object", false, []string{`[1,2]`}, "malformed frame"},
		{"bind without id", false, []string{`{"Op":"bind"}`}, "without a SessionID"},
		{"second bind", true, []string{bindMsg(strings.Repeat("b", 32))}, "already bound"},
		{"unknown op", true, []string{`{"Op":"exec","Data":"rm -rf /"}`}, `unknown operation "exec"`},
		{"missing op", true, []string{`{"Data":"x"}`}, `unknown operation ""`},
		{"zero rows", true, []string{resizeMsg(0, 80)}, "out of range"},
		{"huge cols", true, []string{resizeMsg(24, 10001)}, "out of range"},
		{"negative", true, []string{resizeMsg(-1, 80)}, "out of range"},
		{"fractional", true, []string{`{"Op":"resize","Rows":2.5,"Cols":80}`}, "malformed frame"},
		{"lone surrogate in stdin", true, []string{`{"Op":"stdin","Data":"a\ud800b"}`}, "not valid UTF-8"},
		{"frame too large", true, []string{stdinMsg(long)}, "exceeds the limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.dialWS("alice", testPod, "v")
			if tc.bindFirst {
				c.send(bindMsg(e.newSession("alice", testPod, true)))
			}
			c.send(tc.msgs...)
			c.readAll().expectFailure(t, tc.want)
		})
	}
	e.idle()
}

func TestPingPong(t *testing.T) {
	e := newEnv(t, echoExec())
	c := e.dialWS("alice", testPod, "s1")
	c.send("ping")
	if ev := c.next(); ev.kind != 'a' || len(ev.msgs) != 1 || ev.msgs[0].Raw != pongMessage {
		t.Fatalf("want a raw pong, got %+v", ev)
	}
	c.send(bindMsg(e.newSession("alice", testPod, true)), "ping")
	if ev := c.next(); ev.msgs[0].Raw != pongMessage {
		t.Fatalf("want a raw pong, got %+v", ev)
	}
	c.send(stdinMsg("\x04"))
	if tr := c.readAll(); tr.code != closeExited {
		t.Fatalf("close %d", tr.code)
	}
	e.idle()
}

func TestBindTimeout(t *testing.T) {
	e := newEnv(t, newBlockingExec(), func(o *Options) { o.BindTimeout = 200 * time.Millisecond })
	c := e.dialWS("alice", testPod, "s1")
	c.readAll().expectFailure(t, "no bind frame within 200ms")
	e.idle()
}

func TestIdleTimeout(t *testing.T) {
	exec := newBlockingExec()
	e := newEnv(t, exec, func(o *Options) { o.IdleTimeout = 300 * time.Millisecond })
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)))
	start := time.Now()
	c.readAll().expectFailure(t, "idle for 300ms")
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("ended after %s", d)
	}
	<-exec.cancelled
	e.idle()
}

func TestIdleTimeoutCountsActivity(t *testing.T) {
	e := newEnv(t, echoExec(), func(o *Options) { o.IdleTimeout = 400 * time.Millisecond })
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)))
	for i := 0; i < 6; i++ { // 6 x 150ms > the idle timeout, never idle that long
		time.Sleep(150 * time.Millisecond)
		c.send(stdinMsg("k"))
		c.expectStdout("k")
	}
	c.send(stdinMsg("\x04"))
	if tr := c.readAll(); tr.code != closeExited {
		t.Fatalf("close %d %q", tr.code, tr.reason)
	}
	e.idle()
}

func TestMaxDuration(t *testing.T) {
	e := newEnv(t, execFunc(func(ctx context.Context, _ session.Session, st Streams) error {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
				if _, err := st.Stdout.Write([]byte(".")); err != nil {
					return err
				}
			}
		}
	}), func(o *Options) {
		o.IdleTimeout = 200 * time.Millisecond // output keeps it from idling
		o.MaxDuration = 600 * time.Millisecond
	})
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)))
	tr := c.readAll()
	tr.expectFailure(t, "maximum duration of 600ms")
	if len(tr.stdout()) < 5 {
		t.Fatalf("output %q: the session should have been busy", tr.stdout())
	}
	e.idle()
}

func TestClientVanishingEndsTheCommand(t *testing.T) {
	exec := newBlockingExec()
	e := newEnv(t, exec)
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)))
	<-exec.started
	// No close handshake: the TCP connection just goes.
	_ = c.conn.NetConn().Close()
	select {
	case <-exec.cancelled:
	case <-time.After(waitFor):
		t.Fatal("the command's context was not cancelled")
	}
	e.idle()
}

func TestExecFailure(t *testing.T) {
	e := newEnv(t, execFunc(func(context.Context, session.Session, Streams) error {
		return errors.New(`pods "web-0" not found`)
	}))
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)))
	c.readAll().expectFailure(t, `exec failed: pods "web-0" not found`)
	e.idle()
}

type podGone struct{}

func (podGone) Error() string        { return "pod team-a/web-0 was deleted; the terminal has ended" }
func (podGone) Is(target error) bool { return target == ErrPodGone }

func TestPodGoneIsTheReason(t *testing.T) {
	e := newEnv(t, execFunc(func(context.Context, session.Session, Streams) error { return podGone{} }))
	before := testutilCounter(t, "console_apiserver_terminal_sessions_ended_total", "pod-gone")
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)))
	tr := c.readAll()
	tr.expectFailure(t, "pod team-a/web-0 was deleted; the terminal has ended")
	if strings.Contains(tr.reason, "exec failed") {
		t.Fatalf("reported as an exec failure: %q", tr.reason)
	}
	e.idle()
	if after := testutilCounter(t, "console_apiserver_terminal_sessions_ended_total", "pod-gone"); after != before+1 {
		t.Fatalf("ended{reason=pod-gone} went from %v to %v", before, after)
	}
}

func TestExecutorPanicEndsOnlyTheSession(t *testing.T) {
	e := newEnv(t, execFunc(func(context.Context, session.Session, Streams) error { panic("boom") }))
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)))
	c.readAll().expectFailure(t, "internal error")
	e.idle()
}

func TestWithoutTTYStderrIsShown(t *testing.T) {
	e := newEnv(t, execFunc(func(_ context.Context, s session.Session, st Streams) error {
		if st.Resize != nil || st.Stderr == nil {
			return errors.New("want stderr and no resize without a TTY")
		}
		_, _ = st.Stdout.Write([]byte("out "))
		_, _ = st.Stderr.Write([]byte("err"))
		return nil
	}))
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, false)))
	if tr := c.readAll(); tr.stdout() != "out err" || tr.code != closeExited {
		t.Fatalf("got %q (close %d %q)", tr.stdout(), tr.code, tr.reason)
	}
	e.idle()
}

func TestShutdownTellsClientsAndDrains(t *testing.T) {
	exec := newBlockingExec()
	e := newEnv(t, exec)
	var clients []*wsClient
	for i := range 2 {
		c := e.dialWS("alice", testPod, fmt.Sprint("s", i))
		c.send(bindMsg(e.newSession("alice", testPod, true)))
		<-exec.started
		clients = append(clients, c)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		done <- e.term.Shutdown(ctx)
	}()
	for _, c := range clients {
		c.readAll().expectFailure(t, shuttingDownText)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	<-exec.cancelled
	if n := e.term.ActiveSessions(); n != 0 {
		t.Fatalf("%d sessions after Shutdown", n)
	}
	// A session opened afterwards is told too.
	late := e.dialWS("alice", testPod, "late")
	late.readAll().expectFailure(t, shuttingDownText)
	e.idle()
}

func TestShutdownHonoursContext(t *testing.T) {
	stuck := make(chan struct{})
	e := newEnv(t, execFunc(func(ctx context.Context, _ session.Session, _ Streams) error {
		<-stuck // ignores ctx, as a broken executor would
		return nil
	}))
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)))
	e.eventually("bind", func() bool { _, a := e.store.Counts(); return a == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := e.term.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want a deadline error", err)
	}
	close(stuck)
	c.readAll().expectFailure(t, shuttingDownText)
	e.idle()
}

func TestUTF8SplitAcrossWritesArrivesWhole(t *testing.T) {
	euro := []byte("€")  // e2 82 ac
	smile := []byte("😀") // f0 9f 98 80
	chunks := [][]byte{
		[]byte("a"), euro[:1], euro[1:2], euro[2:],
		append([]byte("b"), smile[:3]...), smile[3:],
		append([]byte("c"), euro[:2]...), append(bytes.Clone(euro[2:]), 'd'),
		[]byte("\xff"), []byte("e"), euro[:2], // cut short at the end
	}
	e := newEnv(t, scriptExec(0, chunks...))
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)))
	tr := c.readAll()
	// Each frame's Data is decoded on its own: a character split between
	// two frames would show up as replacement characters here.
	want := "a€b😀c€d\ufffde\ufffd\ufffd"
	if got := tr.stdout(); got != want {
		t.Fatalf("stdout = %q, want %q", got, want)
	}
	e.idle()
}

// bigText is deterministic valid UTF-8 with everything JSON must escape.
func bigText(n int) []byte {
	alphabet := []string{"a", "Z", "0", " ", "\r\n", "\t", "\x1b[31m", "\"", "\\", "/", "é", "€", "😀", "\u2028", "<>&", "\x00", "\x7f"}
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 0, n+8)
	for len(b) < n {
		b = append(b, alphabet[r.IntN(len(alphabet))]...)
	}
	return b
}

// chunked cuts b at random points, splitting characters on purpose.
func chunked(b []byte, maxChunk int) [][]byte {
	r := rand.New(rand.NewPCG(3, 4))
	var out [][]byte
	for len(b) > 0 {
		n := min(len(b), 1+r.IntN(maxChunk))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

func TestLargeOutputIsByteExact(t *testing.T) {
	data := bigText(8 << 20)
	e := newEnv(t, scriptExec(0, chunked(data, 48<<10)...))
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)))
	tr := c.readAll()
	got := tr.stdout()
	if sha256.Sum256([]byte(got)) != sha256.Sum256(data) {
		t.Fatalf("8 MiB differ: got %d bytes, want %d", len(got), len(data))
	}
	if tr.code != closeExited {
		t.Fatalf("close %d %q", tr.code, tr.reason)
	}
	e.idle()
}

func TestXHRStreamingFallback(t *testing.T) {
	e := newEnv(t, echoExec())
	x := e.xhr("alice", testPod, "x1")
	frames := x.stream()
	if f := <-frames; f != "o" {
		t.Fatalf("want open frame, got %q", f)
	}
	if code := x.send(bindMsg(e.newSession("alice", testPod, true)), stdinMsg("hi")); code != http.StatusNoContent {
		t.Fatalf("xhr_send: %d", code)
	}
	if code := x.send(stdinMsg("\x04")); code != http.StatusNoContent {
		t.Fatalf("xhr_send: %d", code)
	}
	tr := collect(t, frames)
	if tr.stdout() != "hibye" || tr.code != closeExited {
		t.Fatalf("got %q, ops %v, close %d %q", tr.stdout(), tr.ops(), tr.code, tr.reason)
	}
	if m := tr.msgs[len(tr.msgs)-1]; m.Op != opExit || *m.Code != 3 {
		t.Fatalf("last message %+v", m)
	}
	e.idle()
}

func TestXHRStreamingLargeOutput(t *testing.T) {
	// Several times the response limit and the send budget: the stream is
	// reopened along the way and output waits for it.
	data := bigText(2 << 20)
	e := newEnv(t, scriptExec(0, chunked(data, 32<<10)...))
	x := e.xhr("alice", testPod, "x1")
	frames := x.stream()
	<-frames
	x.send(bindMsg(e.newSession("alice", testPod, true)))
	tr := collect(t, frames)
	if got := tr.stdout(); got != string(data) {
		t.Fatalf("got %d bytes, want %d", len(got), len(data))
	}
	if tr.code != closeExited {
		t.Fatalf("close %d", tr.code)
	}
	e.idle()
}

func TestXHRPollingDeliversTheEnd(t *testing.T) {
	data := bigText(600 << 10)
	e := newEnv(t, scriptExec(7, chunked(data, 16<<10)...))
	x := e.xhr("alice", testPod, "p1")
	frames := x.poll()
	<-frames
	x.send(bindMsg(e.newSession("alice", testPod, true)))
	tr := collect(t, frames)
	if got := tr.stdout(); got != string(data) {
		t.Fatalf("got %d bytes, want %d", len(got), len(data))
	}
	if m := tr.msgs[len(tr.msgs)-1]; m.Op != opExit || *m.Code != 7 || tr.code != closeExited {
		t.Fatalf("end: %+v, close %d", m, tr.code)
	}
	e.idle()
}

func TestXHRSendOverLimit(t *testing.T) {
	e := newEnv(t, newBlockingExec())
	x := e.xhr("alice", testPod, "x1")
	frames := x.stream()
	<-frames
	x.send(bindMsg(e.newSession("alice", testPod, true)))
	if code := x.send(stdinMsg(strings.Repeat("y", testMsgLimit))); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("xhr_send over the limit: %d", code)
	}
	collect(t, frames).expectFailure(t, "exceeds the limit")
	e.idle()
}

// TestInvalidUTF8IsRefused sends bytes that are not UTF-8, which sockjs-go's
// JSON decoding would otherwise turn into U+FFFD and type into the command.
func TestInvalidUTF8IsRefused(t *testing.T) {
	gotInput := make(chan string, 4)
	e := newEnv(t, execFunc(func(ctx context.Context, _ session.Session, st Streams) error {
		buf := make([]byte, 64)
		if n, _ := st.Stdin.Read(buf); n > 0 {
			gotInput <- string(buf[:n])
		}
		<-ctx.Done()
		return ctx.Err()
	}))
	t.Run("websocket", func(t *testing.T) {
		c := e.dialWS("alice", testPod, "w1")
		c.send(bindMsg(e.newSession("alice", testPod, true)))
		if err := c.conn.WriteMessage(websocket.TextMessage, []byte("[\"{\\\"Op\\\":\\\"stdin\\\",\\\"Data\\\":\\\"a\xffb\\\"}\"]")); err != nil {
			t.Fatal(err)
		}
		c.readAll().expectFailure(t, "not valid UTF-8")
	})
	t.Run("xhr_send", func(t *testing.T) {
		x := e.xhr("alice", testPod, "x1")
		frames := x.stream()
		<-frames
		x.send(bindMsg(e.newSession("alice", testPod, true)))
		resp, err := x.post("xhr_send", "[\"{\\\"Op\\\":\\\"stdin\\\",\\\"Data\\\":\\\"a\xffb\\\"}\"]")
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("xhr_send of invalid UTF-8: %d", resp.StatusCode)
		}
		collect(t, frames).expectFailure(t, "not valid UTF-8")
	})
	select {
	case in := <-gotInput:
		t.Fatalf("the command got input %q", in)
	default:
	}
	e.idle()
}

func TestXHRSessionsAreKeyedByIdentity(t *testing.T) {
	gotInput := make(chan string, 4)
	e := newEnv(t, execFunc(func(ctx context.Context, _ session.Session, st Streams) error {
		buf := make([]byte, 64)
		n, err := st.Stdin.Read(buf)
		if err != nil {
			return err
		}
		gotInput <- string(buf[:n])
		return nil
	}))
	alice := e.xhr("alice", testPod, "shared")
	aliceFrames := alice.stream()
	<-aliceFrames

	// Same path, another user: no way into alice's session.
	mallory := e.xhr("mallory", testPod, "shared")
	if code := mallory.send(bindMsg(e.newSession("mallory", testPod, true))); code != http.StatusNotFound {
		t.Fatalf("mallory's xhr_send into alice's session: %d, want 404", code)
	}
	// Alice herself, for another pod, neither.
	if code := e.xhr("alice", "db-0", "shared").send(stdinMsg("x")); code != http.StatusNotFound {
		t.Fatalf("xhr_send for another pod: %d, want 404", code)
	}
	// Mallory opening the same path gets a session of her own rather than
	// "another connection still open" or alice's output.
	malloryFrames := mallory.stream()
	if f := <-malloryFrames; f != "o" {
		t.Fatalf("mallory: want her own open frame, got %q", f)
	}

	alice.send(bindMsg(e.newSession("alice", testPod, true)), stdinMsg("alice's"))
	if got := <-gotInput; got != "alice's" {
		t.Fatalf("alice's command read %q", got)
	}
	if tr := collect(t, aliceFrames); tr.code != closeExited {
		t.Fatalf("alice: close %d %q", tr.code, tr.reason)
	}
	mallory.send(bindMsg(e.newSession("mallory", testPod, true)), stdinMsg("mallory's"))
	if got := <-gotInput; got != "mallory's" {
		t.Fatalf("mallory's command read %q", got)
	}
	collect(t, malloryFrames)
	e.idle()
}

func TestUnauthenticatedIs401(t *testing.T) {
	e := newEnv(t, newBlockingExec())
	for _, tc := range []struct{ name, path string }{
		{"", "/info"},
		{user.Anonymous, "/info"},
		{"", "/000/abc/xhr_streaming"},
		{"", "/000/abc/websocket"},
	} {
		req, _ := http.NewRequest(http.MethodGet, e.attachURL(testPod)+tc.path, nil)
		if tc.name != "" {
			req.Header.Set(userHeader, tc.name)
		}
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var st metav1.Status
		err = json.NewDecoder(resp.Body).Decode(&st)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || err != nil || st.Kind != "Status" || st.Code != 401 || st.Reason != metav1.StatusReasonUnauthorized {
			t.Fatalf("%q %s: %d %+v (%v)", tc.name, tc.path, resp.StatusCode, st, err)
		}
	}
	if _, resp, err := e.tryDialWS("", testPod, "s1", nil); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("WebSocket without a user: %v %v", err, resp)
	}
}

func TestOrigins(t *testing.T) {
	e := newEnv(t, newBlockingExec())
	get := func(path, origin string) int {
		req, _ := http.NewRequest(http.MethodGet, e.attachURL(testPod)+path, nil)
		req.Header.Set(userHeader, "alice")
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("/info", ""); code != http.StatusOK {
		t.Fatalf("no origin: %d", code)
	}
	if code := get("/info", allowedOrig); code != http.StatusOK {
		t.Fatalf("allowed origin: %d", code)
	}
	if code := get("/info", e.srv.URL); code != http.StatusOK {
		t.Fatalf("same origin: %d", code)
	}
	if code := get("/info", "https://evil.example.com"); code != http.StatusForbidden {
		t.Fatalf("foreign origin on /info: %d", code)
	}
	x := e.xhr("alice", testPod, "o1")
	req, _ := http.NewRequest(http.MethodPost, x.base+"/xhr_streaming", nil)
	req.Header.Set(userHeader, "alice")
	req.Header.Set("Origin", "https://evil.example.com")
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign origin on xhr_streaming: %d", resp.StatusCode)
	}
	hdr := http.Header{"Origin": {"https://evil.example.com"}}
	if _, resp, err := e.tryDialWS("alice", testPod, "s1", hdr); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("WebSocket from a foreign origin: %v %v", err, resp)
	}
	c, _, err := e.tryDialWS("alice", testPod, "s2", http.Header{"Origin": {allowedOrig}})
	if err != nil {
		t.Fatalf("WebSocket from the allowed origin: %v", err)
	}
	_ = c.conn.Close()
	e.idle()
}

func TestInfo(t *testing.T) {
	e := newEnv(t, newBlockingExec())
	req, _ := http.NewRequest(http.MethodGet, e.attachURL(testPod)+"/info?"+strings.Repeat("a", 32)+"&t=1", nil)
	req.Header.Set(userHeader, "alice")
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var info map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		t.Fatal(err)
	}
	if info["websocket"] != true || info["cookie_needed"] != false || fmt.Sprint(info["origins"]) != "[*:*]" || info["entropy"] == nil {
		t.Fatalf("info = %v", info)
	}
}

func TestSessionKey(t *testing.T) {
	alice := session.IdentityFrom(testUser("alice"))
	k := sessionKey(alice, "ns", "pod", "abcd")
	if !strings.HasSuffix(k, "-abcd") || strings.ContainsAny(k, "/.") || !utf8.ValidString(k) {
		t.Fatalf("key %q", k)
	}
	reordered := alice
	reordered.Groups = []string{alice.Groups[1], alice.Groups[0]}
	if sessionKey(reordered, "ns", "pod", "abcd") != k {
		t.Fatal("group order changed the key")
	}
	for _, other := range []string{
		sessionKey(session.IdentityFrom(testUser("bob")), "ns", "pod", "abcd"),
		sessionKey(alice, "ns2", "pod", "abcd"),
		sessionKey(alice, "ns", "pod2", "abcd"),
		sessionKey(alice, "ns", "pod", "abce"),
		sessionKey(alice, "n", "spod", "abcd"),
	} {
		if other == k {
			t.Fatal("different callers or pods share a key")
		}
	}
	withExtra := alice
	withExtra.Extra = map[string][]string{"scopes": {"a"}}
	if sessionKey(withExtra, "ns", "pod", "abcd") == k {
		t.Fatal("extra did not change the key")
	}
}

func TestOtherHTTPTransports(t *testing.T) {
	for _, transport := range []string{"eventsource", "htmlfile", "jsonp"} {
		t.Run(transport, func(t *testing.T) {
			e := newEnv(t, echoExec())
			x := e.xhr("alice", testPod, "t-"+transport)
			frames := x.receive(transport)
			if f := <-frames; f != "o" {
				t.Fatalf("want open frame, got %q", f)
			}
			send := x.send
			if transport == "jsonp" {
				send = x.jsonpSend
			}
			if code := send(bindMsg(e.newSession("alice", testPod, true)), stdinMsg("100% \"quoted\"\r\n")); code/100 != 2 {
				t.Fatalf("send: %d", code)
			}
			send(stdinMsg("\x04"))
			tr := collect(t, frames)
			if tr.stdout() != "100% \"quoted\"\r\nbye" || tr.code != closeExited {
				t.Fatalf("got %q, ops %v, close %d %q", tr.stdout(), tr.ops(), tr.code, tr.reason)
			}
			e.idle()
		})
	}
}

// floodExec writes total bytes of output in chunks as fast as it can;
// written counts what its writes accepted.
type floodExec struct {
	total   int
	written atomic.Int64
	done    chan error
}

func (f *floodExec) Exec(ctx context.Context, _ session.Session, st Streams) error {
	chunk := bytes.Repeat([]byte("flood 0123456789 "), 4<<10/17+1)[:4<<10]
	var err error
	for left := f.total; left > 0 && err == nil; left -= len(chunk) {
		var n int
		n, err = st.Stdout.Write(chunk[:min(len(chunk), left)])
		f.written.Add(int64(n))
	}
	f.done <- err
	return err
}

func TestXHRPollingOutputIsBoundedWhileTheClientIsAway(t *testing.T) {
	flood := &floodExec{total: 3 << 20, done: make(chan error, 1)}
	e := newEnv(t, flood, func(o *Options) { o.DisconnectDelay = 1500 * time.Millisecond })
	x := e.xhr("alice", testPod, "p1")
	resp, err := x.post("xhr", "") // one poll: the open frame, then away
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	x.send(bindMsg(e.newSession("alice", testPod, true)))
	e.eventually("output to stall", func() bool { return flood.written.Load() > 0 })
	time.Sleep(300 * time.Millisecond)
	w := flood.written.Load()
	if w > sendBudget+2*maxFrameInput {
		t.Fatalf("%d bytes of output taken while nobody polled; budget is %d", w, sendBudget)
	}
	time.Sleep(200 * time.Millisecond)
	if w2 := flood.written.Load(); w2 != w {
		t.Fatalf("output went on without a client: %d then %d", w, w2)
	}
	// Polling again drains it all, to the end.
	tr := collect(t, x.poll())
	if got := len(tr.stdout()); got != flood.total || tr.code != closeExited {
		t.Fatalf("got %d bytes of %d, close %d %q", got, flood.total, tr.code, tr.reason)
	}
	if err := <-flood.done; err != nil {
		t.Fatalf("flood: %v", err)
	}
	e.idle()
}

func TestStalledWebSocketClientIsDropped(t *testing.T) {
	flood := &floodExec{total: 1 << 30, done: make(chan error, 1)}
	e := newEnv(t, flood, func(o *Options) { o.WriteTimeout = 300 * time.Millisecond })
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)))
	// The client reads nothing more. Once the socket buffers are full the
	// command is held up, and after the write timeout the session goes.
	select {
	case err := <-flood.done:
		if err == nil {
			t.Fatal("the flood ended without an error")
		}
	case <-time.After(waitFor):
		t.Fatalf("the command was not stopped (%d bytes written)", flood.written.Load())
	}
	if w := flood.written.Load(); w >= 1<<30 {
		t.Fatalf("no back-pressure: %d bytes written", w)
	}
	_ = c.conn.Close()
	e.idle()
}

func TestStalledXHRStreamingClientIsDropped(t *testing.T) {
	flood := &floodExec{total: 1 << 30, done: make(chan error, 1)}
	e := newEnv(t, flood, func(o *Options) {
		o.WriteTimeout = 300 * time.Millisecond
		o.DisconnectDelay = 200 * time.Millisecond
	})
	x := e.xhr("alice", testPod, "x1")
	resp, err := x.post("xhr_streaming", "")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	// sockjs-go flushes its prelude before it creates the session: send only
	// after the open frame, as sockjs-client does, and then stop reading.
	waitOpenFrame(t, resp.Body)
	x.send(bindMsg(e.newSession("alice", testPod, true)))
	select {
	case err := <-flood.done:
		if err == nil {
			t.Fatal("the flood ended without an error")
		}
	case <-time.After(waitFor):
		t.Fatalf("the command was not stopped (%d bytes written)", flood.written.Load())
	}
	_ = resp.Body.Close()
	e.idle()
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, echoExec())
	c := e.dialWS("alice", testPod, "s1")
	c.send(bindMsg(e.newSession("alice", testPod, true)), stdinMsg("abc"))
	c.expectStdout("abc")
	c.send(stdinMsg("\x04"))
	c.readAll()
	e.idle()
	// A second Terminal in the same process must not register again.
	_ = NewTerminal(Options{}, e.store, echoExec())

	families, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, f := range families {
		name := f.GetName()
		if !strings.HasPrefix(name, "console_apiserver_terminal_") {
			continue
		}
		found[name] = true
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			switch {
			case name == "console_apiserver_terminal_sessions_ended_total" && labels["reason"] == reasonExited:
				if m.GetCounter().GetValue() < 1 {
					t.Errorf("%s%v = %v", name, labels, m.GetCounter().GetValue())
				}
			case name == "console_apiserver_terminal_bytes_total":
				if m.GetCounter().GetValue() < 3 {
					t.Errorf("%s%v = %v", name, labels, m.GetCounter().GetValue())
				}
			case name == "console_apiserver_terminal_bind_latency_seconds":
				if m.GetHistogram().GetSampleCount() < 1 {
					t.Errorf("%s has no samples", name)
				}
			case name == "console_apiserver_terminal_active_sessions":
				if v := m.GetGauge().GetValue(); v != 0 {
					t.Errorf("%s = %v after all sessions ended", name, v)
				}
			}
		}
	}
	for _, n := range []string{"active_sessions", "sessions_ended_total", "bytes_total", "bind_latency_seconds"} {
		if !found["console_apiserver_terminal_"+n] {
			t.Errorf("metric console_apiserver_terminal_%s not registered", n)
		}
	}
}

// testutilCounter reads one reason of a counter vector from the registry.
func testutilCounter(t *testing.T, name, reason string) float64 {
	t.Helper()
	families, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
