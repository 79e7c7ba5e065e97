package scaleout

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	authuser "k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecube-io/console-apiserver/pkg/session"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

const serverUser = "system:serviceaccount:" + framework.ConsoleNamespace + ":" + framework.ConsoleServiceAccount

// TestCosts measures what the shared store and the routing cost per session:
// the calls replicas make to kube-apiserver (from its audit log), the
// latency the store adds to create and bind, the storage of a pending
// session, the latency a forwarding hop adds, and memory per open terminal.
// It asserts little; it reports (go test -v), for docs/scale-out.md.
func TestCosts(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	ns := podFor(t, "alice")
	alice := newUser(t, "alice")

	// Calls per session, WebSocket then fallback transport.
	for _, tc := range []struct {
		transport framework.Transport
		n         int
	}{{framework.WebSocket, 20}, {framework.XHRStreaming, 10}} {
		// Warm the delegated authorizers' caches first, as in steady state.
		cycle(t, ctx, alice, ns, fmt.Sprintf("warm-%s", tc.transport), tc.transport, 0)
		time.Sleep(500 * time.Millisecond)
		from := time.Now()
		for i := range tc.n {
			cycle(t, ctx, alice, ns, fmt.Sprintf("cost-%s-%02d", tc.transport, i), tc.transport, 0)
		}
		to := time.Now()
		time.Sleep(2 * time.Second) // the audit log's last lines
		calls := auditCalls(t, from, to)
		var lines []string
		total := 0.0
		for _, k := range slices.Sorted(maps.Keys(calls)) {
			per := float64(calls[k]) / float64(tc.n)
			lines = append(lines, fmt.Sprintf("%s %.2f", k, per))
			total += per
		}
		t.Logf("COST %s: kube-apiserver calls by the replicas per session (%d sessions in %s, heartbeats and sweeps included): %.1f\n  %s",
			tc.transport, tc.n, to.Sub(from).Round(time.Millisecond), total, strings.Join(lines, "\n  "))
	}

	// Latency the store adds: the same Create+Claim on KubeStore (against
	// this kube-apiserver, as the server's ServiceAccount) and MemoryStore.
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(cp.Dir, "console-replica-0", "kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 1000, 1000
	cs := kubernetes.NewForConfigOrDie(cfg)
	limits := session.Limits{TTL: 30 * time.Second, MaxPendingPerUser: 10}
	owner := session.Identity{Name: "bench", Groups: []string{"system:authenticated"}}
	for name, store := range map[string]session.Store{
		"kube":   session.NewKubeStore(cs.CoreV1().Secrets(framework.ConsoleNamespace), limits, nil),
		"memory": session.NewMemoryStore(limits, nil),
	} {
		var creates, claims []time.Duration
		for range 100 {
			t0 := time.Now()
			s, err := store.Create(session.Session{Owner: owner, Target: session.Target{Namespace: "ns", Pod: "pod", Container: "app"}, Command: []string{"sh"}, TTY: true})
			if err != nil {
				t.Fatal(err)
			}
			t1 := time.Now()
			_, release, err := store.Claim(s.ID, owner, "ns", "pod")
			if err != nil {
				t.Fatal(err)
			}
			claims = append(claims, time.Since(t1))
			creates = append(creates, t1.Sub(t0))
			release()
		}
		t.Logf("COST store %s: create p50 %s p99 %s; claim p50 %s p99 %s", name,
			pct(creates, 50), pct(creates, 99), pct(claims, 50), pct(claims, 99))
	}

	// Storage of a pending session, as kube-apiserver stores it (protobuf).
	s, err := session.NewKubeStore(cs.CoreV1().Secrets(framework.ConsoleNamespace), limits, nil).Create(session.Session{
		Owner:   session.Identity{Name: "alice", UID: "8a5d3b0e-5d4c-4e0b-a0a4-0e8f4b0c9f11", Groups: []string{"devs", "system:authenticated"}, Extra: map[string][]string{"authentication.kubernetes.io/credential-id": {"X509SHA256=8f3c4b6d0e2a1f9c7b5d3e1a0f8c6b4d2e0a9f7c5b3d1e0f8a6c4b2d0e9f7a5c"}}},
		Target:  session.Target{Namespace: "team-a", Pod: "web-7d9f8c6b5-x2x9z", Container: "app"},
		Command: []string{"bash"}, TTY: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	pb, err := cs.CoreV1().RESTClient().Get().Namespace(framework.ConsoleNamespace).Resource("secrets").Name(session.SecretName(s.ID)).
		SetHeader("Accept", "application/vnd.kubernetes.protobuf").DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := cs.CoreV1().RESTClient().Get().Namespace(framework.ConsoleNamespace).Resource("secrets").Name(session.SecretName(s.ID)).DoRaw(ctx)
	route, err := cs.CoordinationV1().Leases(framework.ConsoleNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=console-route", Limit: 1})
	routeSize := 0
	if err == nil && len(route.Items) > 0 {
		b, _ := cs.CoordinationV1().RESTClient().Get().Namespace(framework.ConsoleNamespace).Resource("leases").Name(route.Items[0].Name).
			SetHeader("Accept", "application/vnd.kubernetes.protobuf").DoRaw(ctx)
		routeSize = len(b)
	}
	t.Logf("COST storage: a pending session's Secret is %d bytes as protobuf (%d as JSON), key /registry/secrets/%s/%s (%d bytes); a route Lease %d bytes",
		len(pb), len(js), framework.ConsoleNamespace, session.SecretName(s.ID), len("/registry/secrets/"+framework.ConsoleNamespace+"/"+session.SecretName(s.ID)), routeSize)

	measureForwardHop(t, ctx, ns)
	measureMemory(t, ctx, alice, ns)
}

// auditCalls counts the replicas' requests to kube-apiserver between from
// and to, by verb and resource.
func auditCalls(t *testing.T, from, to time.Time) map[string]int {
	t.Helper()
	events, err := cp.AuditEvents(func(e *auditv1.Event) bool {
		return e.User.Username == serverUser && e.Stage == auditv1.StageResponseComplete &&
			!e.RequestReceivedTimestamp.Time.Before(from) && e.RequestReceivedTimestamp.Time.Before(to)
	})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range events {
		k := e.Verb
		if r := e.ObjectRef; r != nil {
			k += " " + r.Resource
			if r.Subresource != "" {
				k += "/" + r.Subresource
			}
			if e.ImpersonatedUser != nil {
				k += " (as the caller)"
			}
		} else {
			k += " " + e.RequestURI
		}
		out[k]++
	}
	return out
}

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s) - 1) * p / 100
	return s[i].Round(10 * time.Microsecond)
}

// measureForwardHop times xhr_send round trips of one session sent straight
// to its holder and sent to another replica (one forwarding hop), bypassing
// kube-apiserver: the front-proxy credentials go to each replica directly.
func measureForwardHop(t *testing.T, ctx context.Context, ns string) {
	t.Helper()
	id := &authuser.DefaultInfo{Name: "alice", Groups: []string{"devs", "system:authenticated"}}
	client := func(r *replica) (*http.Client, string) {
		cfg := cp.IdentityConfig(id)
		cfg.Host = r.url("")
		cfg.CAData = caPEM
		c, err := rest.HTTPClientFor(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return c, framework.AttachURL(cfg.Host, ns, "app") + "/777/hopmeasure"
	}
	holderClient, holderBase := client(replicas[0])
	otherClient, otherBase := client(replicas[1])

	sctx, stop := context.WithCancel(ctx)
	defer stop()
	req, _ := http.NewRequestWithContext(sctx, http.MethodPost, holderBase+"/xhr_streaming", nil)
	resp, err := holderClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	opened := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(resp.Body)
		once := false
		for sc.Scan() {
			if sc.Text() == "o" && !once {
				once = true
				close(opened)
			}
		}
	}()
	select {
	case <-opened:
	case <-time.After(10 * time.Second):
		t.Fatalf("no open frame (%s)", resp.Status)
	}
	send := func(c *http.Client, base string) time.Duration {
		t0 := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/xhr_send", strings.NewReader(`["ping"]`))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("xhr_send: %s", resp.Status)
		}
		return time.Since(t0)
	}
	var local, hop []time.Duration
	for i := range 230 {
		l, h := send(holderClient, holderBase), send(otherClient, otherBase)
		if i >= 30 { // connections and caches warm
			local, hop = append(local, l), append(hop, h)
		}
	}
	t.Logf("COST forwarding hop: xhr_send round trip to the holder p50 %s p99 %s; through another replica p50 %s p99 %s (200 each, direct to the replicas)",
		pct(local, 50), pct(local, 99), pct(hop, 50), pct(hop, 99))
}

// measureMemory opens idle terminals and reads what they cost the replicas
// and kube-apiserver.
func measureMemory(t *testing.T, ctx context.Context, alice *user, ns string) {
	t.Helper()
	const n = 40
	before := snapshot(t)
	var terms []*framework.Terminal
	for i := range n {
		marker := fmt.Sprintf("idle-%02d", i)
		s, err := createShell(ctx, alice, ns, "sh", "-c", "exec sh", marker)
		if err != nil {
			t.Fatal(err)
		}
		term := open(t, ctx, alice, ns, framework.WebSocket)
		if err := term.Bind(s.Status.ID); err != nil {
			t.Fatal(err)
		}
		if err := term.Stdin("echo " + marker + "-up\n"); err != nil {
			t.Fatal(err)
		}
		if err := term.Out.WaitFor(ctx, marker+"-up"); err != nil {
			t.Fatal(err)
		}
		terms = append(terms, term)
	}
	time.Sleep(2 * time.Second)
	after := snapshot(t)
	// Where the memory goes: SCALEOUT_HEAP_PROFILES=DIR keeps each
	// replica's heap profile at this point (go tool pprof -top).
	if dir := os.Getenv("SCALEOUT_HEAP_PROFILES"); dir != "" {
		for _, r := range replicas {
			if resp, err := r.direct.Get(r.url("/debug/pprof/heap")); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				_ = os.WriteFile(filepath.Join(dir, r.name+".heap"), b, 0o600)
			}
		}
	}
	per := func(k string) float64 { return (after[k] - before[k]) / n }
	t.Logf("COST memory per open WebSocket terminal (%d idle terminals): replicas: %.1f goroutines, %.0f KiB live heap, %.0f KiB RSS; kube-apiserver: %.1f goroutines, %.0f KiB RSS",
		n, per("replica goroutines"), per("replica heap")/1024, per("replica rss")/1024, per("apiserver goroutines"), per("apiserver rss")/1024)
	for _, term := range terms {
		_ = term.Stdin("exit\n")
	}
	for _, term := range terms {
		select {
		case <-term.Done():
		case <-time.After(30 * time.Second):
			t.Fatal("an idle terminal did not end after exit")
		}
	}
}

func snapshot(t *testing.T) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, r := range replicas {
		// A heap profile with gc=1 collects first: the heap figure is then
		// what is live, not what awaits collection.
		if resp, err := r.direct.Get(r.url("/debug/pprof/heap?gc=1")); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		out["replica goroutines"] += r.metric(t, "go_goroutines")
		out["replica heap"] += r.metric(t, "go_memstats_heap_inuse_bytes")
		out["replica rss"] += float64(rss(t, r.proc.PID()))
	}
	b, err := cp.AdminClient().Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out["apiserver goroutines"] = sumMetric(string(b), "go_goroutines")
	out["apiserver rss"] = float64(rss(t, cp.Processes()["kube-apiserver"]))
	return out
}

func rss(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}
