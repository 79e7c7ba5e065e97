package reliability

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/gorilla/websocket"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/client-go/rest"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"

	consolesv1alpha1 "github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
	"github.com/kubecube-io/console-apiserver/pkg/generated/clientset/versioned"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

// --- identities and pods ---------------------------------------------------

// tuser is a caller of kube-apiserver.
type tuser struct {
	name     string
	cfg      *rest.Config
	header   http.Header // sent with SockJS requests (front-proxy identities)
	consoles versioned.Interface
}

// newUser is a person with a client certificate, in usersGroup.
func newUser(t testing.TB, name string) *tuser {
	t.Helper()
	cfg, err := cp.UserConfig(name, usersGroup)
	if err != nil {
		t.Fatal(err)
	}
	return &tuser{name: name, cfg: cfg, consoles: versioned.NewForConfigOrDie(cfg)}
}

// identityUser is any identity, UID and extra included, presented by an
// authenticating proxy (the front-proxy certificate and X-Remote-* headers).
func identityUser(info *user.DefaultInfo) *tuser {
	cfg := cp.IdentityConfig(info)
	return &tuser{name: info.Name, cfg: cfg, header: framework.IdentityHeader(info), consoles: versioned.NewForConfigOrDie(cfg)}
}

const (
	sharedNS  = "reliability"
	sharedPod = "app"
)

// sharedPodFor returns the pod most tests open terminals in (TestMain
// creates it).
func sharedPodFor(testing.TB) (namespace, pod string) { return sharedNS, sharedPod }

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func boolPtr(b bool) *bool { return &b }

func createShell(ctx context.Context, u *tuser, namespace, pod string, spec consolesv1alpha1.ShellSessionSpec) (*consolesv1alpha1.ShellSession, error) {
	return u.consoles.ConsolesV1alpha1().Pods(namespace).CreateShell(ctx, pod, &consolesv1alpha1.ShellSession{Spec: spec}, metav1.CreateOptions{})
}

// openTerminal opens a SockJS connection as u, without binding.
func openTerminal(t testing.TB, ctx context.Context, u *tuser, namespace, pod string, transport framework.Transport) *framework.Terminal {
	t.Helper()
	term, err := framework.OpenTerminal(ctx, u.cfg, namespace, pod, framework.TerminalOptions{Transport: transport, Header: u.header})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(term.Close)
	return term
}

// bind sends the bind frame. Over XHR the SockJS session exists once the
// receiving request is in, so the first send is retried until it is.
func bind(t testing.TB, term *framework.Terminal, id string) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(15 * time.Second); ; {
		if err = term.Bind(id); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// openShell creates a session as u and binds it over transport.
func openShell(t testing.TB, ctx context.Context, u *tuser, namespace, pod string, spec consolesv1alpha1.ShellSessionSpec, transport framework.Transport) *framework.Terminal {
	t.Helper()
	s, err := createShell(ctx, u, namespace, pod, spec)
	if err != nil {
		t.Fatalf("creating a shell session as %s: %v", u.name, err)
	}
	term := openTerminal(t, ctx, u, namespace, pod, transport)
	bind(t, term, s.Status.ID)
	return term
}

// expectClosed waits for the close frame and checks its code and that a
// toast (or, for code 1, the reason) says why.
func expectClosed(t testing.TB, ctx context.Context, term *framework.Terminal, code int, why string) framework.Closed {
	t.Helper()
	closed, err := term.WaitClosed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	toasts := strings.Join(term.Toasts(), " | ")
	if closed.Code != code || (why != "" && !strings.Contains(toasts, why) && !strings.Contains(closed.Reason, why)) {
		t.Fatalf("closed %+v with toasts %q; want code %d saying %q", closed, toasts, code, why)
	}
	return closed
}

// --- polling ---------------------------------------------------------------

// eventually polls cond every 50ms until it holds or timeout passes; cond
// returns a description of the state for the failure message.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	var state string
	for {
		var ok bool
		if ok, state = cond(); ok {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// --- the server's state ----------------------------------------------------

// sessionStackRE marks a goroutine that belongs to a terminal session in the
// server: our relay, sockjs-go, gorilla's server side, and client-go's exec
// stream (SPDY). Goroutines of the test's own clients are told apart by the
// test/ packages on their stacks.
var sessionStackRE = regexp.MustCompile(`console-apiserver/pkg/(sockjs|podexec)|igm/sockjs-go|client-go/tools/remotecommand|moby/spdystream|k8s\.io/streaming|httpstream/spdy`)

// goroutines returns the number of goroutines in this process and the
// stacks of those that belong to terminal sessions in the in-process
// servers.
func goroutines() (total int, session []string) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	for _, g := range strings.Split(string(buf), "\n\n") {
		total++
		if strings.Contains(g, "console-apiserver/test/") {
			continue
		}
		if sessionStackRE.MatchString(g) {
			session = append(session, g)
		}
	}
	return total, session
}

// awaitSessionGoroutines waits until at most want session goroutines are
// left, and returns how long that took.
func awaitSessionGoroutines(t testing.TB, timeout time.Duration, want int) time.Duration {
	t.Helper()
	return eventually(t, timeout, fmt.Sprintf("at most %d session goroutines", want), func() (bool, string) {
		_, gs := goroutines()
		if len(gs) <= want {
			return true, ""
		}
		return false, fmt.Sprintf("%d left, e.g.:\n%s", len(gs), summarizeStacks(gs))
	})
}

// summarizeStacks groups stacks by their top frames, for failure messages.
func summarizeStacks(stacks []string) string {
	count := map[string]int{}
	for _, s := range stacks {
		lines := strings.Split(s, "\n")
		var key []string
		for i := 1; i < len(lines) && len(key) < 4; i += 2 {
			key = append(key, strings.TrimSpace(lines[i]))
		}
		count[strings.Join(key, " <- ")]++
	}
	var out []string
	for k, n := range count {
		out = append(out, fmt.Sprintf("%4d %s", n, k))
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// directConfig reaches a console-apiserver on its loopback port, bypassing
// kube-apiserver, with the admin's client certificate (system:masters):
// console-apiserver trusts the plane's client CA, which it reads from
// kube-system/extension-apiserver-authentication. Its serving certificate
// is not checked (it names the Service, not 127.0.0.1's CA chain here).
func directConfig(port int) *rest.Config {
	cfg := cp.AdminConfig()
	cfg.Host = fmt.Sprintf("https://127.0.0.1:%d", port)
	cfg.CAData = nil
	cfg.Insecure = true
	return cfg
}

// directGet GETs path on the server at port, as the admin.
func directGet(ctx context.Context, port int, path string) (int, string, error) {
	client, err := rest.HTTPClientFor(directConfig(port))
	if err != nil {
		return 0, "", err
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, directConfig(port).Host+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metrics is one scrape: series (name{labels} as exposed) to value.
type metrics map[string]float64

// scrape reads /metrics of the server at port, directly.
func scrape(t testing.TB, ctx context.Context, port int) metrics {
	t.Helper()
	code, body, err := directGet(ctx, port, "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("scraping /metrics: %d %v", code, err)
	}
	return parseMetrics(body)
}

func parseMetrics(body string) metrics {
	m := metrics{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m
}

// get sums the series of name that carry every label given as k="v".
func (m metrics) get(name string, labels ...string) float64 {
	var sum float64
	for series, v := range m {
		n, rest, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
			}
		}
		if ok {
			sum += v
		}
	}
	return sum
}

// --- switching the APIService ----------------------------------------------

// useServer points the APIService at the server prep describes until the
// test ends, then back at main. ttl is that server's --session-ttl: the
// switch is done when a session created through kube-apiserver expires
// after about that long.
func useServer(t testing.TB, prep *framework.ConsoleServer, ttl time.Duration) {
	t.Helper()
	ctx := context.Background()
	if err := cp.RegisterConsoleAPIService(ctx, prep); err != nil {
		t.Fatal(err)
	}
	awaitRouting(t, ttl)
	t.Cleanup(func() {
		if err := cp.RegisterConsoleAPIService(ctx, mainServer.Prep); err != nil {
			t.Errorf("pointing the APIService back at main: %v", err)
			return
		}
		awaitRouting(t, mainTTL)
	})
}

// awaitRouting waits until the aggregator routes to the server whose
// --session-ttl is ttl.
func awaitRouting(t testing.TB, ttl time.Duration) {
	t.Helper()
	eventually(t, 60*time.Second, fmt.Sprintf("the APIService to reach the server with TTL %s", ttl), func() (bool, string) {
		return routesTo(context.Background(), ttl)
	})
}

// routesTo reports whether a session created through kube-apiserver now
// expires after about ttl.
func routesTo(ctx context.Context, ttl time.Duration) (bool, string) {
	// A new name each time: probes must not run into the pending limit.
	probe := identityUser(&user.DefaultInfo{Name: "probe-" + randomSuffix(), Groups: []string{"system:masters"}})
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := createShell(rctx, probe, sharedNS, sharedPod, consolesv1alpha1.ShellSessionSpec{})
	if err != nil {
		return false, err.Error()
	}
	left := time.Until(s.Status.ExpirationTimestamp.Time)
	// The timestamp is truncated to the second.
	return left > ttl-2*time.Second && left <= ttl, fmt.Sprintf("session expires in %s", left)
}

// --- klog capture ----------------------------------------------------------

// logEntry is one structured log line.
type logEntry struct {
	Msg string
	KV  map[string]any
}

// logCapture records every klog line of this process and passes it on to a
// text logger on stderr.
type logCapture struct {
	mu      sync.Mutex
	entries []logEntry
}

func captureKlog() *logCapture {
	c := &logCapture{}
	next := textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(os.Stderr)))
	klog.SetLoggerWithOptions(logr.New(&captureSink{c: c, next: next.GetSink()}), klog.ContextualLogger(true))
	return c
}

// find returns the entries with message msg whose values include every
// key/value of match (compared as fmt.Sprint strings).
func (c *logCapture) find(msg string, match map[string]string) []logEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []logEntry
	for _, e := range c.entries {
		if e.Msg != msg {
			continue
		}
		ok := true
		for k, v := range match {
			if fmt.Sprint(e.KV[k]) != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, e)
		}
	}
	return out
}

type captureSink struct {
	c    *logCapture
	next logr.LogSink
	kv   []any
}

func (s *captureSink) Init(info logr.RuntimeInfo) { s.next.Init(info) }
func (s *captureSink) Enabled(level int) bool     { return s.next.Enabled(level) }

func (s *captureSink) record(msg string, kv []any) {
	e := logEntry{Msg: msg, KV: map[string]any{}}
	all := append(append([]any(nil), s.kv...), kv...)
	for i := 0; i+1 < len(all); i += 2 {
		e.KV[fmt.Sprint(all[i])] = all[i+1]
	}
	s.c.mu.Lock()
	s.c.entries = append(s.c.entries, e)
	s.c.mu.Unlock()
}

func (s *captureSink) Info(level int, msg string, kv ...any) {
	s.record(msg, kv)
	s.next.Info(level, msg, kv...)
}

func (s *captureSink) Error(err error, msg string, kv ...any) {
	s.record(msg, append([]any{"err", err}, kv...))
	s.next.Error(err, msg, kv...)
}

func (s *captureSink) WithValues(kv ...any) logr.LogSink {
	return &captureSink{c: s.c, next: s.next.WithValues(kv...), kv: append(append([]any(nil), s.kv...), kv...)}
}

func (s *captureSink) WithName(name string) logr.LogSink {
	return &captureSink{c: s.c, next: s.next.WithName(name), kv: s.kv}
}

// --- raw SockJS over WebSocket ---------------------------------------------

// rawWS is a SockJS WebSocket client that reads only when told to: the
// framework's client always reads, and a slow client must not.
type rawWS struct {
	conn *websocket.Conn
}

func dialRawWS(ctx context.Context, u *tuser, namespace, pod string) (*rawWS, error) {
	tlsCfg, err := rest.TLSConfigFor(u.cfg)
	if err != nil {
		return nil, err
	}
	dialer := websocket.Dialer{TLSClientConfig: tlsCfg, HandshakeTimeout: 30 * time.Second,
		// Small buffers: what the server cannot write piles up in the
		// server, where this test wants to see it.
		ReadBufferSize: 4096}
	url := "wss" + strings.TrimPrefix(framework.AttachURL(u.cfg.Host, namespace, pod), "https") +
		"/000/" + randomSuffix() + "/websocket"
	header := u.header.Clone()
	if header == nil {
		header = http.Header{}
	}
	conn, resp, err := dialer.DialContext(ctx, url, header)
	if err != nil {
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			return nil, fmt.Errorf("%w: %s %s", err, resp.Status, b)
		}
		return nil, err
	}
	return &rawWS{conn: conn}, nil
}

// send sends one SockJS message.
func (w *rawWS) send(msg string) error {
	return w.conn.WriteJSON([]string{msg})
}

// read returns the next SockJS frame.
func (w *rawWS) read(timeout time.Duration) (string, error) {
	_ = w.conn.SetReadDeadline(time.Now().Add(timeout))
	_, b, err := w.conn.ReadMessage()
	return string(b), err
}

// readUntil reads frames until one contains want.
func (w *rawWS) readUntil(timeout time.Duration, want string) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		f, err := w.read(time.Until(deadline))
		if err != nil {
			return err
		}
		if strings.Contains(f, want) {
			return nil
		}
	}
	return errors.New("timed out waiting for " + want)
}

// drop closes the TCP connection without a WebSocket close.
func (w *rawWS) drop() { _ = w.conn.NetConn().Close() }

// transcript is what a raw client saw of a session.
type transcript struct {
	toasts []string
	stdout strings.Builder
	exit   *int
	closed *framework.Closed
}

func (tr *transcript) String() string {
	return fmt.Sprintf("close %+v, toasts %q, exit %v, stdout %q", tr.closed, tr.toasts, tr.exit, tail(tr.stdout.String(), 200))
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// add takes one SockJS frame; true once it was the close frame.
func (tr *transcript) add(frame string) bool {
	switch {
	case strings.HasPrefix(frame, "a"):
		var msgs []string
		if json.Unmarshal([]byte(frame[1:]), &msgs) != nil {
			return false
		}
		for _, m := range msgs {
			var msg struct {
				Op   string
				Data string
				Code *int
			}
			if json.Unmarshal([]byte(m), &msg) != nil {
				continue
			}
			switch msg.Op {
			case "stdout":
				tr.stdout.WriteString(msg.Data)
			case "toast":
				tr.toasts = append(tr.toasts, msg.Data)
			case "exit":
				tr.exit = msg.Code
			}
		}
	case strings.HasPrefix(frame, "c"):
		var c []any
		_ = json.Unmarshal([]byte(frame[1:]), &c)
		tr.closed = &framework.Closed{}
		if len(c) == 2 {
			code, _ := c[0].(float64)
			tr.closed.Code = int(code)
			tr.closed.Reason, _ = c[1].(string)
		}
		return true
	}
	return false
}

// expect checks a failed ending: close code 2 and a toast saying why.
func (tr *transcript) expect(t testing.TB, code int, why string) {
	t.Helper()
	if tr.closed == nil || tr.closed.Code != code || !strings.Contains(strings.Join(tr.toasts, " | ")+" | "+tr.closed.Reason, why) {
		t.Fatalf("%s; want close %d saying %q", tr, code, why)
	}
}

// readAll reads frames until the close frame, the connection's end or
// timeout.
func (w *rawWS) readAll(timeout time.Duration) *transcript {
	tr := &transcript{}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		f, err := w.read(time.Until(deadline))
		if err != nil || tr.add(f) {
			break
		}
	}
	return tr
}

// rawXHR is a SockJS client of the XHR transports, driven by hand.
type rawXHR struct {
	client *http.Client
	base   string
	header http.Header
}

func newRawXHR(t testing.TB, u *tuser, namespace, pod string) *rawXHR {
	t.Helper()
	client, err := rest.HTTPClientFor(u.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &rawXHR{client: client, base: framework.AttachURL(u.cfg.Host, namespace, pod) + "/000/" + randomSuffix(), header: u.header}
}

func (x *rawXHR) post(ctx context.Context, transport string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, x.base+"/"+transport, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for k, v := range x.header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "text/plain")
	return x.client.Do(req)
}

// send posts body with xhr_send and returns the status and body.
func (x *rawXHR) send(ctx context.Context, body []byte) (int, string) {
	resp, err := x.post(ctx, "xhr_send", body)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// sendMsgs posts SockJS messages.
func (x *rawXHR) sendMsgs(ctx context.Context, msgs ...string) (int, string) {
	b, _ := json.Marshal(msgs)
	return x.send(ctx, b)
}

// stream opens xhr_streaming and returns its body, past the prelude and
// the open frame.
func (x *rawXHR) stream(ctx context.Context) (io.ReadCloser, *bufio.Reader, error) {
	resp, err := x.post(ctx, "xhr_streaming", nil)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return nil, nil, fmt.Errorf("xhr_streaming: %s: %s", resp.Status, b)
	}
	r := bufio.NewReaderSize(resp.Body, 4096)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			resp.Body.Close()
			return nil, nil, err
		}
		if strings.TrimSpace(line) == "o" {
			return resp.Body, r, nil
		}
	}
}

// readXHR reads frames from a streaming response until the close frame.
func readXHR(r *bufio.Reader) *transcript {
	tr := &transcript{}
	for {
		line, err := r.ReadString('\n')
		if tr.add(strings.TrimSpace(line)) || err != nil {
			return tr
		}
	}
}

// bindMsg and the other frames of the terminal protocol.
func bindMsg(id string) string { return frameJSON(map[string]any{"Op": "bind", "SessionID": id}) }
func stdinMsg(s string) string { return frameJSON(map[string]any{"Op": "stdin", "Data": s}) }
func resizeMsg(rows, cols int) string {
	return frameJSON(map[string]any{"Op": "resize", "Rows": rows, "Cols": cols})
}

func frameJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// --- in-process metrics ------------------------------------------------------

// gathered reads a metric of this process's registry (both in-process
// servers share it) without going through HTTP, which needs kube-apiserver
// for authorization: the sum of the series of name carrying every label
// given as name=value.
func gathered(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	families, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for _, l := range labels {
				k, v, _ := strings.Cut(l, "=")
				if have[k] != v {
					continue series
				}
			}
			switch {
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

const (
	activeGauge  = "console_apiserver_terminal_active_sessions"
	endedCounter = "console_apiserver_terminal_sessions_ended_total"
)

// quietTimeout bounds awaitQuiet. A session that ends while client-go is
// still creating its exec streams leaves client-go's goroutine waiting up to
// 30s for the stream's reply (k8s.io/streaming's createStreamResponseTimeout:
// spdystream's WaitTimeout does not notice the connection closing), so the
// wait must be longer than that.
const quietTimeout = 45 * time.Second

// awaitQuiet waits until no terminal session is open in this process and
// no goroutine of one is left.
func awaitQuiet(t testing.TB, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, "no active terminal sessions", func() (bool, string) {
		v := gathered(t, activeGauge)
		return v == 0, fmt.Sprintf("%s = %v", activeGauge, v)
	})
	awaitSessionGoroutines(t, timeout, 0)
}
