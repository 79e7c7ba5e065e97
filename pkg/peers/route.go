package peers

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/klog/v2"

	"github.com/kubecube-io/console-apiserver/pkg/session"
)

// sessionPathRE matches the paths sockjs-go treats as a session's (as
// pkg/sockjs does): /{server}/{session}/{transport}.
var sessionPathRE = regexp.MustCompile(`^/([^/.]+)/([^/.]+)/([^/]*)$`)

// maxSegment is pkg/sockjs's bound on the session segment; longer ones are
// refused there, so they are not routed.
const maxSegment = 128

// Transports whose requests carry a session's state between requests. A
// receiving request may open a session; a sending one never does.
var (
	receivingTransports = map[string]string{
		"xhr":           http.MethodPost,
		"xhr_streaming": http.MethodPost,
		"eventsource":   http.MethodGet,
		"htmlfile":      http.MethodGet,
		"jsonp":         http.MethodGet,
	}
	sendingTransports = map[string]string{
		"xhr_send":   http.MethodPost,
		"jsonp_send": http.MethodPost,
	}
)

// routedTransport returns the transport and session segment of a request
// that must reach the replica holding its SockJS session. WebSocket is one
// connection and always served where it lands; /info, OPTIONS (CORS
// preflight) and the iframe page hold no state.
func routedTransport(method, subpath string) (transport, segment string, receiving, ok bool) {
	m := sessionPathRE.FindStringSubmatch(subpath)
	if m == nil || len(m[2]) > maxSegment {
		return "", "", false, false
	}
	if want, ok := receivingTransports[m[3]]; ok && method == want {
		return m[3], m[2], true, true
	}
	if want, ok := sendingTransports[m[3]]; ok && method == want {
		return m[3], m[2], false, true
	}
	return "", "", false, false
}

// routeKey names a SockJS session across replicas. Like pkg/sockjs's session
// key it includes the caller and the pod, so no caller can reach, or claim
// ownership of, a session keyed for another.
func routeKey(id session.Identity, namespace, pod, segment string) string {
	sum := id.Digest(namespace, pod, segment)
	// 128 bits, as a Lease name part.
	return hex.EncodeToString(sum[:16])
}

// ServeAttach serves an attach request here or forwards it to the replica
// that holds its SockJS session.
func (p *Peers) ServeAttach(w http.ResponseWriter, r *http.Request, namespace, pod, subpath string) {
	transport, segment, receiving, ok := routedTransport(r.Method, subpath)
	u, authed := request.UserFrom(r.Context())
	if !ok || !authed || u.GetName() == "" || u.GetName() == user.Anonymous || slices.Contains(u.GetGroups(), user.AllUnauthenticated) {
		// Local: stateless, WebSocket, or refused there (401, 404, 400)
		// before anything is published for it.
		p.cfg.Local(w, r, namespace, pod, subpath)
		return
	}
	id := session.IdentityFrom(u)
	key := routeKey(id, namespace, pod, segment)

	if done := p.enterOwned(key); done != nil {
		defer done()
		p.cfg.Local(w, r, namespace, pod, subpath)
		return
	}
	dest, self, err := p.resolve(r.Context(), key, receiving, id, namespace, pod, transport)
	switch {
	case err != nil:
		klog.ErrorS(err, "Routing a terminal request", "user", id.Name, "namespace", namespace, "pod", pod, "transport", transport)
		writeStatus(w, apierrors.NewServiceUnavailable("cannot route this terminal request to its replica: "+err.Error()))
	case self:
		if done := p.enterOwned(key); done != nil {
			defer done()
		}
		p.cfg.Local(w, r, namespace, pod, subpath)
	case dest == nil:
		// A send for a session no replica holds: sockjs-go answers 404, as
		// for any unknown session.
		p.cfg.Local(w, r, namespace, pod, subpath)
	case p.isDead(dest.instance):
		forwarded.WithLabelValues(transport, resultGone).Inc()
		writeEnd(w, r, transport, GoneMessage)
	default:
		p.forward(w, r, dest, id, namespace, pod, subpath, transport)
	}
}

// enterOwned counts a request of a session owned here; it returns nil when
// the session is not owned here.
func (p *Peers) enterOwned(key string) func() {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.owned[key]
	if e == nil {
		return nil
	}
	e.inflight++
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		e.inflight--
		e.last = p.now()
	}
}

// resolve finds the replica holding the session: itself (self), another
// (dest), or none (both zero: a send to a session that does not exist). A
// receiving request for a session nobody holds makes this replica its owner;
// of replicas racing to, the one whose Lease create succeeds wins.
func (p *Peers) resolve(ctx context.Context, key string, receiving bool, id session.Identity, namespace, pod, transport string) (dest *route, self bool, err error) {
	p.mu.Lock()
	if rt := p.routes[key]; rt != nil {
		rt.last = p.now()
		p.mu.Unlock()
		return rt, false, nil
	}
	closed := p.closed
	p.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rec, err := p.getRoute(ctx, key)
	if err != nil {
		return nil, false, err
	}
	if rec == nil && !receiving {
		if rec, self, err = p.awaitRoute(ctx, key); rec == nil || self || err != nil {
			return nil, self, err
		}
	}
	if rec == nil {
		if closed {
			return nil, false, fmt.Errorf("this replica is shutting down")
		}
		var created bool
		if created, rec, err = p.createRoute(ctx, key); err != nil {
			return nil, false, err
		}
		if created {
			p.adopt(key, rec)
			routesCreated.Inc()
			klog.InfoS("Holding a SockJS session of a fallback transport here", "user", id.Name, "namespace", namespace, "pod", pod, "transport", transport, "route", rec.name)
			return nil, true, nil
		}
	}
	if rec.instance == p.instance {
		p.adopt(key, rec)
		return nil, true, nil
	}
	rt := &route{instance: rec.instance, address: rec.address, last: p.now()}
	p.mu.Lock()
	p.routes[key] = rt
	p.mu.Unlock()
	return rt, false, nil
}

// sendRetries are the pauses before looking again for the session of a
// send that found none. sockjs-client sends only after the open frame, but a
// client that sends at once can beat its receiving request, which may be
// opening the session on another replica right then. Genuinely unknown
// sessions cost these few reads and a wait of under a second.
var sendRetries = []time.Duration{20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}

func (p *Peers) awaitRoute(ctx context.Context, key string) (rec *routeRecord, self bool, err error) {
	for _, d := range sendRetries {
		select {
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-time.After(d):
		}
		p.mu.Lock()
		owned := p.owned[key] != nil
		p.mu.Unlock()
		if owned {
			return nil, true, nil
		}
		if rec, err = p.getRoute(ctx, key); rec != nil || err != nil {
			return rec, false, err
		}
	}
	return nil, false, nil
}

func (p *Peers) adopt(key string, rec *routeRecord) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.owned[key] == nil {
		p.owned[key] = &ownedKey{last: p.now(), lease: rec.name, uid: rec.uid}
		ownedRoutes.Set(float64(len(p.owned)))
	}
}

func (p *Peers) isDead(instance string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, dead := p.dead[instance]
	return dead
}

func (p *Peers) markDead(instance string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.dead[instance]; !ok {
		p.dead[instance] = p.now()
	}
}

// deadMemory is how long a dead instance is remembered: longer than any
// route to it is cached.
const deadMemory = 10 * time.Minute

// runJanitor forgets sessions and cached routes that went quiet for longer
// than the grace period, and deletes the Leases of the sessions owned here.
func (p *Peers) runJanitor(ctx context.Context) {
	tick := time.NewTicker(max(p.cfg.Grace/4, 250*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, e := range p.expire() {
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := p.deleteRoute(dctx, e.lease, e.uid); err != nil {
				// The sweep retries: it deletes routes of this instance
				// that it no longer owns.
				klog.ErrorS(err, "Deleting the route of an ended session", "route", e.lease)
			}
			cancel()
		}
	}
}

func (p *Peers) expire() []*ownedKey {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	var gone []*ownedKey
	for k, e := range p.owned {
		if e.inflight == 0 && now.Sub(e.last) > p.cfg.Grace {
			delete(p.owned, k)
			gone = append(gone, e)
		}
	}
	ownedRoutes.Set(float64(len(p.owned)))
	for k, rt := range p.routes {
		if now.Sub(rt.last) > p.cfg.Grace {
			delete(p.routes, k)
		}
	}
	for inst, t := range p.dead {
		if now.Sub(t) > deadMemory {
			delete(p.dead, inst)
		}
	}
	return gone
}
