package reliability

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	consolesv1alpha1 "github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
	"github.com/kubecube-io/console-apiserver/pkg/session"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

// rssKiB is a process's resident memory.
func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return -1
}

// sessionEnding is one way a terminal session ends.
type sessionEnding struct {
	name   string
	reason string // the ended-sessions metric's label
	run    func(t *testing.T, ctx context.Context, u *tuser)
}

func sessionEndings(ns, pod string) []sessionEnding {
	vanish := func(transport framework.Transport) func(*testing.T, context.Context, *tuser) {
		return func(t *testing.T, ctx context.Context, u *tuser) {
			term := openShell(t, ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: upThenSleep}, transport)
			if err := term.Out.WaitFor(ctx, "up"); err != nil {
				t.Fatal(err)
			}
			term.Close()
		}
	}
	return []sessionEnding{
		{"exit, no tty", "exited", func(t *testing.T, ctx context.Context, u *tuser) {
			term := openShell(t, ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: []string{"true"}, TTY: boolPtr(false)}, framework.WebSocket)
			expectClosed(t, ctx, term, 1, "Process exited")
		}},
		{"exit code, tty", "exited", func(t *testing.T, ctx context.Context, u *tuser) {
			term := openShell(t, ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: []string{"sh", "-c", "exit 3"}}, framework.XHRStreaming)
			expectClosed(t, ctx, term, 1, "Process exited")
			if c := term.ExitCode(); c == nil || *c != 3 {
				t.Fatalf("exit code %v", c)
			}
		}},
		{"client vanishes, websocket", "client-closed", vanish(framework.WebSocket)},
		{"client vanishes, xhr", "client-closed", vanish(framework.XHRStreaming)},
		{"bind refused", "bind-refused", func(t *testing.T, ctx context.Context, u *tuser) {
			term := openTerminal(t, ctx, u, ns, pod, framework.WebSocket)
			bind(t, term, session.NewID())
			expectClosed(t, ctx, term, 2, "does not exist")
		}},
		{"bad frame before bind", "protocol-error", func(t *testing.T, ctx context.Context, u *tuser) {
			term := openTerminal(t, ctx, u, ns, pod, framework.WebSocket)
			if err := term.SendRaw("{nonsense"); err != nil {
				t.Fatal(err)
			}
			expectClosed(t, ctx, term, 2, "malformed frame")
		}},
		{"bad frame while running", "protocol-error", func(t *testing.T, ctx context.Context, u *tuser) {
			term := openShell(t, ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: quietCommand}, framework.WebSocket)
			if err := term.Out.WaitFor(ctx, "up"); err != nil {
				t.Fatal(err)
			}
			if err := term.Send(map[string]string{"Op": "nope"}); err != nil {
				t.Fatal(err)
			}
			expectClosed(t, ctx, term, 2, "unknown operation")
		}},
	}
}

// TestNoLeaksAfter200Sessions ends 200 sessions in the ways above, four at a
// time, and then finds no goroutine of a session left in the server (which
// runs in this process), the goroutine count back to where it was, and
// every session counted as ended. It also measures what one idle terminal
// costs in goroutines. kwok keeps the processes of closed sessions (its
// limit 6), so the commands here are cheap and end by themselves; its
// memory growth is reported.
func TestNoLeaksAfter200Sessions(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	ns, pod := sharedPodFor(t)
	awaitQuiet(t, quietTimeout)
	totalBefore, _ := goroutines()
	kwok := cp.Processes()["kwok"]
	kwokRSS, kwokProcs := rssKiB(kwok), len(framework.LiveProcessesInGroups([]int{kwok}))

	// What one idle terminal costs.
	const idle = 10
	u := newUser(t, "gus")
	var terms []*framework.Terminal
	for range idle {
		term := openShell(t, ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: upThenSleep}, framework.WebSocket)
		if err := term.Out.WaitFor(ctx, "up"); err != nil {
			t.Fatal(err)
		}
		terms = append(terms, term)
	}
	total, ours := goroutines()
	t.Logf("%d idle TTY terminals over WebSocket: %.1f goroutines each in the relay and exec stream; %.1f each in this process (test clients included)",
		idle, float64(len(ours))/idle, float64(total-totalBefore)/idle)
	for _, term := range terms {
		term.Close()
	}
	awaitQuiet(t, quietTimeout)

	endings := sessionEndings(ns, pod)
	ended := map[string]float64{}
	for _, e := range endings {
		ended[e.reason] = gathered(t, endedCounter, "reason="+e.reason)
	}
	want := map[string]float64{}
	const sessions, workers = 200, 4
	for i := range sessions {
		want[endings[i%len(endings)].reason]++
	}
	start := time.Now()
	t.Run("sessions", func(t *testing.T) {
		for w := range workers {
			t.Run(fmt.Sprint("worker-", w), func(t *testing.T) {
				t.Parallel()
				u := newUser(t, fmt.Sprint("leak-", w))
				for i := w; i < sessions; i += workers {
					e := endings[i%len(endings)]
					t.Run(fmt.Sprintf("%03d %s", i, e.name), func(t *testing.T) { e.run(t, ctx, u) })
				}
			})
		}
	})
	took := time.Since(start)
	settled := awaitSessionGoroutines(t, time.Minute, 0)
	awaitQuiet(t, time.Minute)
	for reason, n := range want {
		if d := gathered(t, endedCounter, "reason="+reason) - ended[reason]; d != n {
			t.Errorf("sessions_ended_total{reason=%q} grew by %v, want %v", reason, d, n)
		}
	}
	// Client connections, the aggregator's pooled connections and timers
	// come and go; what matters is no growth with the number of sessions.
	var totalAfter int
	eventually(t, time.Minute, "the goroutine count to settle", func() (bool, string) {
		totalAfter, _ = goroutines()
		return totalAfter <= totalBefore+40, fmt.Sprintf("%d goroutines, %d before", totalAfter, totalBefore)
	})
	t.Logf("%d sessions in %s; their goroutines were gone %s later; goroutines %d before, %d after",
		sessions+idle, took.Round(time.Millisecond), settled.Round(time.Millisecond), totalBefore, totalAfter)
	t.Logf("kwok: RSS %d -> %d KiB (%+.0f KiB per session), live processes %d -> %d (it keeps those of vanished clients until they end)",
		kwokRSS, rssKiB(kwok), float64(rssKiB(kwok)-kwokRSS)/(sessions+idle), kwokProcs, len(framework.LiveProcessesInGroups([]int{kwok})))
}
