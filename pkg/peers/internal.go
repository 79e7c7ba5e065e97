package peers

import (
	"errors"
	"net/http"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/klog/v2"
)

var internalResource = schema.GroupResource{Group: "consoles.kubecube.io", Resource: "pods/attach"}

// IsInternalPath reports whether path is one replicas forward to. Such
// requests are long-running, as the attach requests they carry are.
func IsInternalPath(path string) bool { return strings.HasPrefix(path, InternalPrefix) }

// InternalHandler serves InternalPrefix on the secure port, behind the
// generic server's authentication and authorization. It serves a forwarded
// request as the caller the forwarding replica names, and only when that
// replica authenticated as one of the peer identities.
func (p *Peers) InternalHandler() http.Handler {
	return http.HandlerFunc(p.serveInternal)
}

func (p *Peers) serveInternal(w http.ResponseWriter, r *http.Request) {
	u, ok := request.UserFrom(r.Context())
	if !ok {
		writeStatus(w, apierrors.NewUnauthorized("forwarded terminal requests require an authenticated replica"))
		return
	}
	names, err := p.peerNames(r.Context())
	if err != nil {
		klog.ErrorS(err, "Checking a forwarded terminal request")
		writeStatus(w, apierrors.NewServiceUnavailable(err.Error()))
		return
	}
	if !names.Has(u.GetName()) {
		// Authorization let it through (it holds the non-resource URL), so
		// this is a misconfiguration or an attempt: worth a log line.
		klog.InfoS("Refused a forwarded terminal request from a non-replica", "user", u.GetName())
		writeStatus(w, apierrors.NewForbidden(internalResource, "", errNotPeer))
		return
	}
	if r.Header.Get(headerInstance) != p.instance {
		// An address reused by a new process (a restarted container): the
		// sessions routed to the old one are gone.
		w.Header().Set(headerPeerError, peerErrorInstance)
		writeStatus(w, apierrors.NewGone("no such replica instance here"))
		return
	}
	id, err := decodeIdentity(r.Header.Get(headerIdentity))
	if err != nil {
		writeStatus(w, apierrors.NewBadRequest(err.Error()))
		return
	}
	namespace, pod, subpath, ok := parseInternalPath(r.URL.Path)
	if !ok {
		writeStatus(w, apierrors.NewNotFound(internalResource, ""))
		return
	}
	transport, segment, _, routed := routedTransport(r.Method, subpath)
	if !routed {
		// Replicas forward session transports only.
		writeStatus(w, apierrors.NewNotFound(internalResource, pod))
		return
	}

	r2 := r.WithContext(request.WithUser(r.Context(), id.UserInfo()))
	r2.Header = r.Header.Clone()
	for _, h := range []string{"Authorization", headerIdentity, headerInstance, headerHost} {
		r2.Header.Del(h)
	}
	if host := r.Header.Get(headerHost); host != "" {
		// Same-origin checks compare Origin with the Host the client used.
		r2.Host = host
	}
	served.WithLabelValues(transport).Inc()
	if done := p.enterOwned(routeKey(id, namespace, pod, segment)); done != nil {
		defer done()
	}
	p.cfg.Local(w, r2, namespace, pod, subpath)
}

var errNotPeer = errors.New("only console-apiserver replicas may forward terminal requests")

// parseInternalPath splits InternalPrefix + ns/pod/subpath.
func parseInternalPath(path string) (namespace, pod, subpath string, ok bool) {
	rest, ok := strings.CutPrefix(path, InternalPrefix)
	if !ok {
		return "", "", "", false
	}
	namespace, rest, ok = strings.Cut(rest, "/")
	if !ok || len(validation.IsDNS1123Label(namespace)) > 0 {
		return "", "", "", false
	}
	i := strings.IndexByte(rest, '/')
	if i < 0 {
		return "", "", "", false
	}
	pod, subpath = rest[:i], rest[i:]
	if len(validation.IsDNS1123Subdomain(pod)) > 0 {
		return "", "", "", false
	}
	return namespace, pod, subpath, true
}
