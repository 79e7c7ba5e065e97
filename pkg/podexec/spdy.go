package podexec

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	utilremotecommand "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"

	"github.com/kubecube-io/console-apiserver/pkg/sockjs"
)

// streamExecutor runs one exec: client-go's SPDY executor, or ours.
type streamExecutor interface {
	StreamWithContext(ctx context.Context, o remotecommand.StreamOptions) error
	// lost reports whether the kubelet should have said how the command
	// ended and did not (see statusUpgrader).
	lost() bool
}

// execClientEnv selects client-go's SPDY executor when set to "client-go":
// an escape hatch, and the "before" of the benchmarks.
const execClientEnv = "CONSOLE_APISERVER_EXEC_CLIENT"

var useClientGo = os.Getenv(execClientEnv) == "client-go"

// newExecutor returns our SPDY client, unless a proxy stands between this
// server and kube-apiserver (our client dials directly) or the environment
// asks for client-go's.
func newExecutor(cfg *rest.Config, u *url.URL) (streamExecutor, error) {
	if useClientGo || usesProxy(cfg, u) {
		transport, upgrader, err := spdy.RoundTripperFor(cfg)
		if err != nil {
			return nil, err
		}
		status := &statusUpgrader{Upgrader: upgrader}
		exec, err := remotecommand.NewSPDYExecutorForTransports(transport, status, http.MethodPost, u)
		if err != nil {
			return nil, err
		}
		return clientGoExecutor{Executor: exec, status: status}, nil
	}
	return newSPDYExecutor(cfg, u)
}

type clientGoExecutor struct {
	remotecommand.Executor
	status *statusUpgrader
}

func (e clientGoExecutor) lost() bool { return e.status.lost() }

func usesProxy(cfg *rest.Config, u *url.URL) bool {
	proxy := http.ProxyFromEnvironment
	if cfg.Proxy != nil {
		proxy = cfg.Proxy
	}
	p, err := proxy(&http.Request{URL: u})
	return err != nil || p != nil
}

// spdyExecutor runs a command over SPDY/3.1 with the remotecommand protocol
// (v5 or v4, which are the same over SPDY), as client-go's SPDY executor
// does, but lean: a terminal holds one for its whole life, and client-go's
// (moby/spdystream underneath) costs each one some 850 KiB of heap (a zlib
// compressor for headers, which a connection keeps though an exec sends
// headers only at its start), a dozen goroutines (five frame workers and
// their queues, a frame reader, pings, one per stream copy) and two
// goroutine hand-offs and an allocation for every frame of output.
//
// Here the caller's goroutine reads the connection and writes each frame's
// output straight to the terminal (consecutive frames that have already
// arrived go out together); the terminal's reader writes keystrokes and
// resizes to the connection itself (sockjs.StdinPusher, ResizePusher; other
// streams get a goroutine each, as with client-go); pings are a timer. Header blocks are sent as stored (uncompressed)
// deflate blocks, which any zlib reader takes, so there is no compressor at
// all, and the server's header blocks (it sends only empty replies) are
// skipped unread. SPDY flow control is not used by Kubernetes' SPDY peers
// (spdystream ignores it), as with client-go.
type spdyExecutor struct {
	url       *url.URL
	tlsConfig *tls.Config
	// wrap adds what authenticates the request (token, impersonation, user
	// agent) as client-go would.
	wrap http.RoundTripper

	protocol atomic.Pointer[string]
	reported atomic.Bool
}

func newSPDYExecutor(cfg *rest.Config, u *url.URL) (*spdyExecutor, error) {
	tlsConfig, err := tlsConfigs.get(cfg)
	if err != nil {
		return nil, err
	}
	wrap, err := rest.HTTPWrappersForConfig(cfg, mirrorRequest{})
	if err != nil {
		return nil, err
	}
	return &spdyExecutor{url: u, tlsConfig: tlsConfig, wrap: wrap}, nil
}

// tlsConfigs shares TLS configurations between execs to the same cluster:
// building one parses the CA bundle and makes a certificate pool, which
// every connection would otherwise keep a copy of. Entries are rebuilt
// after a minute, so that rotated files are read again.
var tlsConfigs = &tlsConfigCache{entries: map[tlsConfigKey]tlsConfigEntry{}}

const tlsConfigTTL = time.Minute

type tlsConfigKey struct {
	insecure                  bool
	serverName, nextProtos    string
	certFile, keyFile, caFile string
	certData, keyData, caData string
}

type tlsConfigEntry struct {
	cfg     *tls.Config
	created time.Time
}

type tlsConfigCache struct {
	mu      sync.Mutex
	entries map[tlsConfigKey]tlsConfigEntry
}

func (c *tlsConfigCache) get(cfg *rest.Config) (*tls.Config, error) {
	if cfg.ExecProvider != nil || cfg.AuthProvider != nil || cfg.Dial != nil || cfg.WrapTransport != nil {
		// Certificates may come from callbacks: build afresh.
		return rest.TLSConfigFor(cfg)
	}
	t := cfg.TLSClientConfig
	key := tlsConfigKey{
		insecure: t.Insecure, serverName: t.ServerName, nextProtos: strings.Join(t.NextProtos, ","),
		certFile: t.CertFile, keyFile: t.KeyFile, caFile: t.CAFile,
		certData: string(t.CertData), keyData: string(t.KeyData), caData: string(t.CAData),
	}
	c.mu.Lock()
	e, ok := c.entries[key]
	c.mu.Unlock()
	if ok && time.Since(e.created) < tlsConfigTTL {
		return e.cfg, nil
	}
	tc, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if len(c.entries) > 64 {
		clear(c.entries) // many clusters, or churn: start over
	}
	c.entries[key] = tlsConfigEntry{cfg: tc, created: time.Now()}
	c.mu.Unlock()
	return tc, nil
}

// mirrorRequest ends a round tripper chain: it returns the request as the
// chain made it, for us to write to a connection of our own.
type mirrorRequest struct{}

func (mirrorRequest) RoundTrip(req *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: req}, nil
}

func (e *spdyExecutor) lost() bool {
	p := e.protocol.Load()
	return p != nil && !e.reported.Load() &&
		(*p == utilremotecommand.StreamProtocolV4Name || *p == utilremotecommand.StreamProtocolV5Name)
}

// Stream implements remotecommand.Executor.
func (e *spdyExecutor) Stream(o remotecommand.StreamOptions) error {
	return e.StreamWithContext(context.Background(), o)
}

// SPDY/3 framing.
const (
	spdyVersion         = 3
	typeSynStream       = 1
	typeRstStream       = 3
	typePing            = 6
	flagFin             = 0x01
	frameHeaderLen      = 8
	maxStatusLen        = 64 << 10
	spdyPingPeriod      = 5 * time.Second // as client-go
	handshakeBufferSize = 4 << 10
	readBufferSize      = 64 << 10
	maxOutputBatch      = 32 << 10
	spdyDialTimeout     = 30 * time.Second
	maxUpgradeErrLen    = 64 << 10
)

// StreamWithContext implements remotecommand.Executor.
func (e *spdyExecutor) StreamWithContext(ctx context.Context, o remotecommand.StreamOptions) error {
	conn, leftover, err := e.connect(ctx)
	if err != nil {
		return err
	}
	c := &spdyConn{conn: conn, in: newConnReader(conn, leftover)}
	defer c.close()
	stop := context.AfterFunc(ctx, c.close)
	defer stop()

	// The streams, in client-go's order (its ids, too).
	var ids struct{ err, stdin, stdout, stderr, resize uint32 }
	next := uint32(1)
	open := func(kind string) uint32 {
		id := next
		next += 2
		if err == nil {
			err = c.synStream(id, kind)
		}
		return id
	}
	ids.err = open(corev1.StreamTypeError)
	if o.Stdin != nil {
		ids.stdin = open(corev1.StreamTypeStdin)
	}
	if o.Stdout != nil {
		ids.stdout = open(corev1.StreamTypeStdout)
	}
	if o.Stderr != nil && !o.Tty {
		ids.stderr = open(corev1.StreamTypeStderr)
	}
	if o.Tty {
		ids.resize = open(corev1.StreamTypeResize)
	}
	if err == nil {
		// Nothing to say on the error stream (client-go closes it too).
		err = c.data(ids.err, nil, true)
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("creating streams: %w", err)
	}

	if ids.stdin != 0 {
		if ps, ok := o.Stdin.(sockjs.StdinPusher); ok {
			// Keystrokes are written by the terminal's reader.
			_ = ps.PushTo(stdinWriter{c: c, id: ids.stdin}.send)
		} else {
			go c.copyStdin(ids.stdin, o.Stdin)
		}
	}
	if ids.resize != 0 && o.TerminalSizeQueue != nil {
		if rp, ok := o.TerminalSizeQueue.(sockjs.ResizePusher); ok {
			rp.PushTo(func(size remotecommand.TerminalSize) error { return c.resize(ids.resize, size) })
		} else {
			go c.sendResizes(ids.resize, o.TerminalSizeQueue)
		}
	}
	c.schedulePing()

	status, err := c.readLoop(ids.err, ids.stdout, ids.stderr, o.Stdout, o.Stderr)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(status) > 0 {
		e.reported.Store(true)
		return decodeStatus(status)
	}
	_ = err // a connection that ended early: the missing status says so (lost)
	return nil
}

// connect dials kube-apiserver and upgrades the exec request to SPDY/3.1.
// It returns the connection and what was read past the response.
func (e *spdyExecutor) connect(ctx context.Context) (net.Conn, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url.String(), nil)
	if err != nil {
		return nil, nil, fmt.Errorf("error creating request: %w", err)
	}
	req.Header.Set(httpstream.HeaderConnection, httpstream.HeaderUpgrade)
	req.Header.Set(httpstream.HeaderUpgrade, "SPDY/3.1")
	req.Header.Add(httpstream.HeaderProtocolVersion, utilremotecommand.StreamProtocolV5Name)
	req.Header.Add(httpstream.HeaderProtocolVersion, utilremotecommand.StreamProtocolV4Name)
	resp, err := e.wrap.RoundTrip(req)
	if err != nil {
		return nil, nil, fmt.Errorf("error sending request: %w", err)
	}
	req = resp.Request

	conn, err := e.dial(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("error sending request: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("error sending request: %w", err)
	}
	br := bufio.NewReaderSize(conn, handshakeBufferSize)
	resp, err = http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, fmt.Errorf("error sending request: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols ||
		!strings.Contains(strings.ToLower(resp.Header.Get(httpstream.HeaderConnection)), "upgrade") ||
		!strings.Contains(strings.ToLower(resp.Header.Get(httpstream.HeaderUpgrade)), "spdy/3.1") {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxUpgradeErrLen))
		resp.Body.Close()
		conn.Close()
		return nil, nil, fmt.Errorf("unable to upgrade connection: %s", upgradeErrorMessage(body))
	}
	p := resp.Header.Get(httpstream.HeaderProtocolVersion)
	if p != utilremotecommand.StreamProtocolV5Name && p != utilremotecommand.StreamProtocolV4Name {
		conn.Close()
		return nil, nil, fmt.Errorf("the server chose exec protocol %q; this client speaks %s and %s",
			p, utilremotecommand.StreamProtocolV5Name, utilremotecommand.StreamProtocolV4Name)
	}
	e.protocol.Store(&p)
	leftover, _ := br.Peek(br.Buffered())
	return conn, bytes.Clone(leftover), nil
}

func (e *spdyExecutor) dial(ctx context.Context) (net.Conn, error) {
	host := e.url.Hostname()
	port := e.url.Port()
	if port == "" {
		port = "443"
		if e.url.Scheme == "http" {
			port = "80"
		}
	}
	d := net.Dialer{Timeout: spdyDialTimeout, KeepAlive: 30 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, port))
	if err != nil || e.url.Scheme == "http" {
		return conn, err
	}
	cfg := e.tlsConfig
	if cfg == nil {
		cfg = &tls.Config{}
	}
	cfg = cfg.Clone()
	if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
		cfg.ServerName = host
	}
	// An upgrade is HTTP/1.1.
	cfg.NextProtos = []string{"http/1.1"}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return tc, nil
}

// upgradeErrorMessage is the message of an upgrade refused (as client-go
// words it): a Status's message, else the body.
func upgradeErrorMessage(body []byte) string {
	var status struct {
		Message string `json:"message"`
		Error   string `json:"error"`
	}
	if json.Unmarshal(body, &status) == nil {
		if msg := strings.TrimSpace(status.Message); msg != "" {
			return msg
		}
		if msg := strings.TrimSpace(status.Error); msg != "" {
			return msg
		}
	}
	if msg := strings.TrimSpace(string(body)); msg != "" {
		return msg
	}
	return "empty server response"
}

// decodeStatus turns the kubelet's v4 status into an error, as client-go's
// errorDecoderV4 does.
func decodeStatus(message []byte) error {
	status := metav1.Status{}
	if err := json.Unmarshal(message, &status); err != nil {
		return fmt.Errorf("error stream protocol error: %v in %q", err, string(message))
	}
	switch status.Status {
	case metav1.StatusSuccess:
		return nil
	case metav1.StatusFailure:
		if status.Reason == utilremotecommand.NonZeroExitCodeReason {
			if status.Details == nil {
				return errors.New("error stream protocol error: details must be set")
			}
			for i := range status.Details.Causes {
				c := &status.Details.Causes[i]
				if c.Type != utilremotecommand.ExitCodeCauseType {
					continue
				}
				rc, err := strconv.ParseUint(c.Message, 10, 8)
				if err != nil {
					return fmt.Errorf("error stream protocol error: invalid exit code value %q", c.Message)
				}
				return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", rc), Code: int(rc)}
			}
			return fmt.Errorf("error stream protocol error: no %s cause given", utilremotecommand.ExitCodeCauseType)
		}
	default:
		return errors.New("error stream protocol error: unknown error")
	}
	return errors.New(status.Message)
}

// spdyConn is one SPDY connection of an exec.
type spdyConn struct {
	conn net.Conn
	in   *connReader // the reader's only

	wmu       sync.Mutex
	werr      error
	pingID    uint32
	pingTimer *time.Timer
	closed    bool
	closeOnce sync.Once
}

func (c *spdyConn) close() {
	c.closeOnce.Do(func() {
		c.wmu.Lock()
		c.closed = true
		if c.pingTimer != nil {
			c.pingTimer.Stop()
		}
		c.wmu.Unlock()
		_ = c.conn.Close()
	})
}

// write writes one whole frame.
func (c *spdyConn) write(frame []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	if _, err := c.conn.Write(frame); err != nil {
		c.werr = err
		return err
	}
	return nil
}

func putControlHeader(b []byte, typ uint16, flags byte, length int) {
	binary.BigEndian.PutUint16(b[0:2], 0x8000|spdyVersion)
	binary.BigEndian.PutUint16(b[2:4], typ)
	b[4] = flags
	put24(b[5:8], length)
}

func put24(b []byte, n int) {
	b[0], b[1], b[2] = byte(n>>16), byte(n>>8), byte(n)
}

// synStream opens a stream whose one header is streamType: kind. The
// header block is zlib data (SPDY/3 compresses header blocks with one zlib
// stream per direction) made of stored, uncompressed deflate blocks: a
// zlib header before the first, then one block per header block.
func (c *spdyConn) synStream(id uint32, kind string) error {
	var block []byte
	block = binary.BigEndian.AppendUint32(block, 1) // one name/value pair
	block = binary.BigEndian.AppendUint32(block, uint32(len("streamtype")))
	block = append(block, "streamtype"...)
	block = binary.BigEndian.AppendUint32(block, uint32(len(kind)))
	block = append(block, kind...)

	frame := make([]byte, frameHeaderLen, frameHeaderLen+10+2+5+len(block)+5)
	frame = binary.BigEndian.AppendUint32(frame, id&0x7fffffff)
	frame = binary.BigEndian.AppendUint32(frame, 0) // associated stream
	frame = append(frame, 0, 0)                     // priority 0, slot 0
	if id == 1 {
		// zlib header: deflate, 32 KiB window, no preset dictionary (none
		// is needed to read stored blocks); 0x7801 is a multiple of 31.
		frame = append(frame, 0x78, 0x01)
	}
	// A stored block that is not the last: BFINAL=0, BTYPE=00, padded to
	// the byte; then LEN and its complement, little-endian; then the data.
	frame = append(frame, 0x00)
	frame = binary.LittleEndian.AppendUint16(frame, uint16(len(block)))
	frame = binary.LittleEndian.AppendUint16(frame, ^uint16(len(block)))
	frame = append(frame, block...)
	// Then an empty one, as zlib's sync flush ends each header block: a
	// reader hands out a block's data only at the next block boundary.
	frame = append(frame, 0x00, 0x00, 0x00, 0xff, 0xff)
	putControlHeader(frame, typeSynStream, 0, len(frame)-frameHeaderLen)
	return c.write(frame)
}

// data writes one data frame.
func (c *spdyConn) data(id uint32, p []byte, fin bool) error {
	frame := make([]byte, frameHeaderLen+len(p))
	binary.BigEndian.PutUint32(frame[0:4], id&0x7fffffff)
	if fin {
		frame[4] = flagFin
	}
	put24(frame[5:8], len(p))
	copy(frame[frameHeaderLen:], p)
	return c.write(frame)
}

func (c *spdyConn) ping(id uint32) error {
	var frame [frameHeaderLen + 4]byte
	putControlHeader(frame[:], typePing, 0, 4)
	binary.BigEndian.PutUint32(frame[8:], id)
	return c.write(frame[:])
}

// schedulePing sends a ping every spdyPingPeriod (odd ids are ours), which
// keeps idle connections alive through proxies, as client-go does.
func (c *spdyConn) schedulePing() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return
	}
	c.pingTimer = time.AfterFunc(spdyPingPeriod, func() {
		c.wmu.Lock()
		c.pingID += 2
		id := c.pingID - 1
		c.wmu.Unlock()
		if c.ping(id) == nil {
			c.schedulePing()
		}
	})
}

// stdinChunk bounds one stdin frame (and the copy buffer, held only while
// a keystroke is being sent).
const stdinChunk = 32 << 10

var stdinBufs = sync.Pool{New: func() any { b := make([]byte, stdinChunk); return &b }}

// copyStdin sends stdin until it ends (then closes the stream, as client-go
// does) or the connection fails. If stdin can write itself out (the
// terminal's keystroke buffer can), no buffer of ours waits here.
func (c *spdyConn) copyStdin(id uint32, stdin io.Reader) {
	w := stdinWriter{c: c, id: id}
	var err error
	if wt, ok := stdin.(io.WriterTo); ok {
		_, err = wt.WriteTo(w)
	} else {
		bp := stdinBufs.Get().(*[]byte)
		_, err = io.CopyBuffer(w, onlyReader{stdin}, *bp)
		stdinBufs.Put(bp)
	}
	if err == nil {
		_ = c.data(id, nil, true)
	}
}

type onlyReader struct{ io.Reader }

type stdinWriter struct {
	c  *spdyConn
	id uint32
}

func (w stdinWriter) Write(p []byte) (int, error) {
	for rest := p; len(rest) > 0; {
		n := min(len(rest), stdinChunk)
		if err := w.c.data(w.id, rest[:n], false); err != nil {
			return len(p) - len(rest), err
		}
		rest = rest[n:]
	}
	return len(p), nil
}

func (w stdinWriter) send(p []byte) error {
	_, err := w.Write(p)
	return err
}

// sendResizes sends each terminal size until the queue ends.
func (c *spdyConn) sendResizes(id uint32, q remotecommand.TerminalSizeQueue) {
	for {
		size := q.Next()
		if size == nil || c.resize(id, *size) != nil {
			return
		}
	}
}

// resize sends a terminal size as client-go does: JSON, one per line.
func (c *spdyConn) resize(id uint32, size remotecommand.TerminalSize) error {
	b, _ := json.Marshal(size)
	return c.data(id, append(b, '\n'), false)
}

// readLoop reads frames until stdout and stderr have ended and the status
// has come (or the connection ends), and returns the status.
func (c *spdyConn) readLoop(errID, stdoutID, stderrID uint32, stdout, stderr io.Writer) ([]byte, error) {
	var (
		status     []byte
		statusOpen = true
		outOpen    = stdoutID != 0
		errOpen    = stderrID != 0
		hdr        [frameHeaderLen]byte
		out        outputBatch
	)
	defer out.release()
	for statusOpen || outOpen || errOpen {
		if _, err := io.ReadFull(c.in, hdr[:]); err != nil {
			return status, err
		}
		length := int(hdr[5])<<16 | int(hdr[6])<<8 | int(hdr[7])
		fin := hdr[4]&flagFin != 0
		if hdr[0]&0x80 != 0 { // control frame
			typ := binary.BigEndian.Uint16(hdr[2:4])
			switch {
			case typ == typePing && length == 4:
				var id [4]byte
				if _, err := io.ReadFull(c.in, id[:]); err != nil {
					return status, err
				}
				if n := binary.BigEndian.Uint32(id[:]); n%2 == 0 { // the server's: answer
					if err := c.ping(n); err != nil {
						return status, err
					}
				}
			case typ == typeRstStream && length == 8:
				var b [8]byte
				if _, err := io.ReadFull(c.in, b[:]); err != nil {
					return status, err
				}
				switch binary.BigEndian.Uint32(b[0:4]) & 0x7fffffff {
				case errID:
					statusOpen = false
				case stdoutID:
					outOpen = false
				case stderrID:
					errOpen = false
				}
			default: // replies (empty), settings, go-away, window updates
				if _, err := c.in.Discard(length); err != nil {
					return status, err
				}
			}
			continue
		}
		id := binary.BigEndian.Uint32(hdr[0:4]) & 0x7fffffff
		switch {
		case id == stdoutID && outOpen, id == stderrID && errOpen:
			w := stdout
			if id == stderrID {
				w = stderr
			}
			if err := out.deliver(c.in, w, id, length, &hdr); err != nil {
				return status, err
			}
			// deliver may have taken more frames of the same stream.
			if hdr[4]&flagFin != 0 {
				if id == stdoutID {
					outOpen = false
				} else {
					errOpen = false
				}
			}
			continue
		case id == errID && statusOpen:
			if len(status)+length > maxStatusLen {
				return status, errors.New("exec status too long")
			}
			start := len(status)
			status = append(status, make([]byte, length)...)
			if _, err := io.ReadFull(c.in, status[start:]); err != nil {
				return status, err
			}
			if fin {
				statusOpen = false
			}
		default: // stdin's end, or a stream already ended
			if _, err := c.in.Discard(length); err != nil {
				return status, err
			}
		}
	}
	return status, nil
}

// outputBatch gathers the payloads of consecutive data frames of one stream
// that have already arrived, so that a burst of small frames (a TTY's
// output comes in pieces of a few KiB, each its own TLS record) reaches the
// terminal as one Write: one SockJS frame, a few large TLS records and
// system calls rather than one per piece. It waits for nothing that has not
// arrived: keystroke echo goes out at once. Its buffer is pooled, held only
// while output flows.
type outputBatch struct {
	bp *[]byte
}

var outputBufs = sync.Pool{New: func() any { b := make([]byte, 0, maxOutputBatch); return &b }}

func (o *outputBatch) release() {
	if o.bp != nil {
		outputBufs.Put(o.bp)
		o.bp = nil
	}
}

// deliver reads the payload of the data frame whose header is hdr, then
// the payloads of the frames of the same stream that follow and have
// arrived already, and writes them all at once. On return hdr holds the
// last frame's header (for its FIN flag). A write error is not returned
// (the terminal sees its own failures): the output is dropped, and the
// connection read on for the status, as client-go does.
func (o *outputBatch) deliver(in *connReader, w io.Writer, id uint32, length int, hdr *[frameHeaderLen]byte) error {
	if o.bp == nil {
		o.bp = outputBufs.Get().(*[]byte)
	}
	buf := (*o.bp)[:0]
	for {
		if cap(buf)-len(buf) < length {
			if len(buf) > 0 {
				writeOut(w, buf)
				buf = buf[:0]
			}
			if length > cap(buf) {
				buf = make([]byte, 0, length)
			}
		}
		start := len(buf)
		buf = buf[:start+length]
		if _, err := io.ReadFull(in, buf[start:]); err != nil {
			return err
		}
		if hdr[4]&flagFin != 0 {
			break
		}
		// The next frame, if it has arrived whole and is more of the same.
		next, ok := in.peekNow(frameHeaderLen)
		if !ok || next[0]&0x80 != 0 || binary.BigEndian.Uint32(next[0:4])&0x7fffffff != id {
			break
		}
		n := int(next[5])<<16 | int(next[6])<<8 | int(next[7])
		if len(buf)+n > maxOutputBatch {
			break
		}
		if _, ok := in.peekNow(frameHeaderLen + n); !ok {
			break
		}
		copy(hdr[:], next)
		_, _ = in.Discard(frameHeaderLen)
		length = n
	}
	if len(buf) > 0 {
		writeOut(w, buf)
	}
	if cap(buf) == maxOutputBatch {
		*o.bp = buf[:0]
	}
	// Idle terminals hold no batch buffer.
	if in.Buffered() == 0 {
		o.release()
	}
	return nil
}

// connReader reads the connection for the frame reader. When nothing is
// buffered it reads straight into the caller's memory (an idle terminal
// holds no read buffer: TLS keeps the record it decrypted anyway); peekNow
// buffers what has already arrived, without waiting, into a pooled buffer.
type connReader struct {
	conn net.Conn
	bp   *[]byte
	r, w int
	err  error // from a look ahead, for the next Read
}

var readBufs = sync.Pool{New: func() any { b := make([]byte, readBufferSize); return &b }}

func newConnReader(conn net.Conn, leftover []byte) *connReader {
	cr := &connReader{conn: conn}
	if len(leftover) > 0 {
		cr.bp = readBufs.Get().(*[]byte)
		cr.w = copy(*cr.bp, leftover)
	}
	return cr
}

func (cr *connReader) Buffered() int { return cr.w - cr.r }

func (cr *connReader) Read(p []byte) (int, error) {
	if cr.r == cr.w {
		cr.releaseBuf()
		if cr.err != nil {
			err := cr.err
			cr.err = nil
			return 0, err
		}
		return cr.conn.Read(p)
	}
	n := copy(p, (*cr.bp)[cr.r:cr.w])
	cr.r += n
	if cr.r == cr.w {
		cr.releaseBuf()
	}
	return n, nil
}

func (cr *connReader) Discard(n int) (int, error) {
	var scratch [512]byte
	done := 0
	for done < n {
		m, err := cr.Read(scratch[:min(n-done, len(scratch))])
		done += m
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

func (cr *connReader) releaseBuf() {
	if cr.bp != nil {
		readBufs.Put(cr.bp)
		cr.bp, cr.r, cr.w = nil, 0, 0
	}
}

// aLongTimeAgo is a read deadline that has passed: a read then returns
// what the connection already holds (TLS decrypts records it has received
// whole) and otherwise fails at once, without a system call. TLS takes
// such timeouts as temporary: the connection reads on afterwards.
var aLongTimeAgo = time.Unix(1, 0)

// peekNow returns the next n bytes if they have arrived, without waiting.
func (cr *connReader) peekNow(n int) ([]byte, bool) {
	if cr.w-cr.r < n && cr.err == nil {
		if cr.bp == nil {
			cr.bp = readBufs.Get().(*[]byte)
		}
		buf := *cr.bp
		if n > len(buf) {
			return nil, false
		}
		if len(buf)-cr.r < n {
			cr.w = copy(buf, buf[cr.r:cr.w])
			cr.r = 0
		}
		_ = cr.conn.SetReadDeadline(aLongTimeAgo)
		for cr.w-cr.r < n && cr.w < len(buf) {
			m, err := cr.conn.Read(buf[cr.w:])
			cr.w += m
			if err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					cr.err = err
				}
				break
			}
		}
		_ = cr.conn.SetReadDeadline(time.Time{})
		if cr.r == cr.w {
			cr.releaseBuf()
		}
	}
	if cr.w-cr.r < n {
		return nil, false
	}
	return (*cr.bp)[cr.r : cr.r+n], true
}

func writeOut(w io.Writer, p []byte) {
	if w != nil {
		_, _ = w.Write(p)
	}
}
