// Package rawhop is the benchmark's "one raw hop" (H): the least an
// aggregated API server can do to relay an exec. It is registered with an
// APIService of its own (rawhop.bench.local/v1); kube-apiserver authenticates
// and authorizes the caller, the aggregator forwards the SPDY upgrade here
// with the caller in X-Remote-* headers, and this server sends the request
// back to kube-apiserver's pods/exec with apimachinery's upgrade-aware proxy,
// impersonating the caller, then copies bytes both ways.
//
// Benchmark-only code: it trusts X-Remote-* only from a client certificate
// the front-proxy CA signed for front-proxy-client, as any aggregated server
// must, and does nothing else a real server would (no audit, no limits).
package rawhop

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"net/url"
	"runtime"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/proxy"
	"k8s.io/client-go/rest"
)

// Group and Version of the APIService this server answers.
const (
	Group   = "rawhop.bench.local"
	Version = "v1"
)

// Config is what the server needs.
type Config struct {
	// Kube reaches kube-apiserver as this server's own identity (which may
	// impersonate users, groups, UIDs and extras).
	Kube *rest.Config
	// FrontProxyCA verifies the aggregator's client certificate.
	FrontProxyCA []*x509.Certificate
	// AllowedNames are the front-proxy client certificate names trusted
	// (kube-apiserver's --requestheader-allowed-names).
	AllowedNames []string
	// AdminCA verifies clients of the /bench/ endpoints (stats, pprof); the
	// certificate must also carry the system:masters organization.
	AdminCA []*x509.Certificate
}

// Server is the raw-hop handler.
type Server struct {
	cfg        Config
	frontProxy *x509.CertPool
	admin      *x509.CertPool
	kubeURL    *url.URL
	connRT     *http.Transport
	pprofMux   *http.ServeMux
}

// New builds the handler.
func New(cfg Config) (*Server, error) {
	u, err := url.Parse(cfg.Kube.Host)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := rest.TLSConfigFor(cfg.Kube)
	if err != nil {
		return nil, err
	}
	// The connection transport: the upgrade-aware proxy dials the backend
	// with its TLS settings. Identity is added per request (see exec).
	connRT := &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: false}
	mux := http.NewServeMux()
	mux.HandleFunc("/bench/debug/pprof/", pprof.Index)
	mux.HandleFunc("/bench/debug/pprof/profile", pprof.Profile)
	return &Server{cfg: cfg, frontProxy: pool(cfg.FrontProxyCA), admin: pool(cfg.AdminCA), kubeURL: u, connRT: connRT, pprofMux: mux}, nil
}

func pool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// TLSConfig is the serving TLS configuration: it asks for (but does not
// require) a client certificate, from either CA; ServeHTTP decides which
// one a path needs.
func (s *Server) TLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool(append(slices.Clone(s.cfg.FrontProxyCA), s.cfg.AdminCA...)),
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"http/1.1"},
	}
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/bench/") {
		if !s.isAdmin(r) {
			writeStatus(w, apierrors.NewForbidden(metav1.SchemeGroupVersion.WithResource("").GroupResource(), r.URL.Path, fmt.Errorf("admin client certificate required")))
			return
		}
		if r.URL.Path == "/bench/stats" {
			s.stats(w, r)
			return
		}
		s.pprofMux.ServeHTTP(w, r)
		return
	}
	user, groups, uid, extra, ok := s.frontProxyUser(r)
	if !ok {
		writeStatus(w, apierrors.NewUnauthorized("requests must come through the aggregator"))
		return
	}
	prefix := "/apis/" + Group + "/" + Version
	switch {
	case r.URL.Path == "/apis":
		writeJSON(w, metav1.APIGroupList{
			TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"},
			Groups:   []metav1.APIGroup{apiGroup()},
		})
	case r.URL.Path == "/apis/"+Group:
		g := apiGroup()
		g.TypeMeta = metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"}
		writeJSON(w, g)
	case r.URL.Path == prefix:
		writeJSON(w, metav1.APIResourceList{
			TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
			GroupVersion: Group + "/" + Version,
			APIResources: []metav1.APIResource{
				{Name: "pods", Namespaced: true, Kind: "Pod", Verbs: metav1.Verbs{}},
				{Name: "pods/exec", Namespaced: true, Kind: "PodExecOptions", Verbs: metav1.Verbs{"create", "get"}},
			},
		})
	case strings.HasPrefix(r.URL.Path, prefix+"/namespaces/") && strings.HasSuffix(r.URL.Path, "/exec"):
		parts := strings.Split(strings.TrimPrefix(r.URL.Path, prefix+"/namespaces/"), "/")
		if len(parts) != 4 || parts[1] != "pods" {
			writeStatus(w, apierrors.NewNotFound(metav1.SchemeGroupVersion.WithResource("pods").GroupResource(), r.URL.Path))
			return
		}
		s.exec(w, r, parts[0], parts[2], rest.ImpersonationConfig{UserName: user, UID: uid, Groups: groups, Extra: extra})
	default:
		writeStatus(w, apierrors.NewNotFound(metav1.SchemeGroupVersion.WithResource("").GroupResource(), r.URL.Path))
	}
}

func apiGroup() metav1.APIGroup {
	gv := metav1.GroupVersionForDiscovery{GroupVersion: Group + "/" + Version, Version: Version}
	return metav1.APIGroup{Name: Group, Versions: []metav1.GroupVersionForDiscovery{gv}, PreferredVersion: gv}
}

// exec proxies the upgrade to kube-apiserver's core pods/exec as the caller.
func (s *Server) exec(w http.ResponseWriter, r *http.Request, namespace, pod string, as rest.ImpersonationConfig) {
	loc := *s.kubeURL
	loc.Path = "/api/v1/namespaces/" + url.PathEscape(namespace) + "/pods/" + url.PathEscape(pod) + "/exec"
	loc.RawQuery = r.URL.RawQuery

	imp := rest.CopyConfig(s.cfg.Kube)
	imp.Impersonate = as
	// The request round tripper only writes headers (bearer token,
	// Impersonate-*); the connection round tripper dials.
	reqRT, err := rest.HTTPWrappersForConfig(imp, proxy.MirrorRequest)
	if err != nil {
		writeStatus(w, apierrors.NewInternalError(err))
		return
	}
	// What the aggregator asserted is for this server only.
	for k := range r.Header {
		if strings.HasPrefix(k, "X-Remote-") || strings.HasPrefix(k, "Impersonate-") || k == "Authorization" {
			r.Header.Del(k)
		}
	}
	h := proxy.NewUpgradeAwareHandler(&loc, s.connRT, false, true, responder{})
	h.UpgradeTransport = proxy.NewUpgradeRequestRoundTripper(s.connRT, reqRT)
	h.UseLocationHost = true
	h.ServeHTTP(w, r)
}

type responder struct{}

func (responder) Error(w http.ResponseWriter, _ *http.Request, err error) {
	writeStatus(w, apierrors.NewServiceUnavailable(err.Error()))
}

// frontProxyUser returns the identity the aggregator asserts, if the
// request carries its client certificate.
func (s *Server) frontProxyUser(r *http.Request) (user string, groups []string, uid string, extra map[string][]string, ok bool) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return "", nil, "", nil, false
	}
	leaf := r.TLS.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range r.TLS.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: s.frontProxy, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return "", nil, "", nil, false
	}
	if len(s.cfg.AllowedNames) > 0 && !slices.Contains(s.cfg.AllowedNames, leaf.Subject.CommonName) {
		return "", nil, "", nil, false
	}
	user = r.Header.Get("X-Remote-User")
	if user == "" {
		return "", nil, "", nil, false
	}
	groups = r.Header.Values("X-Remote-Group")
	uid = r.Header.Get("X-Remote-Uid")
	for k, v := range r.Header {
		if key, found := strings.CutPrefix(k, "X-Remote-Extra-"); found {
			if unescaped, err := url.PathUnescape(key); err == nil {
				key = unescaped
			}
			if extra == nil {
				extra = map[string][]string{}
			}
			extra[strings.ToLower(key)] = append(extra[strings.ToLower(key)], v...)
		}
	}
	return user, groups, uid, extra, true
}

func (s *Server) isAdmin(r *http.Request) bool {
	if len(s.cfg.AdminCA) == 0 || r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return false
	}
	leaf := r.TLS.PeerCertificates[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: s.admin, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return false
	}
	return slices.Contains(leaf.Subject.Organization, "system:masters")
}

// Stats is what /bench/stats answers: the process's Go runtime figures.
type Stats struct {
	Goroutines int    `json:"goroutines"`
	HeapInuse  uint64 `json:"heapInuse"`
	HeapAlloc  uint64 `json:"heapAlloc"`
	Sys        uint64 `json:"sys"`
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("gc") == "1" {
		runtime.GC()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	writeJSON(w, Stats{Goroutines: runtime.NumGoroutine(), HeapInuse: ms.HeapInuse, HeapAlloc: ms.HeapAlloc, Sys: ms.Sys})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func writeStatus(w http.ResponseWriter, err *apierrors.StatusError) {
	st := err.Status()
	st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(int(st.Code))
	_ = json.NewEncoder(w).Encode(&st)
}
