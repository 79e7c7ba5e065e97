package scaleout

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubecube-io/console-apiserver/pkg/peers"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

// TestReplicaDies kills (SIGKILL) the replica holding a fallback-transport
// session, mid-session. Its own sessions end: WebSocket clients lose their
// connection, the fallback session is closed by another replica with "the
// replica serving this terminal is gone". Everything else goes on: terminals
// on the other replicas, a session created on the dead replica and not yet
// bound (it lives on kube-apiserver), new sessions. Its routes are swept.
// Then it comes back.
func TestReplicaDies(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	ns := podFor(t, "alice")
	alice := newUser(t, "alice")

	// The fallback session; its holder is the victim.
	s, err := createShell(ctx, alice, ns, "sh")
	if err != nil {
		t.Fatal(err)
	}
	xhr := open(t, ctx, alice, ns, framework.XHRStreaming)
	if err := xhr.Bind(s.Status.ID); err != nil {
		t.Fatal(err)
	}
	if err := xhr.Stdin("echo xhr-$((1+1))\n"); err != nil {
		t.Fatal(err)
	}
	if err := xhr.Out.WaitFor(ctx, "xhr-2"); err != nil {
		t.Fatal(err)
	}
	victim := whoLogged(t, `"Holding a SockJS session of a fallback transport here"`, `namespace="`+ns+`"`)

	// A pending session the victim created.
	var pendingID string
	for i := 0; i < 60 && pendingID == ""; i++ {
		marker := fmt.Sprintf("pending-%02d", i)
		p, err := createShell(ctx, alice, ns, "sh", "-c", "exec sh", marker)
		if err != nil {
			t.Fatal(err)
		}
		if whoLogged(t, `"Shell session created"`, marker) == victim {
			pendingID = p.Status.ID
		}
	}
	if pendingID == "" {
		t.Fatalf("%s created none of 60 sessions", victim.name)
	}

	// WebSocket terminals, on the victim and elsewhere.
	type wsTerm struct {
		term *framework.Terminal
		on   *replica
	}
	var onVictim, onOthers []wsTerm
	for i := 0; i < 15 && (len(onVictim) == 0 || len(onOthers) < 2); i++ {
		marker := fmt.Sprintf("ws-%02d", i)
		p, err := createShell(ctx, alice, ns, "sh", "-c", "exec sh", marker)
		if err != nil {
			t.Fatal(err)
		}
		term := open(t, ctx, alice, ns, framework.WebSocket)
		if err := term.Bind(p.Status.ID); err != nil {
			t.Fatal(err)
		}
		if err := term.Stdin("echo up-" + marker + "\n"); err != nil {
			t.Fatal(err)
		}
		if err := term.Out.WaitFor(ctx, "up-"+marker); err != nil {
			t.Fatal(err)
		}
		w := wsTerm{term, whoLogged(t, `"Terminal session bound"`, marker)}
		if w.on == victim {
			onVictim = append(onVictim, w)
		} else {
			onOthers = append(onOthers, w)
		}
	}
	if len(onVictim) == 0 || len(onOthers) < 2 {
		t.Fatalf("terminals: %d on %s, %d elsewhere", len(onVictim), victim.name, len(onOthers))
	}

	t.Logf("killing %s: it holds the fallback session, %d WebSocket terminals and created a pending session; %d terminals elsewhere",
		victim.name, len(onVictim), len(onOthers))
	killed := time.Now()
	victim.kill()
	// It comes back at the end, as a new instance, whatever happens here:
	// the other tests need three replicas.
	defer func() {
		if err := victim.start(); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer wcancel()
		if err := victim.waitReady(wctx); err != nil {
			t.Fatal(err)
		}
		if err := waitBalanced(wctx); err != nil {
			t.Fatal(err)
		}
	}()

	// The victim's WebSocket terminals lose their connection.
	for _, w := range onVictim {
		select {
		case <-w.term.Done():
		case <-time.After(30 * time.Second):
			t.Fatal("a WebSocket terminal on the dead replica is still open")
		}
		if _, err := w.term.WaitClosed(ctx); err == nil || !strings.Contains(err.Error(), "connection lost") {
			t.Fatalf("a WebSocket terminal on the dead replica: %v, want the connection lost", err)
		}
	}
	// The fallback session hears why, from a live replica.
	closed, err := xhr.WaitClosed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if closed.Code != 2 || closed.Reason != peers.GoneMessage || !strings.Contains(strings.Join(xhr.Toasts(), "|"), peers.GoneMessage) {
		t.Fatalf("fallback session closed %+v with toasts %q; want code 2 %q and its toast", closed, xhr.Toasts(), peers.GoneMessage)
	}
	t.Logf("the dead replica's sessions ended within %s", time.Since(killed).Round(time.Millisecond))

	// Terminals elsewhere go on.
	for i, w := range onOthers {
		if err := w.term.Stdin(fmt.Sprintf("echo still-%d-$((2*21))\n", i)); err != nil {
			t.Fatal(err)
		}
		if err := w.term.Out.WaitFor(ctx, fmt.Sprintf("still-%d-42", i)); err != nil {
			t.Fatalf("a terminal on %s after the kill: %v", w.on.name, err)
		}
	}
	// The pending session the dead replica created binds elsewhere.
	term := open(t, ctx, alice, ns, framework.WebSocket)
	if err := term.Bind(pendingID); err != nil {
		t.Fatal(err)
	}
	if err := term.Stdin("echo pending-$((40+2))\n"); err != nil {
		t.Fatal(err)
	}
	if err := term.Out.WaitFor(ctx, "pending-42"); err != nil {
		t.Fatalf("the pending session of the dead replica: %v (toasts %q)", err, term.Toasts())
	}
	_ = term.Stdin("exit\n")
	// New sessions work, over both transports.
	for i := range 6 {
		_, bound := cycle(t, ctx, alice, ns, fmt.Sprintf("after-%d", i), framework.WebSocket, 0)
		if bound == victim {
			t.Fatal("a session was bound on the dead replica")
		}
	}
	cycle(t, ctx, alice, ns, "after-xhr", framework.XHRStreaming, 5)
	for _, w := range onOthers {
		_ = w.term.Stdin("exit\n")
	}

	// Its routes are swept once its Lease has expired (30s), by the others.
	leases := cp.AdminClient().CoordinationV1().Leases(framework.ConsoleNamespace)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		list, err := leases.List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=console-route"})
		if err != nil {
			t.Fatal(err)
		}
		left := 0
		for _, l := range list.Items {
			if l.Annotations["consoles.kubecube.io/peer-address"] == fmt.Sprintf("127.0.0.1:%d", victim.port) {
				left++
			}
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d routes of the dead replica left after 2 minutes", left)
		}
		time.Sleep(time.Second)
	}
	t.Logf("the dead replica's routes were swept %s after the kill", time.Since(killed).Round(time.Second))
}

// TestReplicaShutsDown stops (SIGTERM) the replica holding a fallback
// session: the client is told why, through whichever replica its requests
// reach, and the replica withdraws its routes and its Lease before it exits.
func TestReplicaShutsDown(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ns := podFor(t, "alice")
	alice := newUser(t, "alice")
	s, err := createShell(ctx, alice, ns, "sh")
	if err != nil {
		t.Fatal(err)
	}
	xhr := open(t, ctx, alice, ns, framework.XHRStreaming)
	if err := xhr.Bind(s.Status.ID); err != nil {
		t.Fatal(err)
	}
	if err := xhr.Stdin("echo up-$((1+2))\n"); err != nil {
		t.Fatal(err)
	}
	if err := xhr.Out.WaitFor(ctx, "up-3"); err != nil {
		t.Fatal(err)
	}
	holder := whoLogged(t, `"Holding a SockJS session of a fallback transport here"`, `namespace="`+ns+`"`)

	if err := holder.proc.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := holder.start(); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer wcancel()
		if err := holder.waitReady(wctx); err != nil {
			t.Fatal(err)
		}
		if err := waitBalanced(wctx); err != nil {
			t.Fatal(err)
		}
	}()
	closed, err := xhr.WaitClosed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if closed.Code != 2 || closed.Reason != "server is shutting down" {
		t.Fatalf("closed %+v (toasts %q); want code 2 server is shutting down", closed, xhr.Toasts())
	}
	list, err := cp.AdminClient().CoordinationV1().Leases(framework.ConsoleNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range list.Items {
		if l.Annotations["consoles.kubecube.io/peer-address"] == fmt.Sprintf("127.0.0.1:%d", holder.port) {
			t.Errorf("Lease %s of the stopped replica is left", l.Name)
		}
	}
}
