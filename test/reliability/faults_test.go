package reliability

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/client-go/rest"

	consolesv1alpha1 "github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

// upThenSleep prints "up" (so the client knows the exec stream is up), then
// waits. It ends by itself: kwok keeps the processes of closed sessions.
var upThenSleep = []string{"sh", "-c", "echo up; exec sleep 60"}

// execStreams is how many exec requests kube-apiserver is serving: each
// terminal's exec stream, seen from the other end.
func execStreams(t testing.TB, ctx context.Context) float64 {
	t.Helper()
	b, err := cp.AdminClient().CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		t.Fatalf("scraping kube-apiserver: %v", err)
	}
	return parseMetrics(string(b)).get("apiserver_longrunning_requests", `resource="pods"`, `subresource="exec"`)
}

// awaitExecStreams waits until kube-apiserver serves at most n exec streams.
func awaitExecStreams(t testing.TB, ctx context.Context, timeout time.Duration, n float64) time.Duration {
	t.Helper()
	return eventually(t, timeout, fmt.Sprintf("kube-apiserver to serve at most %v exec streams", n), func() (bool, string) {
		v := execStreams(t, ctx)
		return v <= n, fmt.Sprintf("%v exec streams", v)
	})
}

// echoes checks that a new terminal works: the server keeps serving others.
func echoes(t testing.TB, ctx context.Context, u *tuser) time.Duration {
	t.Helper()
	ns, pod := sharedPodFor(t)
	term := openShell(t, ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: []string{"sh"}}, framework.WebSocket)
	start := time.Now()
	if err := term.Stdin("echo still-$((40+2))\n"); err != nil {
		t.Fatal(err)
	}
	if err := term.Out.WaitFor(ctx, "still-42"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	_ = term.Stdin("exit\n")
	expectClosed(t, ctx, term, 1, "Process exited")
	return took
}

// TestPodDeletedMidSession deletes the pod under a running terminal. kwok,
// like a node that is gone, leaves the exec stream open; the server watches
// the pod and ends the terminal, saying why, within a second.
func TestPodDeletedMidSession(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const ns, name = "pod-deleted", "doomed"
	if _, err := cp.CreatePod(ctx, framework.PodSpec{Namespace: ns, Name: name}); err != nil {
		t.Fatal(err)
	}
	u := newUser(t, "pat")
	base := execStreams(t, ctx)
	for _, transport := range []framework.Transport{framework.WebSocket, framework.XHRStreaming} {
		t.Run(string(transport), func(t *testing.T) {
			if transport == framework.XHRStreaming {
				if _, err := cp.CreatePod(ctx, framework.PodSpec{Namespace: ns, Name: name}); err != nil {
					t.Fatal(err)
				}
			}
			term := openShell(t, ctx, u, ns, name, consolesv1alpha1.ShellSessionSpec{Command: []string{"sh"}}, transport)
			if err := term.Stdin("echo alive-$((1+1))\n"); err != nil {
				t.Fatal(err)
			}
			if err := term.Out.WaitFor(ctx, "alive-2"); err != nil {
				t.Fatal(err)
			}
			zero := int64(0)
			if err := cp.AdminClient().CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
			defer wcancel()
			expectClosed(t, wctx, term, 2, fmt.Sprintf("pod %s/%s was deleted; the terminal has ended", ns, name))
			told := time.Since(start)
			released := awaitExecStreams(t, ctx, 15*time.Second, base)
			awaitQuiet(t, quietTimeout)
			t.Logf("%s: told %s after the delete; kube-apiserver's exec stream closed after %s", transport, told.Round(time.Millisecond), released.Round(time.Millisecond))
		})
	}
	t.Logf("a new terminal echoes in %s", echoes(t, ctx, u).Round(time.Millisecond))
}

// TestProcessExitEndsSession is the normal end: the command exits with a
// code, the client gets its last output, the exit frame and close 1, and
// the exec stream and the session's goroutines go.
func TestProcessExitEndsSession(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns, pod := sharedPodFor(t)
	u := newUser(t, "quinn")
	base := execStreams(t, ctx)
	exited := gathered(t, endedCounter, "reason=exited")
	term := openShell(t, ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{
		Command: []string{"sh", "-c", "echo bye; exit 5"}, TTY: boolPtr(false),
	}, framework.WebSocket)
	closed := expectClosed(t, ctx, term, 1, "Process exited")
	if code := term.ExitCode(); code == nil || *code != 5 {
		t.Fatalf("exit code %v, want 5 (closed %+v)", code, closed)
	}
	if out := term.Out.String(); out != "bye\n" {
		t.Fatalf("output %q", out)
	}
	awaitExecStreams(t, ctx, 10*time.Second, base)
	awaitQuiet(t, quietTimeout)
	if d := gathered(t, endedCounter, "reason=exited") - exited; d != 1 {
		t.Fatalf("sessions_ended_total{reason=exited} grew by %v", d)
	}
}

// TestClientVanishes drops the client's TCP connection without a goodbye,
// as a closed laptop does. kwok keeps the process running (its limit 6),
// so what is checked is that this server closes its exec stream (which
// kube-apiserver sees end), and that the session's goroutines and its
// active-session count go.
func TestClientVanishes(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ns, pod := sharedPodFor(t)
	u := newUser(t, "rosa")
	for _, transport := range []framework.Transport{framework.WebSocket, framework.XHRStreaming} {
		t.Run(string(transport), func(t *testing.T) {
			base := execStreams(t, ctx)
			vanished := gathered(t, endedCounter, "reason=client-closed")
			term := openShell(t, ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: upThenSleep}, transport)
			if err := term.Out.WaitFor(ctx, "up"); err != nil {
				t.Fatal(err)
			}
			if n := execStreams(t, ctx); n < base+1 {
				t.Fatalf("kube-apiserver serves %v exec streams, want at least %v", n, base+1)
			}
			start := time.Now()
			term.Close()
			streams := awaitExecStreams(t, ctx, 20*time.Second, base)
			awaitQuiet(t, quietTimeout)
			gone := time.Since(start)
			if d := gathered(t, endedCounter, "reason=client-closed") - vanished; d != 1 {
				t.Fatalf("sessions_ended_total{reason=client-closed} grew by %v", d)
			}
			t.Logf("%s: exec stream closed %s, session gone %s after the drop", transport, streams.Round(time.Millisecond), gone.Round(time.Millisecond))
		})
	}
}

// TestSlowClientIsBounded floods output at clients that stopped reading,
// over WebSocket and xhr-streaming. Back-pressure must reach the command
// instead of the server buffering: the server's heap stays within a few
// MiB per session, and another terminal still echoes promptly meanwhile.
func TestSlowClientIsBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ns, pod := sharedPodFor(t)
	flooder, typist := newUser(t, "sam"), newUser(t, "tess")
	// Bounded in time: kwok keeps a closed session's process.
	flood := consolesv1alpha1.ShellSessionSpec{Command: []string{"timeout", "40", "yes", "flood-flood-flood"}}
	const sessions = 2

	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()

	s, err := createShell(ctx, flooder, ns, pod, flood)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := dialRawWS(ctx, flooder, ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.drop()
	if err := ws.send(bindMsg(s.Status.ID)); err != nil {
		t.Fatal(err)
	}
	if err := ws.readUntil(30*time.Second, "flood-flood"); err != nil {
		t.Fatal(err)
	}

	s, err = createShell(ctx, flooder, ns, pod, flood)
	if err != nil {
		t.Fatal(err)
	}
	x := newRawXHR(t, flooder, ns, pod)
	body, r, err := x.stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	if code, msg := x.sendMsgs(ctx, bindMsg(s.Status.ID)); code != http.StatusNoContent {
		t.Fatalf("bind over xhr_send: %d %s", code, msg)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(line, "flood-flood") {
			break
		}
	}
	// Neither client reads from here on.

	out := func() float64 { return gathered(t, "console_apiserver_terminal_bytes_total", "direction=out") }
	stallStart := time.Now()
	eventually(t, time.Minute, "the output to stall", func() (bool, string) {
		a := out()
		time.Sleep(time.Second)
		b := out()
		return a == b, fmt.Sprintf("%.0f bytes/s still flowing", b-a)
	})
	stalled := time.Since(stallStart)
	during := heap()
	time.Sleep(3 * time.Second)
	later := heap()
	growth := float64(int64(during)-int64(before)) / (1 << 20)
	drift := float64(int64(later)-int64(during)) / (1 << 20)
	t.Logf("%d stalled flooding sessions: heap +%.2f MiB (%.2f MiB each) once stalled (after %s), then %+.2f MiB in 3s; %.0f output bytes relayed",
		sessions, growth, growth/sessions, stalled.Round(time.Millisecond), drift, out())
	if growth > 4*sessions || drift > 1 {
		t.Fatalf("heap grew %.2f MiB for %d stalled sessions, then %+.2f MiB: output is being buffered", growth, sessions, drift)
	}

	// Another user's terminal is not slowed down by them.
	took := echoes(t, ctx, typist)
	t.Logf("meanwhile, another terminal echoed in %s", took.Round(time.Millisecond))
	if took > 3*time.Second {
		t.Fatalf("echo took %s while others flooded", took)
	}

	ws.drop()
	body.Close()
	awaitQuiet(t, quietTimeout)
}

// TestShutdownOnSIGTERM runs the console-apiserver binary and sends it
// SIGTERM with terminals open: /readyz fails at once, terminals go on
// through --shutdown-delay-duration, then each client is told the server is
// shutting down and closed, and the process exits within the delay plus
// --shutdown-drain-timeout.
func TestShutdownOnSIGTERM(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	<-binaryDone
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	const delay, drain = 2 * time.Second, 5 * time.Second
	prep, err := cp.PrepareConsoleServer(ctx, "sigterm",
		"--session-ttl="+sigtermTTL.String(),
		"--shutdown-delay-duration="+delay.String(),
		"--shutdown-drain-timeout="+drain.String())
	if err != nil {
		t.Fatal(err)
	}
	p, err := framework.StartProcess("console-apiserver-sigterm", filepath.Join(cp.Dir, "logs"), binary, prep.Args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(5 * time.Second) })
	readyz := func() int {
		code, _, err := directGet(ctx, prep.Port, "/readyz")
		if err != nil {
			return 0
		}
		return code
	}
	eventually(t, time.Minute, "the binary's /readyz", func() (bool, string) {
		code := readyz()
		return code == http.StatusOK, fmt.Sprintf("/readyz: %d\n%s", code, p.LogTail(10))
	})
	useServer(t, prep, sigtermTTL)

	ns, pod := sharedPodFor(t)
	u := newUser(t, "uma")
	var terms []*framework.Terminal
	for _, transport := range []framework.Transport{framework.WebSocket, framework.XHRStreaming} {
		term := openShell(t, ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: []string{"sh"}}, transport)
		if err := term.Stdin("echo before-$((1+1))\n"); err != nil {
			t.Fatal(err)
		}
		if err := term.Out.WaitFor(ctx, "before-2"); err != nil {
			t.Fatal(err)
		}
		terms = append(terms, term)
	}

	var notReady time.Time
	var mu sync.Mutex
	pollCtx, stopPoll := context.WithCancel(ctx)
	defer stopPoll()
	go func() {
		for pollCtx.Err() == nil {
			if code := readyz(); code != http.StatusOK {
				mu.Lock()
				notReady = time.Now()
				mu.Unlock()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	start := time.Now()
	if err := syscall.Kill(p.PID(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The terminals work on through the shutdown delay.
	if err := terms[0].Stdin("echo during-$((2+2))\n"); err != nil {
		t.Fatal(err)
	}
	if err := terms[0].Out.WaitFor(ctx, "during-4"); err != nil {
		t.Fatal(err)
	}
	for i, term := range terms {
		closed := expectClosed(t, ctx, term, 2, "server is shutting down")
		told := time.Since(start)
		mu.Lock()
		ready := notReady
		mu.Unlock()
		if ready.IsZero() || ready.After(start.Add(told)) {
			t.Fatalf("%s told at %s, before /readyz failed (at %v)", []string{"websocket", "xhr"}[i], told, ready)
		}
		if told < delay {
			t.Fatalf("told after %s, within the shutdown delay of %s", told, delay)
		}
		t.Logf("%s: /readyz failed %s after SIGTERM; client told after %s: %q", []string{"websocket", "xhr_streaming"}[i],
			ready.Sub(start).Round(time.Millisecond), told.Round(time.Millisecond), closed.Reason)
	}
	select {
	case <-p.Done():
	case <-time.After(delay + drain + 10*time.Second):
		t.Fatalf("still running %s after SIGTERM\n%s", time.Since(start), p.LogTail(20))
	}
	exited := time.Since(start)
	t.Logf("the process exited %s after SIGTERM (delay %s, drain timeout %s)", exited.Round(time.Millisecond), delay, drain)
	if exited > delay+drain+3*time.Second {
		t.Fatalf("exit took %s", exited)
	}
	if log := p.LogTail(200); !strings.Contains(log, "Draining terminal sessions") {
		t.Fatalf("no drain in the log:\n%s", log)
	}
}

// TestKubeAPIServerRestart takes kube-apiserver away under running
// terminals and brings it back. A client whose connection runs through that
// kube-apiserver sees its connection drop: no toast can reach it. A client
// connected some other way (here: directly, as it would be through another
// kube-apiserver replica) is told why its terminal ended: the exec stream
// was lost, not "Process exited". Either way the server releases the
// session, says why in its log, and serves new terminals once
// kube-apiserver is back.
//
// kube-apiserver is killed: on SIGTERM it stops listening at once but keeps
// upgraded connections (exec, the proxied terminal) until it exits, which
// it did not within the framework's 15s grace period before SIGKILL; a kill
// is what ends them either way.
func TestKubeAPIServerRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ns, pod := sharedPodFor(t)
	id := &user.DefaultInfo{Name: "vera", UID: "uid-vera", Groups: []string{usersGroup, user.AllAuthenticated}}
	viaKube := identityUser(id)
	// The same identity, presented straight to console-apiserver as the
	// aggregator presents it (front-proxy certificate and headers).
	direct := identityUser(id)
	direct.cfg = rest.CopyConfig(direct.cfg)
	direct.cfg.Host = fmt.Sprintf("https://127.0.0.1:%d", mainServer.Prep.Port)
	direct.cfg.CAData, direct.cfg.Insecure = nil, true

	proxied := openShell(t, ctx, viaKube, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: []string{"sh"}}, framework.WebSocket)
	s, err := createShell(ctx, viaKube, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: []string{"sh"}})
	if err != nil {
		t.Fatal(err)
	}
	other := openTerminal(t, ctx, direct, ns, pod, framework.WebSocket)
	bind(t, other, s.Status.ID)
	for _, term := range []*framework.Terminal{proxied, other} {
		if err := term.Stdin("echo before-$((1+1))\n"); err != nil {
			t.Fatal(err)
		}
		if err := term.Out.WaitFor(ctx, "before-2"); err != nil {
			t.Fatal(err)
		}
	}

	start := time.Now()
	if err := syscall.Kill(cp.Processes()["kube-apiserver"], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-proxied.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("the connection through kube-apiserver survived it")
	}
	_, err = proxied.WaitClosed(ctx)
	t.Logf("through kube-apiserver, the client saw: %v, toasts %q", err, proxied.Toasts())
	closed := expectClosed(t, ctx, other, 2, "the connection to the container was lost")
	t.Logf("connected otherwise, the client was told after %s: %q", time.Since(start).Round(time.Millisecond), closed.Reason)
	if other.ExitCode() != nil {
		t.Fatalf("an exit frame (code %d) for a lost stream", *other.ExitCode())
	}
	awaitQuiet(t, quietTimeout)
	released := time.Since(start)
	ended := logs.find("Terminal session ended", map[string]string{"user": "vera"})
	if len(ended) != 2 {
		t.Fatalf("%d end lines for vera, want 2", len(ended))
	}
	for _, e := range ended {
		t.Logf("the server released a session %s after the kill, reason %v: %v",
			released.Round(time.Millisecond), e.KV["reason"], e.KV["message"])
	}

	restart := time.Now()
	if err := cp.RestartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cp.WaitForAPIService(ctx, framework.ConsoleVersion+"."+framework.ConsoleGroup); err != nil {
		t.Fatal(err)
	}
	awaitRouting(t, mainTTL)
	t.Logf("kube-apiserver back and the APIService routed after %s", time.Since(restart).Round(time.Millisecond))
	echoes(t, ctx, viaKube)
	awaitQuiet(t, quietTimeout)
}
