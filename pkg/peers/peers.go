// Package peers lets console-apiserver run as several replicas behind one
// APIService, where kube-apiserver's aggregator sends each request to any
// replica.
//
// A WebSocket terminal is one connection, served wholly by the replica it
// lands on. The SockJS fallback transports (xhr_streaming, xhr polling,
// eventsource, htmlfile, jsonp) are many HTTP requests per session, and
// sockjs-go keeps their state in the memory of one process: the replica that
// served a session's first receiving request owns it, publishes that in a
// Lease on kube-apiserver, and every other replica forwards that session's
// requests to it.
//
// Forwarding is authenticated as strongly as the front-proxy chain: the
// forwarding replica presents its own ServiceAccount token, which the owner
// checks with kube-apiserver (TokenReview) and authorizes (SubjectAccessReview
// on the internal path), and then requires to be one of the configured peer
// identities. Only then does the owner take the caller's identity from the
// forwarded request, an identity the forwarding replica itself had from the
// front-proxy chain.
package peers

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/kubernetes"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/klog/v2"
)

// AttachFunc serves an attach request in this process (the terminal's
// ServeAttach). The request's context carries the caller.
type AttachFunc func(w http.ResponseWriter, r *http.Request, namespace, pod, subpath string)

// Config configures the replica's part in routing.
type Config struct {
	// Client reaches the home cluster: Leases in Namespace, and a
	// SelfSubjectReview when Identities is empty.
	Client kubernetes.Interface
	// Namespace holds the routing Leases (the server's own namespace).
	Namespace string
	// ReplicaName names this replica in logs and Leases (e.g. the pod name).
	ReplicaName string
	// Address is host:port where the other replicas reach this one's secure
	// port (the pod IP).
	Address string
	// RootCAs verify the other replicas' serving certificates, for
	// ServerName.
	RootCAs    *x509.CertPool
	ServerName string
	// Token returns this replica's bearer token for the other replicas.
	Token func() (string, error)
	// Identities are the user names allowed to forward requests here. Empty
	// means this replica's own (all replicas run as one ServiceAccount),
	// looked up once with a SelfSubjectReview.
	Identities []string
	// Local serves attach requests in this process.
	Local AttachFunc
	// Grace is how long a session this replica owns may go without any
	// request before it is forgotten. It must exceed the longest a SockJS
	// session lives without a receiving request (the disconnect delay), and
	// the time the terminal lingers to deliver its last frames.
	Grace time.Duration

	// Heartbeat is how often the replica renews its Lease; LeaseDuration
	// is how long others believe it alive without a renewal; Sweep is how
	// often routes of dead replicas are deleted. Zero picks defaults.
	Heartbeat, LeaseDuration, Sweep time.Duration
	// DialTimeout bounds connecting to another replica.
	DialTimeout time.Duration
}

// Defaults of Config.
const (
	DefaultHeartbeat     = 10 * time.Second
	DefaultLeaseDuration = 30 * time.Second
	DefaultSweep         = 30 * time.Second
	DefaultDialTimeout   = 3 * time.Second
	DefaultGrace         = 20 * time.Second
)

// Peers routes the attach requests of SockJS sessions between replicas.
type Peers struct {
	cfg       Config
	instance  string
	leases    coordinationv1client.LeaseInterface
	transport *http.Transport
	now       func() time.Time

	mu     sync.Mutex
	owned  map[string]*ownedKey // route key -> session owned here
	routes map[string]*route    // route key -> owner elsewhere, cached
	dead   map[string]time.Time // instance -> when found dead
	peers  sets.Set[string]     // resolved Identities
	hb     *heartbeatState      // this replica's Lease
	closed bool
}

type ownedKey struct {
	inflight int
	last     time.Time
	lease    string
	uid      types.UID
}

// route is where a session owned by another replica lives.
type route struct {
	instance string
	address  string
	last     time.Time
}

// New checks the configuration and returns a Peers that serves once Run is
// called.
func New(cfg Config) (*Peers, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("peers: no client")
	case cfg.Namespace == "":
		return nil, errors.New("peers: no namespace")
	case cfg.Address == "":
		return nil, errors.New("peers: no peer address")
	case cfg.RootCAs == nil:
		return nil, errors.New("peers: no CA to verify other replicas with")
	case cfg.Token == nil:
		return nil, errors.New("peers: no token to present to other replicas")
	case cfg.Local == nil:
		return nil, errors.New("peers: no local attach handler")
	}
	if _, _, err := net.SplitHostPort(cfg.Address); err != nil {
		return nil, fmt.Errorf("peers: address %q: %w", cfg.Address, err)
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = DefaultLeaseDuration
	}
	if cfg.LeaseDuration < 2*cfg.Heartbeat {
		return nil, fmt.Errorf("peers: lease duration %s must be at least twice the heartbeat %s", cfg.LeaseDuration, cfg.Heartbeat)
	}
	if cfg.Sweep <= 0 {
		cfg.Sweep = DefaultSweep
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.ReplicaName == "" {
		cfg.ReplicaName, _ = os.Hostname()
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	p := &Peers{
		cfg: cfg,
		// Per process, not per pod: a restarted container keeps its pod's
		// name and IP but none of its sessions, and must not be mistaken
		// for their owner.
		instance: hex.EncodeToString(b[:]),
		leases:   cfg.Client.CoordinationV1().Leases(cfg.Namespace),
		now:      time.Now,
		owned:    map[string]*ownedKey{},
		routes:   map[string]*route{},
		dead:     map[string]time.Time{},
	}
	if len(cfg.Identities) > 0 {
		p.peers = sets.New(cfg.Identities...)
	}
	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	p.transport = &http.Transport{
		DialContext: dialer.DialContext,
		TLSClientConfig: &tls.Config{
			RootCAs:    cfg.RootCAs,
			ServerName: cfg.ServerName,
			MinVersion: tls.VersionTLS12,
		},
		TLSHandshakeTimeout: 5 * time.Second,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		// A replica whose node vanished sends no RST; pings find out.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 15 * time.Second, PingTimeout: 5 * time.Second},
	}
	registerMetrics()
	return p, nil
}

// Instance identifies this process among the replicas.
func (p *Peers) Instance() string { return p.instance }

// Run keeps this replica's Lease, forgets idle sessions and sweeps the
// routes of dead replicas, until ctx ends.
func (p *Peers) Run(ctx context.Context) {
	klog.InfoS("Serving as a replica", "replica", p.cfg.ReplicaName, "instance", p.instance, "address", p.cfg.Address)
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){p.runHeartbeat, p.runJanitor, p.runSweeper} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	wg.Wait()
}

// Shutdown deletes this replica's routes and Lease: its sessions have ended
// (the terminal drained them first), and a request for one of them now
// starts afresh elsewhere instead of finding a replica gone.
func (p *Peers) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	return errors.Join(p.deleteOwnRoutes(ctx), p.deleteHeartbeat(ctx))
}

// peerNames returns who may forward requests here.
func (p *Peers) peerNames(ctx context.Context) (sets.Set[string], error) {
	p.mu.Lock()
	names := p.peers
	p.mu.Unlock()
	if names != nil {
		return names, nil
	}
	review, err := p.cfg.Client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("looking up this replica's own identity: %w", err)
	}
	name := review.Status.UserInfo.Username
	if name == "" {
		return nil, errors.New("looking up this replica's own identity: empty user name")
	}
	klog.InfoS("Accepting forwarded terminal requests from replicas running as", "user", name)
	p.mu.Lock()
	p.peers = sets.New(name)
	p.mu.Unlock()
	return sets.New(name), nil
}
