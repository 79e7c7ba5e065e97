package peers

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kubecube-io/console-apiserver/pkg/session"
)

// The first receiving request makes its replica the session's holder; every
// other replica forwards the session's requests there, as the same caller,
// without the client's credentials or proxy headers.
func TestFallbackSessionIsServedByItsFirstReplica(t *testing.T) {
	c := newCluster(t, 3, nil)
	a, b, r2 := c.replicas[0], c.replicas[1], c.replicas[2]

	lines, _ := c.stream(a, alice, "/123/abcdefgh/xhr_streaming?t=1")
	waitLine(t, lines, "served-by:r0 user:alice")
	routes := c.leases(componentRoute)
	if len(routes) != 1 {
		t.Fatalf("%d routes, want 1", len(routes))
	}
	rt := routes[0]
	if *rt.Spec.HolderIdentity != a.p.Instance() || rt.Annotations[addressAnno] != a.p.cfg.Address || rt.Labels[instanceLabel] != a.p.Instance() {
		t.Fatalf("route %+v does not name r0 (%s at %s)", rt, a.p.Instance(), a.p.cfg.Address)
	}

	hostile := http.Header{
		"Authorization":                {"Bearer the-clients-own"},
		"Impersonate-User":             {"system:admin"},
		"X-Remote-User":                {"system:admin"},
		"X-Console-Forwarded-Identity": {encodeIdentity(session.Identity{Name: "system:admin"})},
		"Origin":                       {"https://console.example.com"},
		"Content-Type":                 {"text/plain"},
	}
	resp, err := c.request(context.Background(), b, alice, http.MethodPost, "/123/abcdefgh/xhr_send?t=2", `["{\"Op\":\"stdin\"}"]`, hostile)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("forwarded send: %s", resp.Status)
	}
	if code, body := c.do(r2, alice, http.MethodPost, "/123/abcdefgh/xhr", ""); code != 200 || !strings.Contains(body, "served-by:r0") {
		t.Fatalf("forwarded poll: %d %q, want r0's answer", code, body)
	}
	if n := len(b.term.served()) + len(r2.term.served()); n != 0 {
		t.Fatalf("r1 and r2 served %d requests themselves", n)
	}

	calls := a.term.served()
	if len(calls) != 3 {
		t.Fatalf("r0 served %d requests, want 3", len(calls))
	}
	send := calls[1]
	if !send.user.Equal(alice) || send.user.UID != alice.UID || len(send.user.Extra) != 2 ||
		send.user.Extra["Scopes.Example.COM/Mixed"][1] != "b" {
		t.Fatalf("the owner served the send as %+v, want exactly %+v", send.user, alice)
	}
	if send.namespace != "ns" || send.pod != "pod" || send.subpath != "/123/abcdefgh/xhr_send" || send.query != "t=2" || send.method != http.MethodPost {
		t.Fatalf("forwarded as %+v", send)
	}
	if send.body != `["{\"Op\":\"stdin\"}"]` {
		t.Fatalf("body %q", send.body)
	}
	for _, h := range []string{"Authorization", "Impersonate-User", "X-Remote-User", headerIdentity, headerInstance, headerHost} {
		if v := send.header.Get(h); v != "" {
			t.Errorf("the owner's terminal saw %s: %q", h, v)
		}
	}
	if send.header.Get("Origin") != "https://console.example.com" || send.header.Get("Content-Type") != "text/plain" {
		t.Errorf("lost headers: %v", send.header)
	}
	if send.host != strings.TrimPrefix(b.srv.URL, "https://") {
		t.Errorf("host %q, want the one the client addressed (%s), for same-origin checks", send.host, b.srv.URL)
	}
}

func TestStatelessRequestsAndWebSocketStayLocal(t *testing.T) {
	c := newCluster(t, 2, nil)
	b := c.replicas[1]
	for _, req := range []struct{ method, path string }{
		{http.MethodGet, "/123/abcdefgh/websocket"},
		{http.MethodGet, "/info"},
		{http.MethodGet, ""},
		{http.MethodOptions, "/123/abcdefgh/xhr_streaming"},
		{http.MethodGet, "/123/abcdefgh/xhr_streaming"}, // wrong method: sockjs-go answers 405
		{http.MethodPost, "/123/abcdefgh/xhr_send"},     // a send to a session nobody holds
		{http.MethodPost, "/123/" + strings.Repeat("x", 129) + "/xhr"},
	} {
		c.do(b, alice, req.method, req.path, `["unknown"]`)
	}
	if n := len(b.term.served()); n != 7 {
		t.Fatalf("served %d locally, want 7", n)
	}
	if n := len(c.leases(componentRoute)); n != 0 {
		t.Fatalf("%d routes published for stateless requests", n)
	}
}

// A session's route is keyed by its caller: another user naming the same
// SockJS segment reaches nothing of alice's.
func TestRoutesAreKeyedByCaller(t *testing.T) {
	c := newCluster(t, 2, nil)
	a, b := c.replicas[0], c.replicas[1]
	lines, _ := c.stream(a, alice, "/1/seg/xhr_streaming")
	waitLine(t, lines, "served-by:r0")
	if code, _ := c.do(b, bob, http.MethodPost, "/1/seg/xhr_send", `["unknown"]`); code != http.StatusNotFound {
		t.Fatalf("bob's send: %d, want a local 404", code)
	}
	if len(a.term.served()) != 1 || len(b.term.served()) != 1 || b.term.served()[0].user.Name != "bob" {
		t.Fatal("bob's request reached alice's session")
	}
	// Different pods are different sessions too.
	if routeKey(alice, "ns", "pod", "seg") == routeKey(alice, "ns", "pod2", "seg") ||
		routeKey(alice, "ns", "pod", "seg") == routeKey(bob, "ns", "pod", "seg") {
		t.Fatal("route keys collide")
	}
	reordered := alice
	reordered.Groups = []string{"system:authenticated", "devs"}
	if routeKey(alice, "ns", "pod", "seg") != routeKey(reordered, "ns", "pod", "seg") {
		t.Fatal("group order changed the route key")
	}
}

// Of replicas racing to open one session, one holds it and the others
// forward to it.
func TestOwnershipRace(t *testing.T) {
	c := newCluster(t, 3, nil)
	for round := range 10 {
		seg := "race" + string(rune('a'+round))
		var wg sync.WaitGroup
		bodies := make([]string, len(c.replicas))
		for i, r := range c.replicas {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, bodies[i] = c.do(r, alice, http.MethodPost, "/1/"+seg+"/xhr", "")
			}()
		}
		wg.Wait()
		for _, b := range bodies[1:] {
			if b != bodies[0] || !strings.Contains(b, "served-by:") {
				t.Fatalf("round %d: answers %q differ: more than one holder", round, bodies)
			}
		}
	}
	if n := len(c.leases(componentRoute)); n != 10 {
		t.Fatalf("%d routes for 10 sessions", n)
	}
}

func TestInternalPathTrustsOnlyPeers(t *testing.T) {
	c := newCluster(t, 1, nil)
	a := c.replicas[0]
	post := func(token, instance, identity, path string) (int, http.Header, string) {
		req, _ := http.NewRequest(http.MethodPost, a.srv.URL+path, strings.NewReader("[]"))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		req.Header.Set(headerInstance, instance)
		req.Header.Set(headerIdentity, identity)
		resp, err := c.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	good := InternalPrefix + "ns/pod/1/seg/xhr_send"
	inst, id := a.p.Instance(), encodeIdentity(alice)
	for _, tc := range []struct {
		name                            string
		token, instance, identity, path string
		code                            int
	}{
		{"no credentials", "", inst, id, good, http.StatusUnauthorized},
		{"another user", malloryToken, inst, id, good, http.StatusForbidden},
		{"another instance", peerToken, "0123456789abcdef", id, good, http.StatusGone},
		{"no identity", peerToken, inst, "", good, http.StatusBadRequest},
		{"garbage identity", peerToken, inst, "!!", good, http.StatusBadRequest},
		{"nameless identity", peerToken, inst, encodeIdentity(session.Identity{Groups: []string{"system:masters"}}), good, http.StatusBadRequest},
		{"websocket", peerToken, inst, id, InternalPrefix + "ns/pod/1/seg/websocket", http.StatusNotFound},
		{"bad namespace", peerToken, inst, id, InternalPrefix + "NS!/pod/1/seg/xhr_send", http.StatusNotFound},
		{"no pod", peerToken, inst, id, InternalPrefix + "ns", http.StatusNotFound},
	} {
		code, hdr, body := post(tc.token, tc.instance, tc.identity, tc.path)
		if code != tc.code {
			t.Errorf("%s: %d %s, want %d", tc.name, code, body, tc.code)
		}
		if tc.code == http.StatusGone && hdr.Get(headerPeerError) != peerErrorInstance {
			t.Errorf("%s: no %s header", tc.name, headerPeerError)
		}
	}
	if n := len(a.term.served()); n != 0 {
		t.Fatalf("%d refused requests reached the terminal", n)
	}
	if code, _, _ := post(peerToken, inst, id, good); code != http.StatusNoContent {
		t.Fatalf("a peer's request: %d", code)
	}
	if got := a.term.served(); len(got) != 1 || !got[0].user.Equal(alice) {
		t.Fatalf("served %+v", got)
	}
}

// The peer identity defaults to the replica's own, asked of kube-apiserver.
func TestPeerIdentityDefaultsToSelf(t *testing.T) {
	c := newCluster(t, 2, func(cfg *Config) { cfg.Identities = nil })
	c.cs.PrependReactor("create", "selfsubjectreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authenticationv1.SelfSubjectReview{Status: authenticationv1.SelfSubjectReviewStatus{
			UserInfo: authenticationv1.UserInfo{Username: peerUser}}}, nil
	})
	a, b := c.replicas[0], c.replicas[1]
	lines, _ := c.stream(a, alice, "/1/seg/xhr_streaming")
	waitLine(t, lines, "served-by:r0")
	if code, _ := c.do(b, alice, http.MethodPost, "/1/seg/xhr_send", "[]"); code != http.StatusNoContent {
		t.Fatalf("forwarded send: %d", code)
	}
}

func TestHolderGone(t *testing.T) {
	c := newCluster(t, 2, nil)
	a, b := c.replicas[0], c.replicas[1]
	lines, cancel := c.stream(a, alice, "/1/seg/xhr_streaming")
	waitLine(t, lines, "served-by:r0")
	cancel()
	a.srv.Close()

	code, body := c.do(b, alice, http.MethodPost, "/1/seg/xhr_send", "[]")
	if code != http.StatusNotFound || !strings.Contains(body, GoneMessage) {
		t.Fatalf("send to a gone holder: %d %q", code, body)
	}
	code, body = c.do(b, alice, http.MethodPost, "/1/seg/xhr_streaming", "")
	wantFrames := strings.Repeat("h", 2048) + "\n" +
		`a["{\"Op\":\"toast\",\"Data\":\"the replica serving this terminal is gone\"}"]` + "\n" +
		`c[2,"the replica serving this terminal is gone"]` + "\n"
	if code != 200 || body != wantFrames {
		t.Fatalf("stream from a gone holder: %d %q", code, body)
	}
	if !b.p.isDead(a.p.Instance()) {
		t.Fatal("the gone holder is not remembered")
	}
	code, body = c.do(b, alice, http.MethodGet, "/1/seg/eventsource", "")
	if code != 200 || !strings.HasPrefix(body, "\r\ndata: a[") || !strings.HasSuffix(body, "data: c[2,\"the replica serving this terminal is gone\"]\r\n\r\n") {
		t.Fatalf("eventsource from a gone holder: %d %q", code, body)
	}
	code, body = c.do(b, alice, http.MethodGet, "/1/seg/jsonp?c=cb.x", "")
	if code != 200 || body != `cb.x("c[2,\"the replica serving this terminal is gone\"]");`+"\r\n" {
		t.Fatalf("jsonp from a gone holder: %d %q", code, body)
	}
	code, body = c.do(b, alice, http.MethodGet, "/1/seg/htmlfile?c=cb", "")
	if code != 200 || !strings.Contains(body, "var c = parent.cb;") || !strings.Contains(body, `p("c[2,\"the replica serving this terminal is gone\"]");`) {
		t.Fatalf("htmlfile from a gone holder: %d %q", code, body)
	}
	if n := len(b.term.served()); n != 0 {
		t.Fatalf("r1 served %d itself", n)
	}
}

// A holder that dies mid-answer: the forwarding replica ends the stream it
// relays with the close frames instead of cutting it.
func TestHolderGoneMidStream(t *testing.T) {
	c := newCluster(t, 2, nil)
	a, b := c.replicas[0], c.replicas[1]
	first, _ := c.stream(a, alice, "/1/seg/xhr_streaming")
	waitLine(t, first, "served-by:r0")
	relayed, _ := c.stream(b, alice, "/1/seg/xhr_streaming")
	waitLine(t, relayed, "served-by:r0")
	a.srv.CloseClientConnections()
	seen := waitLine(t, relayed, `c[2,"the replica serving this terminal is gone"]`)
	if !strings.Contains(strings.Join(seen, "\n"), `"Op\":\"toast\"`) {
		t.Fatalf("no toast before the close: %q", seen)
	}
}

// An address now served by another instance (a restarted container): that
// instance says so, and the session counts as gone.
func TestRouteToAnotherInstanceAtTheAddress(t *testing.T) {
	c := newCluster(t, 2, nil)
	a, b := c.replicas[0], c.replicas[1]
	key := routeKey(alice, "ns", "pod", "seg")
	old := "00000000deadbeef"
	_, err := c.cs.CoordinationV1().Leases(testNS).Create(context.Background(), &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: routeName(key), Annotations: map[string]string{addressAnno: a.p.cfg.Address},
			Labels: map[string]string{componentLabel: componentRoute, managedByLabel: managedBy, instanceLabel: old}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &old},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if code, body := c.do(b, alice, http.MethodPost, "/1/seg/xhr", ""); code != 200 || !strings.Contains(body, GoneMessage) {
		t.Fatalf("%d %q", code, body)
	}
	if len(a.term.served()) != 0 {
		t.Fatal("the new instance served a session of the old one")
	}
}

// A session that goes quiet past the grace period is forgotten and its route
// deleted; the replica's own Lease is kept alive, and dropped at shutdown.
func TestLifecycle(t *testing.T) {
	c := newCluster(t, 2, func(cfg *Config) {
		cfg.Grace = 300 * time.Millisecond
		cfg.Heartbeat = 100 * time.Millisecond
		cfg.LeaseDuration = time.Second
	})
	a, b := c.replicas[0], c.replicas[1]
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, r := range c.replicas {
		wg.Add(1)
		go func() { defer wg.Done(); r.p.Run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()

	eventually(t, "both replica Leases", func() bool { return len(c.leases(componentReplica)) == 2 })
	hb := func() *coordinationv1.Lease {
		l, err := c.cs.CoordinationV1().Leases(testNS).Get(context.Background(), a.p.heartbeatName(), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	first := hb()
	if first.Annotations[addressAnno] != a.p.cfg.Address || first.Annotations[replicaAnno] != "r0" || *first.Spec.LeaseDurationSeconds != 1 {
		t.Fatalf("replica lease %+v", first)
	}
	eventually(t, "a renewal", func() bool { return hb().Spec.RenewTime.After(first.Spec.RenewTime.Time) })

	_, stop := c.stream(a, alice, "/1/seg/xhr_streaming")
	eventually(t, "a route", func() bool { return len(c.leases(componentRoute)) == 1 })
	if code, _ := c.do(b, alice, http.MethodPost, "/1/seg/xhr_send", "[]"); code != http.StatusNoContent {
		t.Fatal("forwarding failed")
	}
	// While a request is in flight the session is kept, however long.
	time.Sleep(600 * time.Millisecond)
	if len(c.leases(componentRoute)) != 1 {
		t.Fatal("a session with a request in flight was forgotten")
	}
	stop()
	eventually(t, "the route of a quiet session deleted", func() bool { return len(c.leases(componentRoute)) == 0 })

	// Shutdown removes what the replica published.
	_, stop = c.stream(a, bob, "/1/other/xhr_streaming")
	eventually(t, "a route", func() bool { return len(c.leases(componentRoute)) == 1 })
	stop()
	if err := a.p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(c.leases(componentRoute)); n != 0 {
		t.Fatalf("%d routes after shutdown", n)
	}
	eventually(t, "only r1's Lease", func() bool {
		ls := c.leases(componentReplica)
		return len(ls) == 1 && ls[0].Name == b.p.heartbeatName()
	})
}

// Routes of a replica whose Lease expired are swept, with that Lease; routes
// of live replicas stay.
func TestSweepRoutesOfDeadReplicas(t *testing.T) {
	c := newCluster(t, 2, func(cfg *Config) { cfg.LeaseDuration = 2 * time.Second; cfg.Heartbeat = time.Second })
	a, b := c.replicas[0], c.replicas[1]
	ctx := context.Background()
	if err := a.p.renewHeartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.p.renewHeartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	lines, _ := c.stream(a, alice, "/1/live/xhr_streaming")
	waitLine(t, lines, "served-by:r0")
	lines, _ = c.stream(b, alice, "/1/dead/xhr_streaming")
	waitLine(t, lines, "served-by:r1")

	// b stops renewing; later, a sweeps.
	a.p.now = func() time.Time { return time.Now().Add(time.Minute) }
	n, err := a.p.sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("swept %d, want b's Lease and its route", n)
	}
	routes := c.leases(componentRoute)
	if len(routes) != 1 || routes[0].Labels[instanceLabel] != a.p.Instance() {
		t.Fatalf("routes left: %d", len(routes))
	}
	if ls := c.leases(componentReplica); len(ls) != 1 || ls[0].Name != a.p.heartbeatName() {
		t.Fatalf("replica leases left: %v", ls)
	}
}

func TestIdentityRoundTrip(t *testing.T) {
	for _, id := range []session.Identity{
		alice, bob,
		{Name: "名前 with spaces", UID: "ü", Groups: []string{}, Extra: map[string][]string{"UPPER/Case": {"", "x"}}},
	} {
		got, err := decodeIdentity(encodeIdentity(id))
		if err != nil {
			t.Fatal(err)
		}
		a, _ := json.Marshal(wireIdentity(id))
		b, _ := json.Marshal(wireIdentity(got))
		if string(a) != string(b) || !got.Equal(id) {
			t.Fatalf("%s became %s", a, b)
		}
	}
}

func TestNewValidates(t *testing.T) {
	ok := Config{Client: newFakeKube(), Namespace: "ns", Address: "10.0.0.1:8443", RootCAs: newPKI(t).pool,
		Token: func() (string, error) { return "", nil }, Local: func(http.ResponseWriter, *http.Request, string, string, string) {}}
	if _, err := New(ok); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*Config){
		"no address":     func(c *Config) { c.Address = "" },
		"bad address":    func(c *Config) { c.Address = "10.0.0.1" },
		"no CA":          func(c *Config) { c.RootCAs = nil },
		"no token":       func(c *Config) { c.Token = nil },
		"short lease":    func(c *Config) { c.Heartbeat = 10 * time.Second; c.LeaseDuration = 15 * time.Second },
		"no namespace":   func(c *Config) { c.Namespace = "" },
		"no local serve": func(c *Config) { c.Local = nil },
	} {
		cfg := ok
		mutate(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A client that sends at once (before the open frame, unlike sockjs-client)
// can beat its receiving request to the session; the send waits for it.
func TestSendThatBeatsItsSessionWaitsForIt(t *testing.T) {
	c := newCluster(t, 2, nil)
	a, b := c.replicas[0], c.replicas[1]
	done := make(chan int)
	go func() {
		code, _ := c.do(b, alice, http.MethodPost, "/1/early/xhr_send", "[]")
		done <- code
	}()
	time.Sleep(60 * time.Millisecond)
	lines, _ := c.stream(a, alice, "/1/early/xhr_streaming")
	waitLine(t, lines, "served-by:r0")
	if code := <-done; code != http.StatusNoContent {
		t.Fatalf("early send: %d", code)
	}
	if calls := a.term.served(); len(calls) != 2 || !strings.HasSuffix(calls[1].subpath, "/xhr_send") {
		t.Fatalf("r0 served %d requests, want the stream and the send", len(calls))
	}
}

// A replica swept as dead while alive (it could not renew for a lease
// duration) writes its Lease again, and the routes of its sessions.
func TestRepublishAfterBeingSweptAsDead(t *testing.T) {
	c := newCluster(t, 1, func(cfg *Config) {
		cfg.Heartbeat = 100 * time.Millisecond
		cfg.LeaseDuration = time.Second
	})
	a := c.replicas[0]
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	lines, _ := c.stream(a, alice, "/1/seg/xhr_streaming")
	waitLine(t, lines, "served-by:r0")
	eventually(t, "the replica Lease", func() bool { return len(c.leases(componentReplica)) == 1 })

	leases := c.cs.CoordinationV1().Leases(testNS)
	for _, l := range append(c.leases(componentReplica), c.leases(componentRoute)...) {
		if err := leases.Delete(ctx, l.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the Lease and the route written again", func() bool {
		return len(c.leases(componentReplica)) == 1 && len(c.leases(componentRoute)) == 1
	})
	rt := c.leases(componentRoute)[0]
	if !a.p.ownedLeases().Has(rt.Name) {
		t.Fatal("the republished route is not the one the session is tracked under")
	}
}

// Anonymous requests are refused by the terminal, and publish nothing.
func TestAnonymousIsNotRouted(t *testing.T) {
	c := newCluster(t, 1, nil)
	lines, _ := c.stream(c.replicas[0], session.Identity{Name: "system:anonymous", Groups: []string{"system:unauthenticated"}}, "/1/seg/xhr_streaming")
	waitLine(t, lines, "served-by:r0")
	if n := len(c.leases(componentRoute)); n != 0 {
		t.Fatalf("%d routes for an anonymous request", n)
	}
	if len(c.replicas[0].term.served()) != 1 {
		t.Fatal("the request did not reach the terminal, which answers 401")
	}
}
