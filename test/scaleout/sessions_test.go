package scaleout

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/kubecube-io/console-apiserver/pkg/peers"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

// cycle creates a session whose command carries marker, binds it over
// transport, checks the shell echoes, and exits with code. The replicas'
// logs then say which one created the session and which one bound it.
func cycle(t *testing.T, ctx context.Context, u *user, namespace, marker string, transport framework.Transport, code int) (created, bound *replica) {
	t.Helper()
	s, err := createShell(ctx, u, namespace, "sh", "-c", "exec sh", marker)
	if err != nil {
		t.Fatalf("%s: creating: %v", marker, err)
	}
	term := open(t, ctx, u, namespace, transport)
	if err := term.Bind(s.Status.ID); err != nil {
		t.Fatal(err)
	}
	if err := term.Stdin("echo " + marker + "-$((6*7))\n"); err != nil {
		t.Fatal(err)
	}
	if err := term.Out.WaitFor(ctx, marker+"-42"); err != nil {
		t.Fatalf("%s: %v (toasts %q)", marker, err, term.Toasts())
	}
	if err := term.Stdin(fmt.Sprintf("exit %d\n", code)); err != nil {
		t.Fatal(err)
	}
	closed, err := term.WaitClosed(ctx)
	if err != nil {
		t.Fatalf("%s: %v", marker, err)
	}
	if closed.Code != 1 || term.ExitCode() == nil || *term.ExitCode() != code {
		t.Fatalf("%s: closed %+v, exit code %v; want 1 and %d", marker, closed, term.ExitCode(), code)
	}
	created = whoLogged(t, `"Shell session created"`, marker)
	bound = whoLogged(t, `"Terminal session bound"`, marker)
	return created, bound
}

// TestAnyReplicaBindsAnySession: 30 create+bind cycles through the load
// balancer all work; every replica creates and binds some, and sessions
// created on one replica are bound on another.
func TestAnyReplicaBindsAnySession(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	ns := podFor(t, "alice")
	alice := newUser(t, "alice")
	createdBy, boundBy := map[string]int{}, map[string]int{}
	crossed := 0
	for i := range 30 {
		c, b := cycle(t, ctx, alice, ns, fmt.Sprintf("cycle-%02d", i), framework.WebSocket, i%3)
		createdBy[c.name]++
		boundBy[b.name]++
		if c != b {
			crossed++
		}
	}
	t.Logf("created by %v, bound by %v; %d of 30 bound on another replica than their creator's", createdBy, boundBy, crossed)
	// Binds are WebSocket connections, each its own TCP connection, so
	// round robin spreads them evenly. Creates share the aggregator's HTTP/2
	// connection and move only when it is reopened (GOAWAY): all replicas
	// usually create some, but that is not promised.
	for _, r := range replicas {
		if boundBy[r.name]+createdBy[r.name] == 0 {
			t.Errorf("%s served none of the sessions", r.name)
		}
	}
	if crossed == 0 {
		t.Error("no session was bound on another replica than its creator's")
	}
}

// TestSingleUseAndIdentityAcrossReplicas: a second bind of a used ID fails
// on another replica; another user's bind fails there and burns the ID.
func TestSingleUseAndIdentityAcrossReplicas(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ns := podFor(t, "alice", "mallory")
	alice, mallory := newUser(t, "alice"), newUser(t, "mallory")

	// Binds: which replica logged the outcome, by counting log lines.
	outcome := func(parts ...string) map[string]int {
		n := map[string]int{}
		for _, r := range replicas {
			n[r.name] = len(r.logLines(append([]string{`namespace="` + ns + `"`}, parts...)...))
		}
		return n
	}
	landed := func(before map[string]int, parts ...string) string {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			after := outcome(parts...)
			for name, n := range after {
				if n > before[name] {
					return name
				}
			}
		}
		t.Fatalf("no replica logged %q", parts)
		return ""
	}

	crossedReuse, crossedOther := false, false
	for attempt := 0; attempt < 8 && !(crossedReuse && crossedOther); attempt++ {
		// Alice binds and uses her session; a second bind of it fails.
		s, err := createShell(ctx, alice, ns)
		if err != nil {
			t.Fatal(err)
		}
		boundBefore := outcome(`"Terminal session bound"`)
		first := open(t, ctx, alice, ns, framework.WebSocket)
		if err := first.Bind(s.Status.ID); err != nil {
			t.Fatal(err)
		}
		if err := first.Stdin("echo first-bind\n"); err != nil {
			t.Fatal(err)
		}
		if err := first.Out.WaitFor(ctx, "first-bind"); err != nil {
			t.Fatal(err)
		}
		firstOn := landed(boundBefore, `"Terminal session bound"`)

		refusedBefore := outcome(`"Terminal bind refused"`)
		second := open(t, ctx, alice, ns, framework.WebSocket)
		if err := second.Bind(s.Status.ID); err != nil {
			t.Fatal(err)
		}
		expectRefused(t, ctx, second, "already used")
		if landed(refusedBefore, `"Terminal bind refused"`, `user="alice"`) != firstOn {
			crossedReuse = true
		}
		_ = first.Stdin("exit\n")

		// Mallory, who may open terminals there too, cannot bind alice's
		// ID on any replica, and her try burns it for every replica.
		s, err = createShell(ctx, alice, ns)
		if err != nil {
			t.Fatal(err)
		}
		refusedBefore = outcome(`"Terminal bind refused"`, `user="mallory"`)
		bad := open(t, ctx, mallory, ns, framework.WebSocket)
		if err := bad.Bind(s.Status.ID); err != nil {
			t.Fatal(err)
		}
		expectRefused(t, ctx, bad, "belongs to another user")
		malloryOn := landed(refusedBefore, `"Terminal bind refused"`, `user="mallory"`)
		refusedBefore = outcome(`"Terminal bind refused"`, `user="alice"`)
		late := open(t, ctx, alice, ns, framework.WebSocket)
		if err := late.Bind(s.Status.ID); err != nil {
			t.Fatal(err)
		}
		expectRefused(t, ctx, late, "already used")
		if landed(refusedBefore, `"Terminal bind refused"`, `user="alice"`) != malloryOn {
			crossedOther = true
		}
	}
	if !crossedReuse || !crossedOther {
		t.Fatalf("in 8 attempts, never saw the refusals on another replica (reuse %v, other user %v)", crossedReuse, crossedOther)
	}
}

func expectRefused(t *testing.T, ctx context.Context, term *framework.Terminal, why string) {
	t.Helper()
	if err := term.Refused(ctx, why); err != nil {
		t.Fatal(err)
	}
}

// TestFallbackTransportAcrossReplicas: an xhr_streaming session whose
// requests reach all three replicas works, echo and exit code included: one
// replica holds it, the two others forward to it.
func TestFallbackTransportAcrossReplicas(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ns := podFor(t, "alice")
	alice := newUser(t, "alice")

	before := peerMetrics(t)
	s, err := createShell(ctx, alice, ns, "sh")
	if err != nil {
		t.Fatal(err)
	}
	term := open(t, ctx, alice, ns, framework.XHRStreaming)
	if err := term.Bind(s.Status.ID); err != nil {
		t.Fatal(err)
	}
	if err := term.Resize(30, 100); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if err := term.Stdin(fmt.Sprintf("echo line-$((%d*3))\n", i)); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		if err := term.Out.WaitFor(ctx, fmt.Sprintf("line-%d", i*3)); err != nil {
			t.Fatal(err)
		}
	}
	if err := term.Stdin("stty size\n"); err != nil {
		t.Fatal(err)
	}
	if err := term.Out.WaitFor(ctx, "30 100"); err != nil {
		t.Fatal(err)
	}
	if err := term.Stdin("exit 3\n"); err != nil {
		t.Fatal(err)
	}
	closed, err := term.WaitClosed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if closed.Code != 1 || term.ExitCode() == nil || *term.ExitCode() != 3 {
		t.Fatalf("closed %+v, exit code %v; want 1 Process exited, and 3", closed, term.ExitCode())
	}

	holder := whoLogged(t, `"Holding a SockJS session of a fallback transport here"`, `namespace="`+ns+`"`)
	after := peerMetrics(t)
	report := []string{}
	for _, r := range replicas {
		fwd := after[r.name].forwardedOK - before[r.name].forwardedOK
		served := after[r.name].served - before[r.name].served
		report = append(report, fmt.Sprintf("%s forwarded %v, served for peers %v", r.name, fwd, served))
		if r == holder {
			if served == 0 {
				t.Errorf("the holder %s served no forwarded request", r.name)
			}
			continue
		}
		if fwd == 0 {
			t.Errorf("%s forwarded none of the session's requests: they did not spread over all replicas", r.name)
		}
	}
	t.Logf("held by %s; %s", holder.name, strings.Join(report, "; "))
}

type peerCounts struct{ forwardedOK, served float64 }

func peerMetrics(t *testing.T) map[string]peerCounts {
	t.Helper()
	out := map[string]peerCounts{}
	for _, r := range replicas {
		out[r.name] = peerCounts{
			forwardedOK: r.metric(t, "console_apiserver_peers_forwarded_requests_total", `result="ok"`),
			served:      r.metric(t, "console_apiserver_peers_served_requests_total"),
		}
	}
	return out
}

// TestOnlyReplicasMayForward: the internal path of a replica refuses a user
// (kube-apiserver's RBAC does not grant it), and an identity RBAC does grant
// it to but that is not the replicas' own (the replica checks).
func TestOnlyReplicasMayForward(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := podFor(t, "alice")
	admin := cp.AdminClient()
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "intruder"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "forwarder-" + ns},
		Rules:      []rbacv1.PolicyRule{{NonResourceURLs: []string{peers.InternalPrefix + "*"}, Verbs: []string{"get", "post"}}},
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "intruder", Namespace: ns}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tok, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "intruder", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	aliceCfg, err := cp.UserConfig("alice", "devs")
	if err != nil {
		t.Fatal(err)
	}
	r := replicas[0]
	path := peers.InternalPrefix + ns + "/app/1/seg/xhr_send"
	for _, tc := range []struct {
		name string
		cfg  *rest.Config
		want string
	}{
		{"a user", aliceCfg, `cannot post path \"` + path + `\"`},
		{"a ServiceAccount RBAC lets through", &rest.Config{BearerToken: tok.Status.Token}, "only console-apiserver replicas may forward terminal requests"},
	} {
		cfg := rest.CopyConfig(tc.cfg)
		cfg.Host, cfg.CAData, cfg.CAFile = r.url(""), caPEM, ""
		client, err := rest.HTTPClientFor(cfg)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, r.url(path), strings.NewReader(`["{\"Op\":\"bind\",\"SessionID\":\"x\"}"]`))
		// What a forged forward would carry: a caller to act as.
		req.Header.Set("X-Console-Forwarded-Identity", "eyJuYW1lIjoic3lzdGVtOmFkbWluIn0")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s: %s %s; want 403 saying %q", tc.name, resp.Status, b, tc.want)
		}
	}
}
