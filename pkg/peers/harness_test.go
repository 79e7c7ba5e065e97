package peers

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kubecube-io/console-apiserver/pkg/session"
)

const (
	testNS         = "kubecube-console"
	testServerName = "console-apiserver.kubecube-console.svc"
	peerUser       = "system:serviceaccount:kubecube-console:console-apiserver"
	peerToken      = "peer-token"
	malloryToken   = "mallory-token"
)

var (
	alice = session.Identity{Name: "alice", UID: "u-1", Groups: []string{"devs", "system:authenticated"},
		Extra: map[string][]string{"Scopes.Example.COM/Mixed": {"a", "b"}, "authentication.kubernetes.io/credential-id": {"X509SHA256=ab"}}}
	bob = session.Identity{Name: "bob", Groups: []string{"system:authenticated"}}
)

// pki is a CA and the serving certificate every replica shares, as replicas
// of one Deployment share one Secret.
type pki struct {
	pool *x509.CertPool
	cert tls.Certificate
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: testServerName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{testServerName}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &pki{pool: pool, cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
}

// localCall is a request the fake terminal of a replica served.
type localCall struct {
	user                    session.Identity
	namespace, pod, subpath string
	method, query, host     string
	header                  http.Header
	body                    string
}

// fakeTerminal stands in for sockjs.Terminal.ServeAttach: it records what
// reached it and answers in SockJS framing, naming its replica.
type fakeTerminal struct {
	name string

	mu    sync.Mutex
	calls []localCall
}

func (f *fakeTerminal) serve(w http.ResponseWriter, r *http.Request, namespace, pod, subpath string) {
	u, _ := request.UserFrom(r.Context())
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.calls = append(f.calls, localCall{
		user: session.IdentityFrom(u), namespace: namespace, pod: pod, subpath: subpath,
		method: r.Method, query: r.URL.RawQuery, host: r.Host, header: r.Header.Clone(), body: string(body),
	})
	f.mu.Unlock()
	switch {
	case strings.HasSuffix(subpath, "/xhr_streaming") && r.Method == http.MethodPost:
		w.Header().Set("Content-Type", "application/javascript; charset=UTF-8")
		_, _ = io.WriteString(w, strings.Repeat("h", 2048)+"\no\n")
		_, _ = fmt.Fprintf(w, "a[\"served-by:%s user:%s\"]\n", f.name, u.GetName())
		_ = http.NewResponseController(w).Flush()
		<-r.Context().Done()
	case strings.HasSuffix(subpath, "/xhr"), strings.HasSuffix(subpath, "/eventsource"):
		_, _ = fmt.Fprintf(w, "a[\"served-by:%s user:%s\"]\n", f.name, u.GetName())
	case strings.HasSuffix(subpath, "/xhr_send"):
		if strings.Contains(string(body), "unknown") {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		_, _ = fmt.Fprintf(w, "local:%s", f.name)
	}
}

func (f *fakeTerminal) served() []localCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]localCall(nil), f.calls...)
}

type replica struct {
	name string
	p    *Peers
	term *fakeTerminal
	srv  *httptest.Server
}

type cluster struct {
	t        *testing.T
	pki      *pki
	cs       *fake.Clientset
	replicas []*replica
	client   *http.Client
}

// newCluster starts n replicas sharing a fake kube-apiserver, each an HTTPS
// server with the public attach path (behind a stand-in for the front-proxy
// chain) and the internal one (behind a stand-in for delegated authn).
func newCluster(t *testing.T, n int, tweak func(*Config)) *cluster {
	t.Helper()
	c := &cluster{t: t, pki: newPKI(t), cs: newFakeKube()}
	c.client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pki.pool, ServerName: testServerName}}}
	t.Cleanup(c.client.CloseIdleConnections)
	for i := range n {
		c.replicas = append(c.replicas, c.start(fmt.Sprintf("r%d", i), tweak))
	}
	return c
}

func (c *cluster) start(name string, tweak func(*Config)) *replica {
	t := c.t
	srv := httptest.NewUnstartedServer(nil)
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{c.pki.cert}}
	term := &fakeTerminal{name: name}
	cfg := Config{
		Client:      c.cs,
		Namespace:   testNS,
		ReplicaName: name,
		Address:     srv.Listener.Addr().String(),
		RootCAs:     c.pki.pool,
		ServerName:  testServerName,
		Token:       func() (string, error) { return peerToken, nil },
		Identities:  []string{peerUser},
		Local:       term.serve,
		Grace:       time.Minute,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(InternalPrefix, tokenAuthn(p.InternalHandler()))
	mux.HandleFunc("/public/", func(w http.ResponseWriter, r *http.Request) {
		// What the aggregator and the front-proxy authenticator establish.
		id, err := decodeIdentity(r.Header.Get("X-Test-Identity"))
		if err == nil {
			r = r.WithContext(request.WithUser(r.Context(), id.UserInfo()))
		}
		parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/public/"), "/", 3)
		subpath := ""
		if len(parts) == 3 {
			subpath = "/" + parts[2]
		}
		p.ServeAttach(w, r, parts[0], parts[1], subpath)
	})
	srv.Config.Handler = mux
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(p.transport.CloseIdleConnections)
	return &replica{name: name, p: p, term: term, srv: srv}
}

// tokenAuthn stands in for delegated authentication (TokenReview).
func tokenAuthn(next http.Handler) http.Handler {
	users := map[string]string{peerToken: peerUser, malloryToken: "mallory"}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if name, ok := users[tok]; ok {
			r = r.WithContext(request.WithUser(r.Context(), &user.DefaultInfo{Name: name, Groups: []string{"system:authenticated"}}))
		}
		next.ServeHTTP(w, r)
	})
}

// newFakeKube gives Leases UIDs, which route deletes are conditioned on.
func newFakeKube() *fake.Clientset {
	cs := fake.NewClientset()
	var n atomic.Int64
	cs.PrependReactor("create", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		obj := a.(k8stesting.CreateAction).GetObject().(metav1.Object)
		obj.SetUID(types.UID(fmt.Sprintf("uid-%d", n.Add(1))))
		if ts := obj.GetCreationTimestamp(); ts.IsZero() {
			obj.SetCreationTimestamp(metav1.Now())
		}
		return false, nil, nil
	})
	return cs
}

func (c *cluster) leases(component string) []coordinationv1.Lease {
	c.t.Helper()
	list, err := c.cs.CoordinationV1().Leases(testNS).List(context.Background(), metav1.ListOptions{LabelSelector: componentLabel + "=" + component})
	if err != nil {
		c.t.Fatal(err)
	}
	return list.Items
}

// request sends a SockJS request as id to replica r's public attach path.
func (c *cluster) request(ctx context.Context, r *replica, id session.Identity, method, path, body string, extra http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, r.srv.URL+"/public/ns/pod"+path, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	for k, v := range extra {
		req.Header[k] = v
	}
	req.Header.Set("X-Test-Identity", encodeIdentity(id))
	return c.client.Do(req)
}

func (c *cluster) do(r *replica, id session.Identity, method, path, body string) (int, string) {
	c.t.Helper()
	resp, err := c.request(context.Background(), r, id, method, path, body, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// stream opens an xhr_streaming request and returns its lines as they come.
func (c *cluster) stream(r *replica, id session.Identity, path string) (lines <-chan string, cancel func()) {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := c.request(ctx, r, id, http.MethodPost, path, "", nil)
	if err != nil {
		cancel()
		c.t.Fatal(err)
	}
	ch := make(chan string, 64)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if line := sc.Text(); strings.Trim(line, "h") != "" {
				ch <- line
			}
		}
	}()
	c.t.Cleanup(cancel)
	return ch, cancel
}

func waitLine(t *testing.T, lines <-chan string, want string) []string {
	t.Helper()
	var seen []string
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("stream ended before %q; saw %q", want, seen)
			}
			seen = append(seen, l)
			if strings.Contains(l, want) {
				return seen
			}
		case <-timeout:
			t.Fatalf("no %q within 10s; saw %q", want, seen)
		}
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}
