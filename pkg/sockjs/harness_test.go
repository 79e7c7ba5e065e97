package sockjs

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"

	"github.com/kubecube-io/console-apiserver/pkg/session"
)

const (
	testNS      = "team-a"
	testPod     = "web-0"
	allowedOrig = "https://console.example.com"
	userHeader  = "X-Test-User"
	// A deadline for failures, not a speed target: generous, because the
	// race detector on a shared 2-core machine is slow.
	waitFor      = 30 * time.Second
	testMsgLimit = 4096
)

// --- executors -------------------------------------------------------------

type execFunc func(ctx context.Context, s session.Session, st Streams) error

func (f execFunc) Exec(ctx context.Context, s session.Session, st Streams) error {
	return f(ctx, s, st)
}

// echoExec echoes stdin to stdout; a Ctrl-D in the input makes it print
// "bye" and exit with code 3.
func echoExec() Executor {
	return execFunc(func(ctx context.Context, _ session.Session, st Streams) error {
		type chunk struct {
			b   []byte
			err error
		}
		in := make(chan chunk)
		go func() {
			buf := make([]byte, 1024)
			for {
				n, err := st.Stdin.Read(buf)
				c := chunk{b: bytes.Clone(buf[:n]), err: err}
				select {
				case in <- c:
				case <-ctx.Done():
					return
				}
				if err != nil {
					return
				}
			}
		}()
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case c := <-in:
				if c.err != nil {
					return c.err
				}
				if i := bytes.IndexByte(c.b, 4); i >= 0 {
					if _, err := st.Stdout.Write(c.b[:i]); err != nil {
						return err
					}
					if _, err := st.Stdout.Write([]byte("bye")); err != nil {
						return err
					}
					return utilexec.CodeExitError{Err: errors.New("exit status 3"), Code: 3}
				}
				if _, err := st.Stdout.Write(c.b); err != nil {
					return err
				}
			}
		}
	})
}

// blockingExec blocks until its ctx ends; cancelled is closed then.
type blockingExec struct {
	started   chan struct{}
	cancelled chan struct{}
	once      sync.Once
}

func newBlockingExec() *blockingExec {
	return &blockingExec{started: make(chan struct{}, 16), cancelled: make(chan struct{})}
}

func (b *blockingExec) Exec(ctx context.Context, _ session.Session, _ Streams) error {
	b.started <- struct{}{}
	<-ctx.Done()
	b.once.Do(func() { close(b.cancelled) })
	return ctx.Err()
}

// scriptExec writes each chunk as one Write, then exits with code.
func scriptExec(code int, chunks ...[]byte) Executor {
	return execFunc(func(ctx context.Context, _ session.Session, st Streams) error {
		for _, c := range chunks {
			if _, err := st.Stdout.Write(c); err != nil {
				return err
			}
		}
		if code != 0 {
			return utilexec.CodeExitError{Err: fmt.Errorf("exit status %d", code), Code: code}
		}
		return nil
	})
}

// --- environment -----------------------------------------------------------

type env struct {
	t      *testing.T
	store  *session.MemoryStore
	term   *Terminal
	srv    *httptest.Server
	client *http.Client
}

func testOptions() Options {
	return Options{
		AllowedOrigins:  []string{allowedOrig},
		BindTimeout:     5 * time.Second,
		MaxMessageSize:  testMsgLimit,
		HeartbeatDelay:  25 * time.Second,
		DisconnectDelay: 300 * time.Millisecond,
		WriteTimeout:    5 * time.Second,
	}
}

func newEnv(t *testing.T, exec Executor, mutate ...func(*Options)) *env {
	t.Helper()
	// Registered first, so it runs last, after the server is gone. sockjs-go
	// forgets a closed session only a disconnect delay later, hence the wait.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		deadline := time.Now().Add(waitFor)
		for goleak.Find(ignore) != nil && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		goleak.VerifyNone(t, ignore)
	})
	opts := testOptions()
	for _, m := range mutate {
		m(&opts)
	}
	e := &env{t: t, store: session.NewMemoryStore(session.DefaultLimits, nil)}
	e.term = NewTerminal(opts, e.store, exec)
	e.srv = httptest.NewServer(http.HandlerFunc(e.serve))
	e.client = &http.Client{Transport: &http.Transport{}}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := e.term.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		e.srv.Close()
		e.client.CloseIdleConnections()
	})
	return e
}

// serve plays the registry: /ns/{ns}/pods/{pod}/attach{subpath}, with the
// authenticated user taken from a test header.
func (e *env) serve(w http.ResponseWriter, r *http.Request) {
	parts := strings.SplitN(r.URL.Path, "/", 6)
	if len(parts) != 6 || parts[1] != "ns" || parts[3] != "pods" || !strings.HasPrefix(parts[5], "attach") {
		http.NotFound(w, r)
		return
	}
	if name := r.Header.Get(userHeader); name != "" {
		r = r.WithContext(request.WithUser(r.Context(), testUser(name)))
	}
	e.term.ServeAttach(w, r, parts[2], parts[4], strings.TrimPrefix(parts[5], "attach"))
}

func testUser(name string) user.Info {
	if name == user.Anonymous {
		return &user.DefaultInfo{Name: name, Groups: []string{user.AllUnauthenticated}}
	}
	return &user.DefaultInfo{Name: name, UID: "uid-" + name, Groups: []string{user.AllAuthenticated, "team-a"}}
}

func (e *env) attachURL(pod string) string {
	return e.srv.URL + "/ns/" + testNS + "/pods/" + pod + "/attach"
}

// newSession creates a pending session as the registry would.
func (e *env) newSession(owner, pod string, tty bool) string {
	e.t.Helper()
	s, err := e.store.Create(session.Session{
		Owner:   session.IdentityFrom(testUser(owner)),
		Target:  session.Target{Namespace: testNS, Pod: pod, Container: "app"},
		Command: []string{"sh"},
		TTY:     tty,
	})
	if err != nil {
		e.t.Fatalf("Create: %v", err)
	}
	return s.ID
}

func (e *env) eventually(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// idle waits until no session is open or counted by the store.
func (e *env) idle() {
	e.t.Helper()
	e.eventually("sessions to end", func() bool {
		_, active := e.store.Counts()
		return e.term.ActiveSessions() == 0 && active == 0
	})
}

// --- frames ----------------------------------------------------------------

type serverMsg struct {
	Raw  string
	Op   string
	Data string
	Code *int
}

// event is one SockJS frame as the client sees it.
type event struct {
	kind   byte // 'o', 'h', 'a', 'c'
	msgs   []serverMsg
	code   int
	reason string
}

func parseEvent(t *testing.T, frame string) event {
	t.Helper()
	if frame == "" {
		t.Fatalf("empty SockJS frame")
	}
	ev := event{kind: frame[0]}
	switch ev.kind {
	case 'o', 'h':
	case 'a':
		var raw []string
		if err := json.Unmarshal([]byte(frame[1:]), &raw); err != nil {
			t.Fatalf("bad data frame %q: %v", truncate(frame, 200), err)
		}
		for _, r := range raw {
			m := serverMsg{Raw: r}
			if strings.HasPrefix(r, "{") {
				if err := json.Unmarshal([]byte(r), &m); err != nil {
					t.Fatalf("bad message %q: %v", truncate(r, 200), err)
				}
			}
			ev.msgs = append(ev.msgs, m)
		}
	case 'c':
		var c []any
		if err := json.Unmarshal([]byte(frame[1:]), &c); err != nil || len(c) != 2 {
			t.Fatalf("bad close frame %q: %v", frame, err)
		}
		ev.code = int(c[0].(float64))
		ev.reason = c[1].(string)
	default:
		t.Fatalf("unknown SockJS frame %q", truncate(frame, 200))
	}
	return ev
}

func frameJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func bindMsg(id string) string { return frameJSON(map[string]any{"Op": "bind", "SessionID": id}) }
func stdinMsg(s string) string { return frameJSON(map[string]any{"Op": "stdin", "Data": s}) }
func resizeMsg(rows, cols int) string {
	return frameJSON(map[string]any{"Op": "resize", "Rows": rows, "Cols": cols})
}

// transcript is what a client saw until the close frame.
type transcript struct {
	msgs   []serverMsg
	code   int
	reason string
	closed bool
}

func (tr *transcript) stdout() string {
	var b strings.Builder
	for _, m := range tr.msgs {
		if m.Op == opStdout {
			b.WriteString(m.Data)
		}
	}
	return b.String()
}

func (tr *transcript) ops() []string {
	var ops []string
	for _, m := range tr.msgs {
		op := m.Op
		if op == "" {
			op = m.Raw
		}
		if len(ops) == 0 || ops[len(ops)-1] != op || op != opStdout {
			ops = append(ops, op)
		}
	}
	return ops
}

func (tr *transcript) toasts() []string {
	var ts []string
	for _, m := range tr.msgs {
		if m.Op == opToast {
			ts = append(ts, m.Data)
		}
	}
	return ts
}

// expectFailure checks the toast-then-close-2 ending.
func (tr *transcript) expectFailure(t *testing.T, substr string) {
	t.Helper()
	if !tr.closed || tr.code != closeFailed {
		t.Fatalf("want close code 2, got closed=%v code=%d reason=%q (msgs %v)", tr.closed, tr.code, tr.reason, tr.ops())
	}
	toasts := tr.toasts()
	if len(toasts) == 0 || !strings.Contains(toasts[len(toasts)-1], substr) {
		t.Fatalf("want a toast containing %q, got %q", substr, toasts)
	}
	if tr.reason != toasts[len(toasts)-1] {
		t.Fatalf("close reason %q differs from the toast %q", tr.reason, toasts[len(toasts)-1])
	}
}

// --- WebSocket client ------------------------------------------------------

type wsClient struct {
	t    *testing.T
	conn *websocket.Conn
}

func (e *env) dialWS(name, pod, segment string) *wsClient {
	e.t.Helper()
	c, resp, err := e.tryDialWS(name, pod, segment, nil)
	if err != nil {
		e.t.Fatalf("dial: %v (%v)", err, resp)
	}
	return c
}

func (e *env) tryDialWS(name, pod, segment string, hdr http.Header) (*wsClient, *http.Response, error) {
	if hdr == nil {
		hdr = http.Header{}
	}
	if name != "" {
		hdr.Set(userHeader, name)
	}
	url := "ws" + strings.TrimPrefix(e.attachURL(pod), "http") + "/000/" + segment + "/websocket"
	conn, resp, err := websocket.DefaultDialer.Dial(url, hdr)
	if err != nil {
		return nil, resp, err
	}
	c := &wsClient{t: e.t, conn: conn}
	e.t.Cleanup(func() { _ = conn.Close() })
	if ev := c.next(); ev.kind != 'o' {
		e.t.Fatalf("want open frame, got %q", ev.kind)
	}
	return c, resp, nil
}

func (c *wsClient) send(msgs ...string) {
	c.t.Helper()
	if err := c.conn.WriteMessage(websocket.TextMessage, []byte(frameJSON(msgs))); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next returns the next frame other than a heartbeat.
func (c *wsClient) next() event {
	c.t.Helper()
	for {
		_ = c.conn.SetReadDeadline(time.Now().Add(waitFor))
		_, b, err := c.conn.ReadMessage()
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		if ev := parseEvent(c.t, string(b)); ev.kind != 'h' {
			return ev
		}
	}
}

// until reads until the close frame, or until stop (if set) says enough.
func (c *wsClient) until(stop func(serverMsg) bool) *transcript {
	c.t.Helper()
	tr := &transcript{}
	for {
		ev := c.next()
		switch ev.kind {
		case 'c':
			tr.code, tr.reason, tr.closed = ev.code, ev.reason, true
			return tr
		case 'a':
			for _, m := range ev.msgs {
				tr.msgs = append(tr.msgs, m)
				if stop != nil && stop(m) {
					return tr
				}
			}
		}
	}
}

func (c *wsClient) readAll() *transcript { c.t.Helper(); return c.until(nil) }

// expectStdout reads until the accumulated stdout has want as a suffix.
func (c *wsClient) expectStdout(want string) {
	c.t.Helper()
	var got strings.Builder
	c.until(func(m serverMsg) bool {
		if m.Op == opToast {
			c.t.Fatalf("unexpected toast %q", m.Data)
		}
		if m.Op == opStdout {
			got.WriteString(m.Data)
		}
		return strings.HasSuffix(got.String(), want)
	})
}

// --- XHR client ------------------------------------------------------------

type xhrClient struct {
	e    *env
	base string
	name string
}

func (e *env) xhr(name, pod, segment string) *xhrClient {
	return &xhrClient{e: e, base: e.attachURL(pod) + "/000/" + segment, name: name}
}

func (x *xhrClient) post(transport string, body string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodPost, x.base+"/"+transport, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	if x.name != "" {
		req.Header.Set(userHeader, x.name)
	}
	return x.e.client.Do(req)
}

// send posts messages with xhr_send and returns the status code.
func (x *xhrClient) send(msgs ...string) int {
	x.e.t.Helper()
	resp, err := x.post("xhr_send", frameJSON(msgs))
	if err != nil {
		x.e.t.Fatalf("xhr_send: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// stream reads frames from xhr_streaming requests, opening a new one when
// sockjs-go ends one at its response limit, as sockjs-client does. Frames
// arrive on the returned channel, which is closed after the close frame.
func (x *xhrClient) stream() <-chan string { return x.receive("xhr_streaming") }

// poll does the same with xhr polling.
func (x *xhrClient) poll() <-chan string { return x.receive("xhr") }

var eventSourceUnescaper = strings.NewReplacer("%25", "%", "%0A", "\n", "%0D", "\r", "%00", "\x00")

// receive runs one of the receiving transports until the close frame.
func (x *xhrClient) receive(transport string) <-chan string {
	ch := make(chan string, 1024)
	done := make(chan struct{})
	x.e.t.Cleanup(func() { <-done })
	go func() {
		defer close(done)
		defer close(ch)
		for {
			var resp *http.Response
			var err error
			switch transport {
			case "xhr", "xhr_streaming":
				resp, err = x.post(transport, "")
			default:
				resp, err = x.get(transport + "?c=cb")
			}
			if err != nil {
				return
			}
			closed := x.readFrames(transport, resp.Body, ch)
			_ = resp.Body.Close()
			if closed {
				return
			}
		}
	}()
	return ch
}

// readFrames reads one response's frames; true once the close frame came.
func (x *xhrClient) readFrames(transport string, body io.Reader, ch chan<- string) bool {
	r := bufio.NewReaderSize(body, 64<<10)
	if transport == "xhr_streaming" {
		if _, err := r.ReadString('\n'); err != nil { // the prelude
			return false
		}
	}
	for {
		line, err := r.ReadString('\n')
		line = strings.TrimRight(line, "\r\n")
		frame := ""
		switch transport {
		case "xhr", "xhr_streaming":
			frame = line
		case "eventsource":
			if f, ok := strings.CutPrefix(line, "data: "); ok {
				frame = eventSourceUnescaper.Replace(f)
			}
		case "htmlfile", "jsonp":
			prefix := "p("
			if transport == "jsonp" {
				prefix = "cb("
			}
			if q, ok := strings.CutPrefix(line, prefix); ok {
				if jerr := json.Unmarshal([]byte(strings.TrimSuffix(q, ");")), &frame); jerr != nil {
					x.e.t.Errorf("bad %s line %q", transport, line)
					return true
				}
			}
		}
		if frame != "" {
			ch <- frame
			if frame[0] == 'c' {
				return true
			}
		}
		if err != nil {
			return false
		}
	}
}

func (x *xhrClient) get(pathAndQuery string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, x.base+"/"+pathAndQuery, nil)
	if err != nil {
		return nil, err
	}
	if x.name != "" {
		req.Header.Set(userHeader, x.name)
	}
	return x.e.client.Do(req)
}

// jsonpSend posts messages as a form, as sockjs-client's jsonp transport does.
func (x *xhrClient) jsonpSend(msgs ...string) int {
	x.e.t.Helper()
	form := url.Values{"d": {frameJSON(msgs)}}.Encode()
	req, _ := http.NewRequest(http.MethodPost, x.base+"/jsonp_send", strings.NewReader(form))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set(userHeader, x.name)
	resp, err := x.e.client.Do(req)
	if err != nil {
		x.e.t.Fatalf("jsonp_send: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

func collect(t *testing.T, frames <-chan string) *transcript {
	t.Helper()
	tr := &transcript{}
	timeout := time.NewTimer(waitFor)
	defer timeout.Stop()
	for {
		select {
		case f, ok := <-frames:
			if !ok {
				return tr
			}
			ev := parseEvent(t, f)
			switch ev.kind {
			case 'a':
				tr.msgs = append(tr.msgs, ev.msgs...)
			case 'c':
				tr.code, tr.reason, tr.closed = ev.code, ev.reason, true
			}
		case <-timeout.C:
			t.Fatalf("timed out; so far %v", tr.ops())
		}
	}
}

// --- terminal sizes ----------------------------------------------------------

func sizeString(s *remotecommand.TerminalSize) string {
	if s == nil {
		return "nil"
	}
	return fmt.Sprintf("%dx%d", s.Width, s.Height)
}

// waitOpenFrame reads a receiving response (prelude and heartbeats
// included) until SockJS's open frame "o".
func waitOpenFrame(t *testing.T, body io.Reader) {
	t.Helper()
	r := bufio.NewReader(body)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("waiting for the open frame: %v", err)
		}
		if strings.TrimSpace(line) == "o" {
			return
		}
	}
}
