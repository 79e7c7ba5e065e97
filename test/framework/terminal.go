package framework

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
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"k8s.io/client-go/rest"
)

// Transport is the SockJS transport a Terminal uses.
type Transport string

const (
	WebSocket    Transport = "websocket"
	XHRStreaming Transport = "xhr_streaming"
)

// Terminal is a SockJS client of console-apiserver's attach subresource,
// speaking the terminal protocol as a browser front-end does.
type Terminal struct {
	// Out collects stdout.
	Out *Output

	transport Transport
	base      string // .../attach/{server}/{session}
	http      *http.Client
	header    http.Header
	ws        *websocket.Conn
	wsMu      sync.Mutex

	mu       sync.Mutex
	toasts   []string
	exitCode *int
	pongs    int
	closed   *Closed
	done     chan struct{}
	opened   chan struct{}
	cancel   context.CancelFunc
}

// Closed is the SockJS close frame the server ended with.
type Closed struct {
	Code   int
	Reason string
}

// TerminalOptions are optional settings of OpenTerminal.
type TerminalOptions struct {
	Transport Transport
	// Header is sent with every request (e.g. Origin, or identity headers).
	Header http.Header
}

// AttachURL is the SockJS base URL of a pod's terminal, as a front-end
// builds it.
func AttachURL(host, namespace, pod string) string {
	return fmt.Sprintf("%s/apis/%s/%s/namespaces/%s/pods/%s/attach", host, ConsoleGroup, ConsoleVersion, namespace, pod)
}

// OpenTerminal opens a SockJS session to the pod's attach subresource
// through cfg's server (kube-apiserver), authenticated as cfg.
func OpenTerminal(ctx context.Context, cfg *rest.Config, namespace, pod string, o TerminalOptions) (*Terminal, error) {
	if o.Transport == "" {
		o.Transport = WebSocket
	}
	client, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	t := &Terminal{
		Out:       NewOutput(),
		transport: o.Transport,
		base:      AttachURL(cfg.Host, namespace, pod) + "/" + randomHex(3) + "/" + randomHex(8),
		http:      client,
		header:    o.Header.Clone(),
		done:      make(chan struct{}),
		opened:    make(chan struct{}),
		cancel:    cancel,
	}
	if t.header == nil {
		t.header = http.Header{}
	}
	if cfg.BearerToken != "" {
		t.header.Set("Authorization", "Bearer "+cfg.BearerToken)
	}
	switch o.Transport {
	case WebSocket:
		tlsCfg, err := rest.TLSConfigFor(cfg)
		if err != nil {
			cancel()
			return nil, err
		}
		dialer := websocket.Dialer{TLSClientConfig: tlsCfg, HandshakeTimeout: 30 * time.Second}
		url := "wss" + strings.TrimPrefix(t.base, "https") + "/websocket"
		conn, resp, err := dialer.DialContext(ctx, url, t.header)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("opening %s: %w%s", url, err, responseText(resp))
		}
		t.ws = conn
		go t.readWebSocket()
	case XHRStreaming:
		go t.readXHRStreaming(ctx)
	default:
		cancel()
		return nil, fmt.Errorf("unknown transport %q", o.Transport)
	}
	return t, nil
}

func responseText(resp *http.Response) string {
	if resp == nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return fmt.Sprintf(" (%s: %s)", resp.Status, bytes.TrimSpace(b))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Send sends one protocol message (marshalled to JSON).
func (t *Terminal) Send(msg any) error {
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	return t.SendRaw(string(b))
}

// SendRaw sends one SockJS message as is (e.g. "ping", or malformed JSON).
func (t *Terminal) SendRaw(msg string) error {
	body, _ := json.Marshal([]string{msg})
	if t.transport == WebSocket {
		t.wsMu.Lock()
		defer t.wsMu.Unlock()
		return t.ws.WriteMessage(websocket.TextMessage, body)
	}
	// Like sockjs-client, send only once the session is open: the server
	// creates it while answering the first receiving request.
	select {
	case <-t.opened:
	case <-t.done:
		return errors.New("the session ended before it opened")
	case <-time.After(30 * time.Second):
		return errors.New("the session did not open within 30s")
	}
	req, err := http.NewRequest(http.MethodPost, t.base+"/xhr_send", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header = t.header.Clone()
	req.Header.Set("Content-Type", "text/plain")
	resp, err := t.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("xhr_send: %s", responseText(resp))
	}
	return nil
}

// Bind sends the bind frame.
func (t *Terminal) Bind(id string) error {
	return t.Send(map[string]string{"Op": "bind", "SessionID": id})
}

// Stdin types s.
func (t *Terminal) Stdin(s string) error { return t.Send(map[string]string{"Op": "stdin", "Data": s}) }

// Resize sends a resize.
func (t *Terminal) Resize(rows, cols int) error {
	return t.Send(map[string]any{"Op": "resize", "Rows": rows, "Cols": cols})
}

// Done is closed when the session ended (close frame or lost connection).
func (t *Terminal) Done() <-chan struct{} { return t.done }

// WaitClosed waits for the server's close frame.
func (t *Terminal) WaitClosed(ctx context.Context) (Closed, error) {
	select {
	case <-t.done:
	case <-ctx.Done():
		return Closed{}, fmt.Errorf("terminal not closed: %w; output %q, toasts %q", ctx.Err(), tail(t.Out.String(), 300), t.Toasts())
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed == nil {
		return Closed{}, errors.New("connection lost without a close frame")
	}
	return *t.closed, nil
}

// Toasts are the toast messages received so far.
func (t *Terminal) Toasts() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.toasts...)
}

// ExitCode is the exit frame's code, nil before (or without) one.
func (t *Terminal) ExitCode() *int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.exitCode
}

// Pongs counts raw pong replies.
func (t *Terminal) Pongs() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pongs
}

// Close drops the connection without a goodbye, as a closed browser tab does.
func (t *Terminal) Close() {
	t.cancel()
	if t.ws != nil {
		_ = t.ws.Close()
	}
}

func (t *Terminal) finish(c *Closed) {
	t.mu.Lock()
	if t.closed == nil && c != nil {
		t.closed = c
	}
	t.mu.Unlock()
	select {
	case <-t.done:
	default:
		close(t.done)
	}
}

// handleFrame handles one SockJS frame; it returns true on a close frame.
func (t *Terminal) handleFrame(frame string) bool {
	switch {
	case frame == "o":
		select {
		case <-t.opened:
		default:
			close(t.opened)
		}
	case frame == "h" || frame == "":
	case strings.HasPrefix(frame, "a"):
		var msgs []string
		if err := json.Unmarshal([]byte(frame[1:]), &msgs); err != nil {
			return false
		}
		for _, m := range msgs {
			t.handleMessage(m)
		}
	case strings.HasPrefix(frame, "c"):
		var c []any
		_ = json.Unmarshal([]byte(frame[1:]), &c)
		closed := &Closed{}
		if len(c) == 2 {
			code, _ := c[0].(float64)
			closed.Code = int(code)
			closed.Reason, _ = c[1].(string)
		}
		t.finish(closed)
		return true
	}
	return false
}

func (t *Terminal) handleMessage(m string) {
	if m == "pong" {
		t.mu.Lock()
		t.pongs++
		t.mu.Unlock()
		return
	}
	var msg struct {
		Op   string
		Data string
		Code *int
	}
	if err := json.Unmarshal([]byte(m), &msg); err != nil {
		return
	}
	switch msg.Op {
	case "stdout":
		_, _ = t.Out.Write([]byte(msg.Data))
	case "toast":
		t.mu.Lock()
		t.toasts = append(t.toasts, msg.Data)
		t.mu.Unlock()
	case "exit":
		t.mu.Lock()
		t.exitCode = msg.Code
		t.mu.Unlock()
	}
}

func (t *Terminal) readWebSocket() {
	defer t.finish(nil)
	for {
		_, data, err := t.ws.ReadMessage()
		if err != nil {
			return
		}
		if t.handleFrame(string(data)) {
			return
		}
	}
}

// readXHRStreaming polls xhr_streaming until the session closes: the server
// ends each response after a byte limit, and the client opens the next.
func (t *Terminal) readXHRStreaming(ctx context.Context) {
	defer t.finish(nil)
	for ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.base+"/xhr_streaming", nil)
		if err != nil {
			return
		}
		req.Header = t.header.Clone()
		resp, err := t.http.Do(req)
		if err != nil {
			return
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			t.finish(&Closed{Code: resp.StatusCode, Reason: responseText(resp)})
			return
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			line := sc.Text()
			if strings.Trim(line, "h") == "" {
				continue // the prelude, and heartbeats
			}
			if t.handleFrame(line) {
				resp.Body.Close()
				return
			}
		}
		resp.Body.Close()
	}
}

// Refused waits for the session to end as a refusal: close code 2, after a
// toast that contains why. It returns what happened otherwise.
func (t *Terminal) Refused(ctx context.Context, why string) error {
	closed, err := t.WaitClosed(ctx)
	if err != nil {
		return err
	}
	toasts := strings.Join(t.Toasts(), " | ")
	if closed.Code != 2 || !strings.Contains(toasts, why) {
		return fmt.Errorf("closed %+v with toasts %q; want code 2 and a toast saying %q", closed, toasts, why)
	}
	return nil
}
