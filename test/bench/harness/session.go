package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"

	consolesv1alpha1 "github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
	"github.com/kubecube-io/console-apiserver/pkg/generated/clientset/versioned"
	"github.com/kubecube-io/console-apiserver/test/bench/rawhop"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

// Variant is one way to reach a shell in the pod.
type Variant string

const (
	// D is direct exec: client-go SPDY to kube-apiserver's pods/exec.
	D Variant = "D"
	// H is the same exec sent through the aggregator to the raw-hop server,
	// which proxies it back to kube-apiserver as the caller.
	H Variant = "H"
	// C is the console: create a session, SockJS over WebSocket through
	// the aggregator, bind, and console-apiserver relays the exec.
	C Variant = "C"
)

// Variants in the order tables show them.
var Variants = []Variant{D, H, C}

// OpenOptions describe one shell.
type OpenOptions struct {
	// Script runs as sh -c Script.
	Script string
	TTY    bool
	// Sink receives the command's output (stdout and stderr), from one
	// goroutine at a time; it must not keep p.
	Sink func(p []byte)
	// Fresh makes every request of the open use a new connection (the
	// console's create request would otherwise reuse a pooled one).
	Fresh bool
}

// Session is an open shell.
type Session interface {
	// Write types p.
	Write(p []byte) error
	// Done is closed when the session has ended; Err then says how.
	Done() <-chan struct{}
	Err() error
	// Close drops the connection.
	Close()
}

// Open starts a shell in the bench pod through variant v.
func (e *Env) Open(ctx context.Context, v Variant, o OpenOptions) (Session, error) {
	switch v {
	case D:
		return e.openSPDY(ctx, "/api/v1/namespaces/"+Namespace+"/pods/"+Pod+"/exec", o)
	case H:
		return e.openSPDY(ctx, "/apis/"+rawhop.Group+"/"+rawhop.Version+"/namespaces/"+Namespace+"/pods/"+Pod+"/exec", o)
	case C:
		return e.openConsole(ctx, o)
	}
	return nil, fmt.Errorf("unknown variant %q", v)
}

// lockedSink serializes stdout and stderr (no TTY) into one Sink.
type lockedSink struct {
	mu   *sync.Mutex
	sink func([]byte)
}

func (w lockedSink) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.sink(p)
	w.mu.Unlock()
	return len(p), nil
}

type spdySession struct {
	stdin  *io.PipeWriter
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func (e *Env) openSPDY(ctx context.Context, path string, o OpenOptions) (*spdySession, error) {
	params, err := scheme.ParameterCodec.EncodeParameters(&corev1.PodExecOptions{
		Container: Container,
		Command:   []string{"sh", "-c", o.Script},
		Stdin:     true,
		Stdout:    true,
		Stderr:    !o.TTY,
		TTY:       o.TTY,
	}, corev1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(e.User.Host + path)
	if err != nil {
		return nil, err
	}
	u.RawQuery = params.Encode()
	exec, err := remotecommand.NewSPDYExecutor(e.User, "POST", u)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(ctx)
	s := &spdySession{stdin: pw, cancel: cancel, done: make(chan struct{})}
	out := lockedSink{mu: &sync.Mutex{}, sink: o.Sink}
	opts := remotecommand.StreamOptions{Stdin: pr, Stdout: out, Tty: o.TTY}
	if !o.TTY {
		opts.Stderr = out
	}
	go func() {
		s.err = exec.StreamWithContext(ctx, opts)
		_ = pr.CloseWithError(io.EOF)
		close(s.done)
	}()
	return s, nil
}

func (s *spdySession) Write(p []byte) error {
	_, err := s.stdin.Write(p)
	return err
}
func (s *spdySession) Done() <-chan struct{} { return s.done }
func (s *spdySession) Err() error            { <-s.done; return s.err }
func (s *spdySession) Close() {
	s.cancel()
	_ = s.stdin.Close()
}

// consoleSession is a SockJS-over-WebSocket client of the attach
// subresource, speaking the terminal protocol as a front-end does, with a
// decoder that does not allocate per frame (the client shares the
// machine's two cores with the servers, so its cost is kept low and is
// measured too).
type consoleSession struct {
	conn *websocket.Conn
	sink func([]byte)
	// How long the create request and the WebSocket's opening took.
	created, dialed time.Duration

	wmu  sync.Mutex
	done chan struct{}

	mu          sync.Mutex
	closeCode   int
	closeReason string
	exitCode    *int
	toasts      []string
	readErr     error
}

var noProxy = func(*http.Request) (*url.URL, error) { return nil, nil }

func (e *Env) openConsole(ctx context.Context, o OpenOptions) (*consoleSession, error) {
	cs := e.Consoles
	if o.Fresh {
		cfg := rest.CopyConfig(e.User)
		// A Proxy func makes client-go's transport uncacheable: a new
		// connection pool, hence a new connection.
		cfg.Proxy = noProxy
		hc, err := rest.HTTPClientFor(cfg)
		if err != nil {
			return nil, err
		}
		defer hc.CloseIdleConnections()
		if cs, err = versioned.NewForConfigAndClient(cfg, hc); err != nil {
			return nil, err
		}
	}
	tty := o.TTY
	t0 := time.Now()
	shell, err := cs.ConsolesV1alpha1().Pods(Namespace).CreateShell(ctx, Pod, &consolesv1alpha1.ShellSession{
		Spec: consolesv1alpha1.ShellSessionSpec{Container: Container, Command: []string{"sh", "-c", o.Script}, TTY: &tty},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating the shell session: %w", err)
	}
	created := time.Now()
	tlsCfg, err := rest.TLSConfigFor(e.User)
	if err != nil {
		return nil, err
	}
	d := websocket.Dialer{
		TLSClientConfig:  tlsCfg.Clone(),
		HandshakeTimeout: 30 * time.Second,
		ReadBufferSize:   64 << 10,
		WriteBufferSize:  4 << 10,
	}
	base := framework.AttachURL(e.User.Host, Namespace, Pod)
	wsURL := "wss" + strings.TrimPrefix(base, "https") + "/" + randomHex(2)[:3] + "/" + randomHex(4) + "/websocket"
	conn, resp, err := d.DialContext(ctx, wsURL, nil)
	if err != nil {
		if resp != nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			return nil, fmt.Errorf("opening %s: %w (%s: %s)", wsURL, err, resp.Status, b)
		}
		return nil, fmt.Errorf("opening %s: %w", wsURL, err)
	}
	s := &consoleSession{conn: conn, sink: o.Sink, done: make(chan struct{}), created: created.Sub(t0), dialed: time.Since(created)}
	if err := s.send(map[string]string{"Op": "bind", "SessionID": shell.Status.ID}); err != nil {
		conn.Close()
		return nil, err
	}
	go s.read()
	return s, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *consoleSession) send(msg any) error {
	inner, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	outer, err := json.Marshal([]string{string(inner)})
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.conn.WriteMessage(websocket.TextMessage, outer)
}

func (s *consoleSession) Write(p []byte) error {
	return s.send(struct{ Op, Data string }{"stdin", string(p)})
}

func (s *consoleSession) Done() <-chan struct{} { return s.done }

// Err is nil after the server's normal end: close code 1 ("Process
// exited") with exit code 0 or none.
func (s *consoleSession) Err() error {
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closeCode == 1 && (s.exitCode == nil || *s.exitCode == 0):
		return nil
	case s.closeCode != 0:
		return fmt.Errorf("closed %d %q (exit code %v, toasts %q)", s.closeCode, s.closeReason, s.exitCode, s.toasts)
	case s.readErr != nil:
		return fmt.Errorf("connection lost: %w (toasts %q)", s.readErr, s.toasts)
	}
	return errors.New("connection lost")
}

func (s *consoleSession) Close() { _ = s.conn.Close() }

const stdoutPrefix = `{"Op":"stdout","Data":`

func (s *consoleSession) read() {
	defer close(s.done)
	var frame, msg, data []byte
	for {
		_, r, err := s.conn.NextReader()
		if err != nil {
			s.mu.Lock()
			s.readErr = err
			s.mu.Unlock()
			return
		}
		frame, err = readAll(frame[:0], r)
		if err != nil {
			s.mu.Lock()
			s.readErr = err
			s.mu.Unlock()
			return
		}
		if len(frame) == 0 {
			continue
		}
		switch frame[0] {
		case 'o', 'h':
		case 'a':
			rest := frame[1:]
			if len(rest) == 0 || rest[0] != '[' {
				s.fail(fmt.Errorf("bad data frame %.40q", frame))
				return
			}
			rest = rest[1:]
			for len(rest) > 0 && rest[0] != ']' {
				var n int
				msg, n, err = unquoteJSON(msg[:0], rest)
				if err != nil {
					s.fail(fmt.Errorf("bad data frame: %w", err))
					return
				}
				rest = rest[n:]
				if len(rest) > 0 && rest[0] == ',' {
					rest = rest[1:]
				}
				if data, err = s.message(msg, data[:0]); err != nil {
					s.fail(err)
					return
				}
			}
		case 'c':
			var c []any
			_ = json.Unmarshal(frame[1:], &c)
			s.mu.Lock()
			if len(c) == 2 {
				code, _ := c[0].(float64)
				s.closeCode = int(code)
				s.closeReason, _ = c[1].(string)
			}
			s.mu.Unlock()
			s.conn.Close()
			return
		}
	}
}

func (s *consoleSession) fail(err error) {
	s.mu.Lock()
	s.readErr = err
	s.mu.Unlock()
	s.conn.Close()
}

// message handles one terminal protocol message; data is scratch space.
func (s *consoleSession) message(msg, data []byte) ([]byte, error) {
	if string(msg) == "pong" {
		return data, nil
	}
	// The server's stdout frames: {"Op":"stdout","Data":"..."}.
	if len(msg) > len(stdoutPrefix)+2 && string(msg[:len(stdoutPrefix)]) == stdoutPrefix && msg[len(msg)-1] == '}' {
		var n int
		var err error
		data, n, err = unquoteJSON(data, msg[len(stdoutPrefix):])
		if err == nil && len(stdoutPrefix)+n == len(msg)-1 {
			s.sink(data)
			return data, nil
		}
	}
	var m struct {
		Op   string
		Data string
		Code *int
	}
	if err := json.Unmarshal(msg, &m); err != nil {
		return data, fmt.Errorf("bad message %.60q: %w", msg, err)
	}
	switch m.Op {
	case "stdout":
		s.sink([]byte(m.Data))
	case "toast":
		s.mu.Lock()
		s.toasts = append(s.toasts, m.Data)
		s.mu.Unlock()
	case "exit":
		s.mu.Lock()
		s.exitCode = m.Code
		s.mu.Unlock()
	}
	return data, nil
}

func readAll(dst []byte, r io.Reader) ([]byte, error) {
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		n, err := r.Read(dst[len(dst):cap(dst)])
		dst = dst[:len(dst)+n]
		if err == io.EOF {
			return dst, nil
		}
		if err != nil {
			return dst, err
		}
	}
}
