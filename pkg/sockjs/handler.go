package sockjs

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/endpoints/request"

	"github.com/kubecube-io/console-apiserver/pkg/session"
)

// sessionPathRE is sockjs-go's own test for a path that names a session
// ("^/([^/.]+)/([^/.]+)"); every such path is rewritten, whatever follows.
var sessionPathRE = regexp.MustCompile(`^/([^/.]+)/([^/.]+)(/[^/]*)?$`)

// maxSegment bounds the client's session segment, which becomes part of a
// map key and of log lines. sockjs-client uses 8 characters.
const maxSegment = 128

var attachResource = schema.GroupResource{Group: "consoles.kubecube.io", Resource: "pods/attach"}

// ServeAttach serves one request below .../namespaces/{ns}/pods/{pod}/attach.
// subpath is what follows "/attach": "", "/info", "/123/abcd/websocket",
// "/123/abcd/xhr_streaming", ... The request's context carries the
// authenticated user.
func (t *Terminal) ServeAttach(w http.ResponseWriter, r *http.Request, namespace, pod, subpath string) {
	u, ok := request.UserFrom(r.Context())
	if !ok || !authenticated(u) {
		writeStatus(w, apierrors.NewUnauthorized("a terminal requires an authenticated user"))
		return
	}
	if origin := r.Header.Get("Origin"); !t.checkOrigin(r) {
		writeStatus(w, apierrors.NewForbidden(attachResource, pod, fmt.Errorf("origin %q is not allowed", origin)))
		return
	}
	if subpath != "" && !strings.HasPrefix(subpath, "/") {
		writeStatus(w, apierrors.NewNotFound(attachResource, pod))
		return
	}

	info := &attachInfo{user: session.IdentityFrom(u), namespace: namespace, pod: pod}
	path := subpath
	var key string
	if m := sessionPathRE.FindStringSubmatch(subpath); m != nil {
		if len(m[2]) > maxSegment {
			writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("SockJS session segment longer than %d characters", maxSegment)))
			return
		}
		key = sessionKey(info.user, namespace, pod, m[2])
		info.transport = strings.TrimPrefix(m[3], "/")
		path = "/" + m[1] + "/" + key + m[3]
	} else if strings.Count(subpath, "/") > 2 {
		// No sockjs-go route is deeper; refuse here rather than count on
		// that to keep every session path keyed.
		writeStatus(w, apierrors.NewNotFound(attachResource, pod))
		return
	}

	ctx, cancel := context.WithCancel(context.WithValue(r.Context(), attachInfoKey{}, info))
	defer cancel()
	// A shallow copy that sockjs-go sees as a request for path below its
	// (empty) prefix.
	r2 := r.WithContext(ctx)
	u2 := *r.URL
	u2.Path, u2.RawPath = path, ""
	r2.URL = &u2

	switch info.transport {
	case "websocket":
		info.guard = newWSGuard(t.opts.MaxMessageSize)
		w = &hijackWriter{ResponseWriter: w, guard: info.guard}
		if r.Method == http.MethodGet {
			// Served here, not by sockjs-go (see wsSession); sockjs-go
			// still answers other methods as the protocol wants.
			t.serveWebSocket(w, r2, key)
			return
		}
	case "xhr_send", "jsonp_send":
		body, ok := t.readSendBody(w, r, key)
		if !ok {
			return
		}
		r2.Body, r2.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	case "xhr", "xhr_streaming", "eventsource", "htmlfile", "jsonp":
		l := t.acquireLink(key)
		defer t.releaseLink(l)
		l.receivingDelta(1)
		defer l.receivingDelta(-1)
		rw := &receiverWriter{
			ResponseWriter: w,
			rc:             http.NewResponseController(w),
			link:           l,
			transport:      info.transport,
			timeout:        t.opts.WriteTimeout,
			abort:          cancel,
		}
		t.handler.ServeHTTP(rw, r2)
		if rw.swallowed {
			// Give sockjs-go's detaching goroutine a moment before the
			// client comes back.
			time.Sleep(reattachPause)
		}
		return
	}
	t.handler.ServeHTTP(w, r2)
}

// reattachPause delays the empty response that replaces a spurious
// "Another connection still open" (see receiverWriter).
const reattachPause = 5 * time.Millisecond

// readSendBody reads an xhr_send or jsonp_send body, at most MaxMessageSize
// bytes. sockjs-go would answer 204 to a body cut by http.MaxBytesReader (the
// cut JSON is not a *json.SyntaxError to it), so the client would believe
// its keystrokes arrived: the limit is enforced here, where the session can
// be told.
func (t *Terminal) readSendBody(w http.ResponseWriter, r *http.Request, key string) ([]byte, bool) {
	if r.Body == nil {
		return nil, true
	}
	limit := t.opts.MaxMessageSize
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(limit)))
	if err == nil && !utf8.Valid(body) {
		// sockjs-go's JSON decoding would turn the bad bytes into U+FFFD,
		// typed into the command as if the user had sent them.
		if ts := t.sessionOf(key); ts != nil {
			ts.violation("a message is not valid UTF-8")
		}
		writeStatus(w, apierrors.NewBadRequest("the message is not valid UTF-8"))
		return nil, false
	}
	if err == nil {
		return body, true
	}
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		if ts := t.sessionOf(key); ts != nil {
			ts.violation(fmt.Sprintf("a message exceeds the limit of %d bytes", limit))
		}
		writeStatus(w, apierrors.NewRequestEntityTooLargeError(fmt.Sprintf("limit is %d bytes", limit)))
		return nil, false
	}
	writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("reading the request body: %v", err)))
	return nil, false
}

// sessionOf returns the terminal session of a SockJS session key, if any.
func (t *Terminal) sessionOf(key string) *termSession {
	if l := t.lookupLink(key); l != nil {
		return l.session()
	}
	return nil
}

// sessionKey is the SockJS session segment sockjs-go gets. sockjs-go finds
// sessions by that segment alone, so a client that knew (or guessed) another
// client's segment could post into its session or take its output. Deriving
// the key from the caller and the pod too means a request can only ever
// reach sessions opened by the same identity for the same pod.
func sessionKey(id session.Identity, namespace, pod, segment string) string {
	sum := id.Digest(namespace, pod, segment)
	// 128 bits: a collision would take 2^64 sessions.
	return hex.EncodeToString(sum[:16]) + "-" + segment
}

func authenticated(u user.Info) bool {
	if u == nil || u.GetName() == "" || u.GetName() == user.Anonymous {
		return false
	}
	// An authenticated user is never in system:unauthenticated.
	return !slices.Contains(u.GetGroups(), user.AllUnauthenticated)
}

// checkOrigin allows requests without an Origin (not from a browser), from
// an allowed origin, or from the origin the request is addressed to (as
// gorilla's default does; proxies on the way, kubectl proxy and the
// aggregator among them, usually rewrite Host, so the page served through
// them needs its origin in the allowlist).
func (t *Terminal) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || t.anyOrigin {
		return true
	}
	if _, ok := t.origins[strings.ToLower(origin)]; ok {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
}

// writeStatus answers as the rest of the API does, with a metav1.Status.
func writeStatus(w http.ResponseWriter, err *apierrors.StatusError) {
	st := err.Status()
	st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(int(st.Code))
	_ = json.NewEncoder(w).Encode(&st)
}
