package peers

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/kubecube-io/console-apiserver/pkg/session"
)

// InternalPrefix is where a replica takes the attach requests other replicas
// forward to it: InternalPrefix + namespace/pod/server/session/transport. It
// is a non-resource path on the secure port, so delegated authentication and
// authorization apply to it as to everything else.
const InternalPrefix = "/internal/consoles/attach/"

// Headers between replicas. They are read only on InternalPrefix, and only
// after the sender has been authenticated as a peer.
const (
	headerIdentity = "X-Console-Forwarded-Identity"
	headerInstance = "X-Console-Target-Instance"
	headerHost     = "X-Console-Forwarded-Host"
	// headerPeerError tells the forwarding replica that a refusal comes
	// from the peer protocol itself, not from the terminal.
	headerPeerError   = "X-Console-Peer-Error"
	peerErrorInstance = "instance"
)

// Messages a client reads when its session's replica cannot be reached.
const (
	GoneMessage        = "the replica serving this terminal is gone"
	unreachableMessage = "cannot reach the replica serving this terminal"
)

// forwardedHeaders are the request headers the owner needs. Nothing else
// crosses: credentials, front-proxy and impersonation headers above all.
var forwardedHeaders = []string{"Content-Type", "Origin", "Accept", "Last-Event-Id", "User-Agent", "X-Requested-With"}

var errWrongInstance = errors.New("the replica at that address is another instance")

// wireIdentity is the caller as forwarded: one header, exact, where header
// names would fold the case of extra keys.
type wireIdentity struct {
	Name   string              `json:"name"`
	UID    string              `json:"uid,omitempty"`
	Groups []string            `json:"groups,omitempty"`
	Extra  map[string][]string `json:"extra,omitempty"`
}

func encodeIdentity(id session.Identity) string {
	b, _ := json.Marshal(wireIdentity(id))
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeIdentity(s string) (session.Identity, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return session.Identity{}, fmt.Errorf("forwarded identity: %w", err)
	}
	var w wireIdentity
	if err := json.Unmarshal(b, &w); err != nil {
		return session.Identity{}, fmt.Errorf("forwarded identity: %w", err)
	}
	if w.Name == "" {
		return session.Identity{}, errors.New("forwarded identity has no user name")
	}
	return session.Identity(w), nil
}

// forward relays the request to the replica holding its session and the
// answer back, flushing as it comes (receiving transports stream).
func (p *Peers) forward(w http.ResponseWriter, r *http.Request, dest *route, id session.Identity, namespace, pod, subpath, transport string) {
	token, err := p.cfg.Token()
	if err != nil {
		klog.ErrorS(err, "Reading this replica's token for its peers")
		forwarded.WithLabelValues(transport, resultError).Inc()
		writeStatus(w, apierrors.NewServiceUnavailable("cannot forward this terminal request: no credentials for the other replicas"))
		return
	}
	target := &url.URL{
		Scheme:   "https",
		Host:     dest.address,
		Path:     InternalPrefix + namespace + "/" + pod + subpath,
		RawQuery: r.URL.RawQuery,
	}
	var (
		roundTripErr error
		body         *upstreamBody
	)
	rp := &httputil.ReverseProxy{
		Transport:     p.transport,
		FlushInterval: -1,
		Rewrite: func(pr *httputil.ProxyRequest) {
			h := http.Header{}
			for _, k := range forwardedHeaders {
				if v := pr.In.Header.Values(k); len(v) > 0 {
					h[http.CanonicalHeaderKey(k)] = slices.Clone(v)
				}
			}
			// The answer is relayed as it streams; no transparent gzip.
			h.Set("Accept-Encoding", "identity")
			h.Set("Authorization", "Bearer "+token)
			h.Set(headerIdentity, encodeIdentity(id))
			h.Set(headerInstance, dest.instance)
			h.Set(headerHost, pr.In.Host)
			pr.Out.Header = h
			pr.Out.URL = target
			pr.Out.Host = ""
		},
		ModifyResponse: func(resp *http.Response) error {
			if resp.StatusCode == http.StatusGone && resp.Header.Get(headerPeerError) == peerErrorInstance {
				return errWrongInstance
			}
			// The forwarding replica's own audit ID is the client's.
			resp.Header.Del("Audit-Id")
			body = &upstreamBody{ReadCloser: resp.Body}
			resp.Body = body
			return nil
		},
		ErrorHandler: func(_ http.ResponseWriter, _ *http.Request, err error) { roundTripErr = err },
	}
	rp.ServeHTTP(w, r)

	switch {
	case roundTripErr != nil:
		if r.Context().Err() != nil {
			// The client went away first.
			forwarded.WithLabelValues(transport, resultCanceled).Inc()
			return
		}
		msg := unreachableMessage
		if isDialError(roundTripErr) || errors.Is(roundTripErr, errWrongInstance) || !p.reachable(dest.address) {
			// Instances never come back: every session it held is over.
			p.markDead(dest.instance)
			msg = GoneMessage
		}
		klog.InfoS("Cannot forward a terminal request to its replica", "user", id.Name, "namespace", namespace, "pod", pod,
			"transport", transport, "instance", dest.instance, "address", dest.address, "err", roundTripErr)
		forwarded.WithLabelValues(transport, resultGone).Inc()
		writeEnd(w, r, transport, msg)
	case body != nil && body.failed() != nil && r.Context().Err() == nil:
		// The owner vanished mid-answer. Its session is over either way (a
		// cut receiving request ends a SockJS session); say so in the
		// stream already begun, rather than leave the client to find out.
		klog.InfoS("Lost the replica of a terminal mid-answer", "user", id.Name, "namespace", namespace, "pod", pod,
			"transport", transport, "instance", dest.instance, "err", body.failed())
		forwarded.WithLabelValues(transport, resultGone).Inc()
		writeEndFrames(w, r, transport, GoneMessage)
	default:
		forwarded.WithLabelValues(transport, resultOK).Inc()
	}
}

// upstreamBody hides a read error from ReverseProxy, which would abort the
// client's response, so that forward can end it with a close frame.
type upstreamBody struct {
	io.ReadCloser
	mu  sync.Mutex
	err error
}

func (b *upstreamBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.mu.Lock()
		b.err = err
		b.mu.Unlock()
		return n, io.EOF
	}
	return n, err
}

func (b *upstreamBody) failed() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// reachable tells a replica that died (a connection on the way broke, and
// now none can be made) from other failures, which may pass.
func (p *Peers) reachable(address string) bool {
	c, err := net.DialTimeout("tcp", address, p.cfg.DialTimeout)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// The session's end, in each transport's framing, as sockjs-go frames it: a
// toast (what front-ends show) and close code 2 with the reason (what the
// terminal protocol uses for failures).
func endFrames(msg string) []string {
	toast, _ := json.Marshal(struct{ Op, Data string }{"toast", msg})
	data, _ := json.Marshal([]string{string(toast)})
	closing, _ := json.Marshal([]any{2, msg})
	return []string{"a" + string(data), "c" + string(closing)}
}

var invalidCallback = regexp.MustCompile(`[^a-zA-Z0-9_.]`)

// writeEnd answers a request whose session's replica is gone, from the
// start. Receiving transports get the end frames; sends get a 404, as for
// any session that does not exist.
func writeEnd(w http.ResponseWriter, r *http.Request, transport, msg string) {
	h := w.Header()
	h.Set("Cache-Control", "no-store, no-cache, no-transform, must-revalidate, max-age=0")
	switch transport {
	case "xhr", "xhr_streaming":
		h.Set("Content-Type", "application/javascript; charset=UTF-8")
		w.WriteHeader(http.StatusOK)
		if transport == "xhr_streaming" {
			_, _ = io.WriteString(w, strings.Repeat("h", 2048)+"\n")
		}
	case "eventsource":
		h.Set("Content-Type", "text/event-stream; charset=UTF-8")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "\r\n")
	case "htmlfile", "jsonp":
		cb := r.URL.Query().Get("c")
		if cb == "" || invalidCallback.MatchString(cb) {
			http.Error(w, `"callback" parameter required`, http.StatusBadRequest)
			return
		}
		if transport == "htmlfile" {
			h.Set("Content-Type", "text/html; charset=UTF-8")
			w.WriteHeader(http.StatusOK)
			_, _ = fmt.Fprintf(w, iframeTemplate, cb)
		} else {
			h.Set("Content-Type", "application/javascript; charset=UTF-8")
			w.WriteHeader(http.StatusOK)
		}
	default:
		h.Set("Content-Type", "text/plain; charset=UTF-8")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, msg+"\n")
		return
	}
	writeEndFrames(w, r, transport, msg)
}

// writeEndFrames writes the end frames into a response of the transport
// already under way.
func writeEndFrames(w http.ResponseWriter, r *http.Request, transport, msg string) {
	frames := endFrames(msg)
	var b strings.Builder
	switch transport {
	case "xhr", "xhr_streaming":
		for _, f := range frames {
			b.WriteString(f + "\n")
		}
	case "eventsource":
		for _, f := range frames {
			b.WriteString("data: " + eventSourceEscaper.Replace(f) + "\r\n\r\n")
		}
	case "htmlfile":
		for _, f := range frames {
			q, _ := json.Marshal(f)
			b.WriteString("<script>\np(" + string(q) + ");\n</script>\r\n")
		}
	case "jsonp":
		// One frame per response: the close, which carries the reason.
		q, _ := json.Marshal(frames[1])
		b.WriteString(r.URL.Query().Get("c") + "(" + string(q) + ");\r\n")
	default:
		return
	}
	_, _ = io.WriteString(w, b.String())
	_ = http.NewResponseController(w).Flush()
}

var eventSourceEscaper = strings.NewReplacer("%", "%25", "\n", "%0A", "\r", "%0D", "\x00", "%00")

// iframeTemplate is sockjs-go's htmlfile prelude, padded as it pads it.
var iframeTemplate = func() string {
	t := `<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.%s;
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>
`
	return t + strings.Repeat(" ", 1024-len(t)+14) + "\r\n\r\n"
}()

// writeStatus answers as the rest of the API does, with a metav1.Status.
func writeStatus(w http.ResponseWriter, err *apierrors.StatusError) {
	st := err.Status()
	st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(int(st.Code))
	_ = json.NewEncoder(w).Encode(&st)
}
