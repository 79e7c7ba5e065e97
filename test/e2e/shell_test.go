package e2e

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	consolesv1alpha1 "github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

var hexID = regexp.MustCompile(`^[0-9a-f]{32}$`)

// TestShellEndToEnd is the whole path for a user holding only the shipped
// console-user role and pods/exec: create, bind over WebSocket, type, resize,
// exit with a code; and kube-apiserver's audit log shows the exec as the
// user, impersonated, never as the server.
func TestShellEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ns, name := pod(t)
	alice := newUser(t, "alice", "devs")
	grant(t, ns, "alice", true, true)

	s, err := createShell(ctx, alice, ns, name, consolesv1alpha1.ShellSessionSpec{Command: []string{"sh"}})
	if err != nil {
		t.Fatal(err)
	}
	if !hexID.MatchString(s.Status.ID) {
		t.Fatalf("session ID %q is not 32 hex characters", s.Status.ID)
	}
	if until := time.Until(s.Status.ExpirationTimestamp.Time); until <= 0 || until > 31*time.Second {
		t.Fatalf("expires in %s, want within the 30s TTL", until)
	}
	if s.Spec.Container != "app" || s.Spec.TTY == nil || !*s.Spec.TTY {
		t.Fatalf("defaults not applied: %+v", s.Spec)
	}

	term, err := framework.OpenTerminal(ctx, alice.cfg, ns, name, framework.TerminalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	// A size sent right after bind, before the exec stream is up, is applied.
	if err := term.Bind(s.Status.ID); err != nil {
		t.Fatal(err)
	}
	if err := term.Resize(33, 111); err != nil {
		t.Fatal(err)
	}
	if err := term.Stdin("stty size; echo hi-$((40+2))\n"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"33 111", "hi-42"} {
		if err := term.Out.WaitFor(ctx, want); err != nil {
			t.Fatal(err)
		}
	}
	if err := term.Resize(50, 160); err != nil {
		t.Fatal(err)
	}
	waitForResize(t, ctx, term, "50 160")
	if err := term.SendRaw("ping"); err != nil {
		t.Fatal(err)
	}
	if err := term.Stdin("exit 3\n"); err != nil {
		t.Fatal(err)
	}
	closed, err := term.WaitClosed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if closed.Code != 1 || closed.Reason != "Process exited" {
		t.Fatalf("closed with %+v, want 1 Process exited", closed)
	}
	if code := term.ExitCode(); code == nil || *code != 3 {
		t.Fatalf("exit code %v, want 3", code)
	}
	if term.Pongs() != 1 {
		t.Fatalf("pongs = %d, want 1", term.Pongs())
	}

	// The exec ran as alice, impersonated by the server's ServiceAccount.
	server := "system:serviceaccount:" + framework.ConsoleNamespace + ":" + framework.ConsoleServiceAccount
	events := waitForAudit(t, func(e *auditv1.Event) bool {
		return e.ObjectRef != nil && e.ObjectRef.Namespace == ns && e.ObjectRef.Subresource == "exec"
	})
	for _, e := range events {
		if e.User.Username != server || e.ImpersonatedUser == nil || e.ImpersonatedUser.Username != "alice" {
			t.Fatalf("exec audited as user %q impersonating %v; want %s impersonating alice", e.User.Username, e.ImpersonatedUser, server)
		}
	}
	// And kube-apiserver recorded the terminal connection itself, as alice.
	waitForAudit(t, func(e *auditv1.Event) bool {
		return e.ObjectRef != nil && e.ObjectRef.Namespace == ns && e.ObjectRef.Subresource == "attach" &&
			e.ObjectRef.APIGroup == framework.ConsoleGroup && e.User.Username == "alice"
	})
}

func waitForResize(t *testing.T, ctx context.Context, term *framework.Terminal, want string) {
	t.Helper()
	// The resize travels on its own stream; ask until the shell sees it.
	for i := 0; i < 50 && !strings.Contains(term.Out.String(), want); i++ {
		if err := term.Stdin("stty size\n"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := term.Out.WaitFor(ctx, want); err != nil {
		t.Fatal(err)
	}
}

func waitForAudit(t *testing.T, match func(*auditv1.Event) bool) []auditv1.Event {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		events, err := cp.AuditEvents(match)
		if err != nil {
			t.Fatal(err)
		}
		if len(events) > 0 {
			return events
		}
	}
	t.Fatal("no matching audit event")
	return nil
}

func TestSessionIsSingleUseAndBoundToItsOwner(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns, name := pod(t)
	alice, mallory := newUser(t, "alice"), newUser(t, "mallory")
	grant(t, ns, "alice", true, true)
	grant(t, ns, "mallory", true, true)

	// Alice binds and uses her session; a second bind of it fails.
	s, err := createShell(ctx, alice, ns, name, consolesv1alpha1.ShellSessionSpec{})
	if err != nil {
		t.Fatal(err)
	}
	first := bindTerminal(t, ctx, alice, ns, name, s.Status.ID)
	if err := first.Stdin("echo first-bind\n"); err != nil {
		t.Fatal(err)
	}
	if err := first.Out.WaitFor(ctx, "first-bind"); err != nil {
		t.Fatal(err)
	}
	second := bindTerminal(t, ctx, alice, ns, name, s.Status.ID)
	expectRefused(t, ctx, second, "already used")

	// Mallory, who may open terminals there too, cannot bind alice's ID,
	// and her try burns it.
	s, err = createShell(ctx, alice, ns, name, consolesv1alpha1.ShellSessionSpec{})
	if err != nil {
		t.Fatal(err)
	}
	expectRefused(t, ctx, bindTerminal(t, ctx, mallory, ns, name, s.Status.ID), "belongs to another user")
	expectRefused(t, ctx, bindTerminal(t, ctx, alice, ns, name, s.Status.ID), "already used")
	_ = first.Stdin("exit\n")
}

func bindTerminal(t *testing.T, ctx context.Context, u *user, ns, pod, id string) *framework.Terminal {
	t.Helper()
	term, err := framework.OpenTerminal(ctx, u.cfg, ns, pod, framework.TerminalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(term.Close)
	if err := term.Bind(id); err != nil {
		t.Fatal(err)
	}
	return term
}

func expectRefused(t *testing.T, ctx context.Context, term *framework.Terminal, why string) {
	t.Helper()
	if err := term.Refused(ctx, why); err != nil {
		t.Fatal(err)
	}
}

func TestCreateFailsEarlyAndClearly(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns, name := pod(t)
	// carol may open terminals (pods/shell) but not exec; dave may exec but
	// holds no console role; erin holds both.
	carol, dave, erin := newUser(t, "carol"), newUser(t, "dave"), newUser(t, "erin")
	grant(t, ns, "carol", true, false)
	grant(t, ns, "dave", false, true)
	grant(t, ns, "erin", true, true)

	cases := []struct {
		name    string
		u       *user
		pod     string
		spec    consolesv1alpha1.ShellSessionSpec
		code    int32
		message string
	}{
		{"no pods/shell", dave, name, consolesv1alpha1.ShellSessionSpec{}, http.StatusForbidden, `cannot create resource "pods/shell" in API group "consoles.kubecube.io"`},
		{"pods/shell without pods/exec", carol, name, consolesv1alpha1.ShellSessionSpec{}, http.StatusForbidden, `cannot create resource "pods/exec"`},
		{"unknown pod", erin, "nope", consolesv1alpha1.ShellSessionSpec{}, http.StatusNotFound, `pods "nope" not found`},
		{"unknown container", erin, name, consolesv1alpha1.ShellSessionSpec{Container: "nope"}, http.StatusNotFound, `container "nope" not found`},
		{"invalid container name", erin, name, consolesv1alpha1.ShellSessionSpec{Container: "Not_A_Label"}, http.StatusUnprocessableEntity, "spec.container"},
		{"empty command argument", erin, name, consolesv1alpha1.ShellSessionSpec{Command: []string{"sh", ""}}, http.StatusUnprocessableEntity, "spec.command[1]"},
		{"unknown cluster", erin, name, consolesv1alpha1.ShellSessionSpec{Cluster: "elsewhere"}, http.StatusUnprocessableEntity, "spec.cluster"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := createShell(ctx, c.u, ns, c.pod, c.spec)
			var status apierrors.APIStatus
			if !errors.As(err, &status) {
				t.Fatalf("got %v, want a Status error", err)
			}
			st := status.Status()
			if st.Code != c.code || !strings.Contains(st.Message, c.message) {
				t.Fatalf("got %d %q, want %d containing %q", st.Code, st.Message, c.code, c.message)
			}
		})
	}
}

func TestPendingSessionLimitAnswers429WithRetryAfter(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns, name := pod(t)
	frank := newUser(t, "frank")
	grant(t, ns, "frank", true, true)
	// The server runs with --max-pending-sessions-per-user=5.
	for i := range 5 {
		if _, err := createShell(ctx, frank, ns, name, consolesv1alpha1.ShellSessionSpec{}); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
	}
	// client-go would honor Retry-After and retry; ask once, as a script
	// that reports the error would.
	err := frank.consoles.ConsolesV1alpha1().RESTClient().Post().Namespace(ns).Resource("pods").Name(name).
		SubResource("shell").MaxRetries(0).
		Body([]byte(`{"apiVersion":"consoles.kubecube.io/v1alpha1","kind":"ShellSession"}`)).
		SetHeader("Content-Type", "application/json").Do(ctx).Error()
	if !apierrors.IsTooManyRequests(err) {
		t.Fatalf("sixth pending session: %v, want 429", err)
	}
	if secs, ok := apierrors.SuggestsClientDelay(err); !ok || secs <= 0 {
		t.Fatalf("429 without a retry delay: %v", err)
	}
	if !strings.Contains(err.Error(), "max-pending-sessions-per-user") {
		t.Fatalf("429 does not name the limit: %v", err)
	}
}

// TestNamespaceRoleBindingGrantsTerminalsThereOnly binds the shipped role
// with a RoleBinding in one namespace. (Its aggregation into admin and edit
// is kube-controller-manager's job, which this plane does not run.)
func TestNamespaceRoleBindingGrantsTerminalsThereOnly(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns, name := pod(t)
	other := ns + "-other"
	if _, err := cp.CreatePod(ctx, framework.PodSpec{Namespace: other, Name: name}); err != nil {
		t.Fatal(err)
	}
	gina := newUser(t, "gina")
	grant(t, ns, "gina", true, true)

	term := openShell(t, ctx, gina, ns, name, consolesv1alpha1.ShellSessionSpec{}, framework.WebSocket)
	if err := term.Stdin("echo in-my-namespace\n"); err != nil {
		t.Fatal(err)
	}
	if err := term.Out.WaitFor(ctx, "in-my-namespace"); err != nil {
		t.Fatal(err)
	}
	_ = term.Stdin("exit\n")
	if _, err := createShell(ctx, gina, other, name, consolesv1alpha1.ShellSessionSpec{}); !apierrors.IsForbidden(err) {
		t.Fatalf("in another namespace: %v, want 403", err)
	}
}

// TestTerminalOutlivesTheRequestTimeout holds a terminal open past
// kube-apiserver's --request-timeout.
func TestTerminalOutlivesTheRequestTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns, name := pod(t)
	helen := newUser(t, "helen")
	grant(t, ns, "helen", true, true)
	term := openShell(t, ctx, helen, ns, name, consolesv1alpha1.ShellSessionSpec{}, framework.WebSocket)
	if err := term.Stdin("echo before\n"); err != nil {
		t.Fatal(err)
	}
	if err := term.Out.WaitFor(ctx, "before"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(requestTimeout + 2*time.Second)
	if err := term.Stdin("echo after-$((6*7))\n"); err != nil {
		t.Fatal(err)
	}
	if err := term.Out.WaitFor(ctx, "after-42"); err != nil {
		t.Fatal(err)
	}
	_ = term.Stdin("exit\n")
	if closed, err := term.WaitClosed(ctx); err != nil || closed.Code != 1 {
		t.Fatalf("closed %+v, %v", closed, err)
	}
}

// TestXHRStreamingFallback runs a terminal over SockJS's xhr-streaming and
// xhr_send transports through kube-apiserver.
func TestXHRStreamingFallback(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns, name := pod(t)
	ivan := newUser(t, "ivan")
	grant(t, ns, "ivan", true, true)
	s, err := createShell(ctx, ivan, ns, name, consolesv1alpha1.ShellSessionSpec{})
	if err != nil {
		t.Fatal(err)
	}
	term, err := framework.OpenTerminal(ctx, ivan.cfg, ns, name, framework.TerminalOptions{Transport: framework.XHRStreaming})
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	if err := term.Bind(s.Status.ID); err != nil {
		t.Fatal(err)
	}
	if err := term.Stdin("echo over-xhr-$((2*21))\n"); err != nil {
		t.Fatal(err)
	}
	if err := term.Out.WaitFor(ctx, "over-xhr-42"); err != nil {
		t.Fatal(err)
	}
	if err := term.Stdin("exit 0\n"); err != nil {
		t.Fatal(err)
	}
	closed, err := term.WaitClosed(ctx)
	if err != nil || closed.Code != 1 {
		t.Fatalf("closed %+v, %v", closed, err)
	}
	if code := term.ExitCode(); code == nil || *code != 0 {
		t.Fatalf("exit code %v", code)
	}
}
