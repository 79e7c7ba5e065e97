package framework_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/client-go/rest"

	"github.com/kubecube-io/console-apiserver/test/framework"
)

var cp *framework.ControlPlane

// TestMain runs one plane for the package, and fails the run if stopping it
// leaves any of its processes (or their children) behind.
func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	start := time.Now()
	var err error
	cp, err = framework.Start(ctx, framework.Options{Logf: func(f string, a ...any) { fmt.Printf(f+"\n", a...) }})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the control plane:", err)
		os.Exit(1)
	}
	fmt.Printf("control plane up in %s\n", time.Since(start).Round(time.Millisecond))
	pids := cp.Processes()
	code := m.Run()
	cp.Stop()
	var groups []int
	for _, pid := range pids {
		groups = append(groups, pid)
	}
	if left := framework.LiveProcessesInGroups(groups); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "the plane left processes behind: %v\n", left)
		code = 1
	}
	os.Exit(code)
}

func TestPlaneIsReadyAndRunsPods(t *testing.T) {
	ctx := t.Context()
	body, err := cp.AdminClient().Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil || string(body) != "ok" {
		t.Fatalf("/readyz = %q, %v", body, err)
	}
	pod, err := cp.CreatePod(ctx, framework.PodSpec{Namespace: "ready", Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Spec.NodeName != cp.NodeName {
		t.Fatalf("pod on node %q, want %q", pod.Spec.NodeName, cp.NodeName)
	}
}

// grantExec lets user create (and, for WebSocket exec, get) pods/exec in ns.
func grantExec(t *testing.T, ns, user string) {
	t.Helper()
	ctx := t.Context()
	rbac := cp.AdminClient().RbacV1()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "exec", Namespace: ns},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}}},
	}
	if _, err := rbac.Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "exec-" + user, Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "exec"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: user}},
	}
	if _, err := rbac.RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func TestExecWithTTYAndResizeAsAlice(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := cp.CreatePod(ctx, framework.PodSpec{Namespace: "exec", Name: "shell"}); err != nil {
		t.Fatal(err)
	}
	grantExec(t, "exec", "alice")
	alice, err := cp.UserConfig("alice", "devs")
	if err != nil {
		t.Fatal(err)
	}
	stdinR, stdinW := io.Pipe()
	out := framework.NewOutput()
	sizes := framework.NewSizeQueue(30, 100)
	done := make(chan error, 1)
	go func() {
		done <- framework.Exec(ctx, alice, framework.ExecOptions{
			Namespace: "exec", Pod: "shell", Container: "app", Command: []string{"sh"},
			TTY: true, Stdin: stdinR, Stdout: out, Resize: sizes,
		})
	}()
	defer sizes.Close()
	send := func(s string) {
		if _, err := io.WriteString(stdinW, s); err != nil {
			t.Fatal(err)
		}
	}
	send("tty; stty size; echo hi-$((40+2))\n")
	for _, want := range []string{"/dev/pts/", "30 100", "hi-42"} {
		if err := out.WaitFor(ctx, want); err != nil {
			t.Fatal(err)
		}
	}
	sizes.Resize(40, 120)
	// The resize travels on its own stream; ask until the shell sees it.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "40 120") && time.Now().Before(deadline) {
		send("stty size\n")
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "40 120") {
		t.Fatalf("resize not seen by stty: %q", out.String())
	}
	send("exit 0\n")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exec: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("exec did not end after exit")
	}
}

func TestExecForbiddenForBob(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := cp.CreatePod(ctx, framework.PodSpec{Namespace: "forbidden", Name: "shell"}); err != nil {
		t.Fatal(err)
	}
	bob, err := cp.UserConfig("bob")
	if err != nil {
		t.Fatal(err)
	}
	err = framework.Exec(ctx, bob, framework.ExecOptions{
		Namespace: "forbidden", Pod: "shell", Command: []string{"true"}, Stdout: io.Discard,
	})
	if err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("bob's exec: got %v, want forbidden", err)
	}
}

func TestImpersonatedExecIsAuditedAsTheCaller(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const ns = "impersonation"
	if _, err := cp.CreatePod(ctx, framework.PodSpec{Namespace: ns, Name: "shell"}); err != nil {
		t.Fatal(err)
	}
	grantExec(t, ns, "alice")
	rbac := cp.AdminClient().RbacV1()
	cr := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "test-impersonator"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"users", "groups"}, Verbs: []string{"impersonate"}}},
	}
	if _, err := rbac.ClusterRoles().Create(ctx, cr, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "test-impersonator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: cr.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: "impersonator"}},
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	base, err := cp.UserConfig("impersonator")
	if err != nil {
		t.Fatal(err)
	}
	as := func(user string) *rest.Config {
		c := rest.CopyConfig(base)
		c.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:authenticated"}}
		return c
	}
	out := framework.NewOutput()
	if err := framework.Exec(ctx, as("alice"), framework.ExecOptions{
		Namespace: ns, Pod: "shell", Command: []string{"sh", "-c", "echo impersonated-ok"}, Stdout: out,
	}); err != nil {
		t.Fatalf("exec as alice through impersonation: %v", err)
	}
	if err := out.WaitFor(ctx, "impersonated-ok"); err != nil {
		t.Fatal(err)
	}
	err = framework.Exec(ctx, as("bob"), framework.ExecOptions{Namespace: ns, Pod: "shell", Command: []string{"true"}, Stdout: io.Discard})
	if err == nil || !strings.Contains(err.Error(), `"bob" cannot create resource "pods/exec"`) {
		t.Fatalf("exec as bob: got %v, want bob forbidden", err)
	}

	var events []auditv1.Event
	deadline := time.Now().Add(10 * time.Second)
	for len(events) == 0 && time.Now().Before(deadline) {
		events, err = cp.AuditEvents(func(e *auditv1.Event) bool {
			return e.ObjectRef != nil && e.ObjectRef.Subresource == "exec" && e.ObjectRef.Namespace == ns &&
				e.User.Username == "impersonator" && e.ImpersonatedUser != nil && e.ImpersonatedUser.Username == "alice"
		})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(events) == 0 {
		t.Fatal("no audit event of alice's exec with the impersonator recorded")
	}
}

// TestWebSocketThroughTheAggregator routes an APIService to a server on
// loopback and upgrades a WebSocket through kube-apiserver to it.
func TestWebSocketThroughTheAggregator(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const group, version = "echo.test.io", "v1"
	kp, caBundle, err := cp.ServingCert("echo", "echo-system")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	upgrader := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("/apis/"+group+"/"+version, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(metav1.APIResourceList{
			TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
			GroupVersion: group + "/" + version,
		})
	})
	mux.HandleFunc("/apis/"+group+"/"+version+"/echo", func(w http.ResponseWriter, r *http.Request) {
		user := r.Header.Get("X-Remote-User")
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			mt, msg, err := conn.ReadMessage()
			if err != nil {
				return
			}
			if err := conn.WriteMessage(mt, []byte(user+":"+string(msg))); err != nil {
				return
			}
		}
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	if err := cp.RegisterAPIService(ctx, framework.AggregatedServer{
		Group: group, Version: version, Namespace: "echo-system", Service: "echo",
		Port: ln.Addr().(*net.TCPAddr).Port, CABundle: caBundle,
	}); err != nil {
		t.Fatal(err)
	}
	admin := cp.AdminConfig()
	tlsCfg, err := rest.TLSConfigFor(admin)
	if err != nil {
		t.Fatal(err)
	}
	dialer := websocket.Dialer{TLSClientConfig: tlsCfg, HandshakeTimeout: 10 * time.Second}
	url := strings.Replace(admin.Host, "https://", "wss://", 1) + "/apis/" + group + "/" + version + "/echo"
	conn, resp, err := dialer.DialContext(ctx, url, nil)
	if err != nil {
		status := ""
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			status = resp.Status + " " + string(b)
		}
		t.Fatalf("websocket through the aggregator: %v %s", err, status)
	}
	defer conn.Close()
	if err := conn.WriteMessage(websocket.TextMessage, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	_, msg, err := conn.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	if string(msg) != "kubernetes-admin:ping" {
		t.Fatalf("echo = %q, want the caller's name from the aggregator's X-Remote-User", msg)
	}
}
