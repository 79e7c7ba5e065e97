package podexec

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
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilremotecommand "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
	"k8s.io/streaming/pkg/httpstream"
	streamspdy "k8s.io/streaming/pkg/httpstream/spdy"
)

// fakeKubelet serves exec over SPDY with Kubernetes' own server side
// (k8s.io/streaming, moby/spdystream), playing the kubelet's part of the
// remotecommand protocol: it waits for the streams the request asks for,
// then runs script.
type fakeKubelet struct {
	t       *testing.T
	script  func(s *kubeletStreams)
	pings   time.Duration
	headers chan http.Header
}

type kubeletStreams struct {
	conn                                httpstream.Connection
	errs, stdin, stdout, stderr, resize httpstream.Stream
}

// status writes the v4 status and ends the exec as the kubelet does.
func (s *kubeletStreams) end(code int) {
	st := metav1.Status{Status: metav1.StatusSuccess}
	if code != 0 {
		st = metav1.Status{Status: metav1.StatusFailure, Reason: utilremotecommand.NonZeroExitCodeReason,
			Details: &metav1.StatusDetails{Causes: []metav1.StatusCause{{Type: utilremotecommand.ExitCodeCauseType, Message: fmt.Sprint(code)}}}}
	}
	b, _ := json.Marshal(st)
	_, _ = s.errs.Write(b)
	s.closeAll()
}

func (s *kubeletStreams) closeAll() {
	for _, st := range []httpstream.Stream{s.errs, s.stdin, s.stdout, s.stderr, s.resize} {
		if st != nil {
			_ = st.Close()
		}
	}
	_ = s.conn.Close()
}

func (k *fakeKubelet) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if k.headers != nil {
		k.headers <- req.Header.Clone()
	}
	if _, err := httpstream.Handshake(req, w, []string{utilremotecommand.StreamProtocolV4Name}); err != nil {
		return
	}
	q := req.URL.Query()
	want := 2 // error, stdout
	if q.Get("stdin") == "true" {
		want++
	}
	if q.Get("tty") == "true" || q.Get("stderr") == "true" {
		want++
	}
	streams := make(chan httpstream.Stream, 8)
	upgrader := streamspdy.NewResponseUpgrader()
	if k.pings > 0 {
		upgrader = streamspdy.NewResponseUpgraderWithPings(k.pings)
	}
	conn := upgrader.UpgradeResponse(w, req, func(s httpstream.Stream, replySent <-chan struct{}) error {
		streams <- s
		return nil
	})
	if conn == nil {
		return
	}
	s := &kubeletStreams{conn: conn}
	timeout := time.After(10 * time.Second)
	for got := 0; got < want; got++ {
		select {
		case st := <-streams:
			switch st.Headers().Get(corev1.StreamType) {
			case corev1.StreamTypeError:
				s.errs = st
			case corev1.StreamTypeStdin:
				s.stdin = st
			case corev1.StreamTypeStdout:
				s.stdout = st
			case corev1.StreamTypeStderr:
				s.stderr = st
			case corev1.StreamTypeResize:
				s.resize = st
			default:
				k.t.Errorf("stream of unknown type %q", st.Headers().Get(corev1.StreamType))
			}
		case <-timeout:
			k.t.Errorf("only %d of %d streams came", got, want)
			_ = conn.Close()
			return
		}
	}
	k.script(s)
	<-conn.CloseChan()
}

func startKubelet(t *testing.T, k *fakeKubelet) *rest.Config {
	t.Helper()
	k.t = t
	srv := httptest.NewTLSServer(k)
	t.Cleanup(srv.Close)
	cfg := &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		BearerToken: "server-token", Impersonate: rest.ImpersonationConfig{UserName: "alice", Groups: []string{"devs"}}}
	return cfg
}

func execURL(cfg *rest.Config, tty bool) *url.URL {
	u, _ := url.Parse(cfg.Host + "/api/v1/namespaces/ns/pods/p/exec")
	q := url.Values{"stdin": {"true"}, "stdout": {"true"}, "command": {"sh"}}
	if tty {
		q.Set("tty", "true")
	} else {
		q.Set("stderr", "true")
	}
	u.RawQuery = q.Encode()
	return u
}

// syncBuffer is an io.Writer tests read while it is written.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	n   int // Writes
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n++
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sizes is a TerminalSizeQueue.
type sizes chan remotecommand.TerminalSize

func (q sizes) Next() *remotecommand.TerminalSize {
	s, ok := <-q
	if !ok {
		return nil
	}
	return &s
}

// Both clients must pass the same tests: ours, and client-go's (which
// shows the fake kubelet is faithful).
var clients = []struct {
	name string
	new  func(*rest.Config, *url.URL) (streamExecutor, error)
}{
	{"lean", func(c *rest.Config, u *url.URL) (streamExecutor, error) { return newSPDYExecutor(c, u) }},
	{"client-go", func(c *rest.Config, u *url.URL) (streamExecutor, error) {
		useClientGo = true
		defer func() { useClientGo = false }()
		return newExecutor(c, u)
	}},
}

func TestSPDYExecEchoResizeAndExitCode(t *testing.T) {
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			resized := make(chan string, 4)
			headers := make(chan http.Header, 1)
			cfg := startKubelet(t, &fakeKubelet{headers: headers, script: func(s *kubeletStreams) {
				go func() {
					dec := json.NewDecoder(s.resize)
					for {
						var size remotecommand.TerminalSize
						if dec.Decode(&size) != nil {
							return
						}
						resized <- fmt.Sprintf("%dx%d", size.Width, size.Height)
					}
				}()
				buf := make([]byte, 1024)
				for {
					n, err := s.stdin.Read(buf)
					if i := bytes.IndexByte(buf[:n], 'q'); i >= 0 {
						_, _ = s.stdout.Write(append(bytes.ToUpper(buf[:i]), "bye"...))
						s.end(3)
						return
					}
					_, _ = s.stdout.Write(bytes.ToUpper(buf[:n]))
					if err != nil {
						return
					}
				}
			}})
			exec, err := cl.new(cfg, execURL(cfg, true))
			if err != nil {
				t.Fatal(err)
			}
			inR, inW := io.Pipe()
			q := make(sizes, 4)
			q <- remotecommand.TerminalSize{Width: 80, Height: 24}
			var out syncBuffer
			done := make(chan error, 1)
			go func() {
				done <- exec.StreamWithContext(context.Background(), remotecommand.StreamOptions{Stdin: inR, Stdout: &out, Tty: true, TerminalSizeQueue: q})
			}()
			h := <-headers
			if h.Get("Authorization") != "Bearer server-token" || h.Get("Impersonate-User") != "alice" || h.Get("Impersonate-Group") != "devs" {
				t.Fatalf("identity headers: %v", h)
			}
			if got := <-resized; got != "80x24" {
				t.Fatalf("first size %s", got)
			}
			_, _ = inW.Write([]byte("hello "))
			waitFor(t, "echo", func() bool { return out.String() == "HELLO " })
			q <- remotecommand.TerminalSize{Width: 100, Height: 30}
			if got := <-resized; got != "100x30" {
				t.Fatalf("second size %s", got)
			}
			_, _ = inW.Write([]byte("world q"))
			err = <-done
			var exitErr utilexec.ExitError
			if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 3 {
				t.Fatalf("want exit code 3, got %v", err)
			}
			if out.String() != "HELLO WORLD bye" {
				t.Fatalf("output %q", out.String())
			}
			if exec.lost() {
				t.Fatal("a reported status counted as lost")
			}
			close(q)
			_ = inW.Close()
		})
	}
}

func TestSPDYExecLargeOutputIsByteExact(t *testing.T) {
	data := make([]byte, 4<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			cfg := startKubelet(t, &fakeKubelet{script: func(s *kubeletStreams) {
				// Pieces of every size, as a pty and a pipe hand them over.
				for rest := data; len(rest) > 0; {
					n := min(len(rest), 1+r.IntN(40<<10))
					if _, err := s.stdout.Write(rest[:n]); err != nil {
						return
					}
					rest = rest[n:]
				}
				_, _ = s.stderr.Write([]byte("done"))
				s.end(0)
			}})
			exec, err := cl.new(cfg, execURL(cfg, false))
			if err != nil {
				t.Fatal(err)
			}
			inR, inW := io.Pipe()
			defer inW.Close()
			var out, errOut syncBuffer
			err = exec.StreamWithContext(context.Background(), remotecommand.StreamOptions{Stdin: inR, Stdout: &out, Stderr: &errOut})
			if err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(out.buf.Bytes()) != sha256.Sum256(data) {
				t.Fatalf("got %d bytes, want %d, not the same", out.buf.Len(), len(data))
			}
			if errOut.String() != "done" {
				t.Fatalf("stderr %q", errOut.String())
			}
			t.Logf("%d bytes in %d writes", out.buf.Len(), out.n)
		})
	}
}

func TestSPDYExecAnswersServerPings(t *testing.T) {
	cfg := startKubelet(t, &fakeKubelet{pings: 20 * time.Millisecond, script: func(s *kubeletStreams) {
		// spdystream's server ends a connection whose pings go unanswered.
		time.Sleep(300 * time.Millisecond)
		_, _ = s.stdout.Write([]byte("still here"))
		s.end(0)
	}})
	exec, err := newSPDYExecutor(cfg, execURL(cfg, true))
	if err != nil {
		t.Fatal(err)
	}
	inR, inW := io.Pipe()
	defer inW.Close()
	var out syncBuffer
	if err := exec.StreamWithContext(context.Background(), remotecommand.StreamOptions{Stdin: inR, Stdout: &out, Tty: true}); err != nil {
		t.Fatal(err)
	}
	if out.String() != "still here" {
		t.Fatalf("output %q", out.String())
	}
}

func TestSPDYExecLostStatus(t *testing.T) {
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			cfg := startKubelet(t, &fakeKubelet{script: func(s *kubeletStreams) {
				_, _ = s.stdout.Write([]byte("partial"))
				_ = s.conn.Close() // gone without a status
			}})
			exec, err := cl.new(cfg, execURL(cfg, true))
			if err != nil {
				t.Fatal(err)
			}
			inR, inW := io.Pipe()
			defer inW.Close()
			var out syncBuffer
			err = exec.StreamWithContext(context.Background(), remotecommand.StreamOptions{Stdin: inR, Stdout: &out, Tty: true})
			if err != nil || !exec.lost() {
				t.Fatalf("err %v, lost %v", err, exec.lost())
			}
		})
	}
}

func TestSPDYExecContextEndsIt(t *testing.T) {
	cfg := startKubelet(t, &fakeKubelet{script: func(s *kubeletStreams) {}})
	exec, err := newSPDYExecutor(cfg, execURL(cfg, true))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	inR, inW := io.Pipe()
	defer inW.Close()
	done := make(chan error, 1)
	go func() {
		done <- exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: inR, Stdout: io.Discard, Tty: true})
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the exec did not end with its context")
	}
}

func TestSPDYExecUpgradeRefused(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"p\" is forbidden: User \"bob\" cannot create resource \"pods/exec\"","reason":"Forbidden","code":403}`))
	}))
	defer srv.Close()
	cfg := &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	exec, err := newSPDYExecutor(cfg, execURL(cfg, true))
	if err != nil {
		t.Fatal(err)
	}
	err = exec.StreamWithContext(context.Background(), remotecommand.StreamOptions{Stdin: strings.NewReader(""), Stdout: io.Discard, Tty: true})
	if err == nil || err.Error() != `unable to upgrade connection: pods "p" is forbidden: User "bob" cannot create resource "pods/exec"` {
		t.Fatalf("got %v", err)
	}
}

// pusher is a terminal's stdin and size queue as sockjs makes them: the
// executor is given a sink rather than reading.
type pusher struct {
	mu     sync.Mutex
	send   func([]byte) error
	resize func(remotecommand.TerminalSize) error
	ready  chan struct{}
}

func (p *pusher) Read([]byte) (int, error) { select {} }
func (p *pusher) Next() *remotecommand.TerminalSize {
	select {}
}
func (p *pusher) PushTo(send func([]byte) error) error {
	p.mu.Lock()
	p.send = send
	p.mu.Unlock()
	// What was typed before the stream was up goes first.
	err := send([]byte("typed early "))
	close(p.ready)
	return err
}

type sizePusher struct{ *pusher }

func (s sizePusher) PushTo(send func(remotecommand.TerminalSize) error) {
	_ = send(remotecommand.TerminalSize{Width: 132, Height: 43})
}

func TestSPDYExecPushedKeystrokesAndSizes(t *testing.T) {
	resized := make(chan string, 1)
	cfg := startKubelet(t, &fakeKubelet{script: func(s *kubeletStreams) {
		var size remotecommand.TerminalSize
		if err := json.NewDecoder(s.resize).Decode(&size); err != nil {
			resized <- err.Error()
		}
		resized <- fmt.Sprintf("%dx%d", size.Width, size.Height)
		buf := make([]byte, 1024)
		var got []byte
		for !bytes.HasSuffix(got, []byte("q")) {
			n, err := s.stdin.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				return
			}
		}
		_, _ = s.stdout.Write(got)
		s.end(0)
	}})
	exec, err := newSPDYExecutor(cfg, execURL(cfg, true))
	if err != nil {
		t.Fatal(err)
	}
	p := &pusher{ready: make(chan struct{})}
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- exec.StreamWithContext(context.Background(), remotecommand.StreamOptions{Stdin: p, Stdout: &out, Tty: true, TerminalSizeQueue: sizePusher{p}})
	}()
	<-p.ready
	p.mu.Lock()
	send := p.send
	p.mu.Unlock()
	for _, k := range []string{"a", "b", "q"} {
		if err := send([]byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if out.String() != "typed early abq" {
		t.Fatalf("output %q", out.String())
	}
	if got := <-resized; got != "132x43" {
		t.Fatalf("size %s", got)
	}
}
