// Package sockjs serves browser terminals: the SockJS transport of the
// pods/attach subresource, the terminal protocol spoken over it, and the
// lifecycle of each terminal from bind to the end of its command.
package sockjs

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	sockjsgo "github.com/igm/sockjs-go/v3/sockjs"

	"github.com/kubecube-io/console-apiserver/pkg/session"
)

// Options configure a Terminal. For the timeouts and sizes, zero selects the
// default, except IdleTimeout and MaxDuration, where zero (or less) means no
// limit; DefaultOptions has every default filled in.
type Options struct {
	// AllowedOrigins are exact origins ("https://console.example.com") or
	// "*". Requests without an Origin header (non-browser clients) are
	// allowed; a browser on another origin is refused, on every transport.
	AllowedOrigins []string
	// BindTimeout is the time from SockJS open to the bind frame.
	BindTimeout time.Duration
	// IdleTimeout ends a session without stdin or stdout for this long.
	IdleTimeout time.Duration
	// MaxDuration caps a session's life.
	MaxDuration time.Duration
	// MaxMessageSize caps one client message: a WebSocket message, an
	// xhr_send or jsonp_send body, and each SockJS frame in it.
	MaxMessageSize int
	// HeartbeatDelay and DisconnectDelay are passed to sockjs-go.
	HeartbeatDelay  time.Duration
	DisconnectDelay time.Duration
	// WriteTimeout bounds one write to a client. A client that stops
	// reading stalls its command's output (back-pressure) only this long
	// before its session is dropped.
	WriteTimeout time.Duration
}

// Defaults of Options.
const (
	DefaultBindTimeout     = 10 * time.Second
	DefaultIdleTimeout     = 30 * time.Minute
	DefaultMaxDuration     = 12 * time.Hour
	DefaultMaxMessageSize  = 64 << 10
	DefaultHeartbeatDelay  = 25 * time.Second
	DefaultDisconnectDelay = 5 * time.Second
	DefaultWriteTimeout    = 30 * time.Second
)

// DefaultOptions returns Options with every default set and an empty
// origin allowlist: non-browser clients and same-origin pages only.
func DefaultOptions() Options {
	return Options{
		BindTimeout:     DefaultBindTimeout,
		IdleTimeout:     DefaultIdleTimeout,
		MaxDuration:     DefaultMaxDuration,
		MaxMessageSize:  DefaultMaxMessageSize,
		HeartbeatDelay:  DefaultHeartbeatDelay,
		DisconnectDelay: DefaultDisconnectDelay,
		WriteTimeout:    DefaultWriteTimeout,
	}
}

func (o Options) withDefaults() Options {
	if o.BindTimeout <= 0 {
		o.BindTimeout = DefaultBindTimeout
	}
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	if o.HeartbeatDelay <= 0 {
		o.HeartbeatDelay = DefaultHeartbeatDelay
	}
	if o.DisconnectDelay <= 0 {
		o.DisconnectDelay = DefaultDisconnectDelay
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	return o
}

// Terminal serves the SockJS endpoint of every pod's attach subresource.
type Terminal struct {
	opts    Options
	store   session.Store
	exec    Executor
	handler *sockjsgo.Handler
	// upgrader serves the WebSocket transport (see wsSession).
	upgrader *websocket.Upgrader
	metrics  terminalMetrics

	anyOrigin bool
	origins   map[string]struct{}

	mu           sync.Mutex
	links        map[string]*link
	active       int
	shuttingDown bool
	drainClosed  bool
	shutdownCh   chan struct{}
	drained      chan struct{}
}

// NewTerminal returns a Terminal that claims sessions from store and runs
// their commands with exec.
func NewTerminal(opts Options, store session.Store, exec Executor) *Terminal {
	opts = opts.withDefaults()
	t := &Terminal{
		opts:       opts,
		store:      store,
		exec:       exec,
		metrics:    newTerminalMetrics(),
		origins:    map[string]struct{}{},
		links:      map[string]*link{},
		shutdownCh: make(chan struct{}),
		drained:    make(chan struct{}),
	}
	for _, o := range opts.AllowedOrigins {
		if o == "*" {
			t.anyOrigin = true
		}
		t.origins[strings.ToLower(strings.TrimSuffix(o, "/"))] = struct{}{}
	}

	so := sockjsgo.DefaultOptions
	so.Websocket = true
	so.RawWebsocket = false
	so.HeartbeatDelay = opts.HeartbeatDelay
	so.DisconnectDelay = opts.DisconnectDelay
	so.WebsocketWriteTimeout = opts.WriteTimeout
	// Decides the CORS headers of the XHR transports; ServeAttach has
	// already refused disallowed origins by then.
	so.CheckOrigin = t.checkOrigin
	// gorilla's default only allows same-origin; the console may be served
	// from elsewhere, and the allowlist is the policy.
	so.WebsocketUpgrader = &websocket.Upgrader{
		CheckOrigin: t.checkOrigin,
		// A stdout frame goes out in one piece (one write, not a
		// buffer's worth and then the rest), from a buffer that idle
		// terminals do not hold.
		WriteBufferSize: wsWriteBufferSize,
		WriteBufferPool: &sync.Pool{},
	}
	t.upgrader = so.WebsocketUpgrader
	// One handler for the whole server: the HTTP transports of a session
	// span many requests, and sockjs-go keeps their state in the handler.
	t.handler = sockjsgo.NewHandler("", so, t.serveSession)
	return t
}

// ActiveSessions is the number of open SockJS terminal sessions.
func (t *Terminal) ActiveSessions() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.active
}

// Shutdown tells every client that the server is shutting down, ends their
// commands, and returns when all sessions have ended or ctx is done.
// Sessions opened afterwards end at once with the same message.
func (t *Terminal) Shutdown(ctx context.Context) error {
	t.mu.Lock()
	if !t.shuttingDown {
		t.shuttingDown = true
		close(t.shutdownCh)
	}
	t.closeDrainedLocked()
	t.mu.Unlock()
	select {
	case <-t.drained:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("terminal shutdown with %d sessions still open: %w", t.ActiveSessions(), ctx.Err())
	}
}

func (t *Terminal) register() {
	t.mu.Lock()
	t.active++
	t.mu.Unlock()
	t.metrics.active.Inc()
}

func (t *Terminal) unregister() {
	t.metrics.active.Dec()
	t.mu.Lock()
	t.active--
	t.closeDrainedLocked()
	t.mu.Unlock()
}

func (t *Terminal) closeDrainedLocked() {
	if t.shuttingDown && t.active == 0 && !t.drainClosed {
		t.drainClosed = true
		close(t.drained)
	}
}

// lingerTimeout bounds the wait for a client to pick up the last frames
// before its session is closed. A client that is there polls again within
// the disconnect delay, or sockjs-go gives up on it.
func (t *Terminal) lingerTimeout() time.Duration {
	return max(2*t.opts.DisconnectDelay, time.Second)
}
