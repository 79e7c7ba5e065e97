package reliability

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	consolesv1alpha1 "github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

// ticking prints a line a second, so its session never idles; it ends by
// itself (kwok keeps a closed session's process).
var ticking = []string{"sh", "-c", "for i in $(seq 30); do echo tick-$i; sleep 1; done"}

// createOnce creates a session as u without client-go's retries (it would
// honour Retry-After and try again), as a script reporting errors would.
func createOnce(ctx context.Context, u *tuser, namespace, pod string) error {
	return u.consoles.ConsolesV1alpha1().RESTClient().Post().Namespace(namespace).Resource("pods").Name(pod).
		SubResource("shell").MaxRetries(0).
		Body([]byte(`{"apiVersion":"consoles.kubecube.io/v1alpha1","kind":"ShellSession","spec":{"command":["sh"]}}`)).
		SetHeader("Content-Type", "application/json").Do(ctx).Error()
}

func expect429(t *testing.T, err error, limit string) {
	t.Helper()
	if !apierrors.IsTooManyRequests(err) {
		t.Fatalf("got %v, want 429", err)
	}
	if secs, ok := apierrors.SuggestsClientDelay(err); !ok || secs <= 0 {
		t.Fatalf("429 without Retry-After: %v", err)
	}
	if !strings.Contains(err.Error(), limit) {
		t.Fatalf("429 does not name %s: %v", limit, err)
	}
}

// TestShortServer runs against the server with short timers and small
// limits (see TestMain): --idle-timeout=3s, --max-session-duration=8s,
// --session-ttl=4s, --max-active-sessions-per-user=2,
// --max-active-sessions=3.
func TestShortServer(t *testing.T) {
	useServer(t, shortServer.Prep, shortTTL)
	ns, pod := sharedPodFor(t)

	// Active sessions per user and in total: breaching either answers 429
	// with Retry-After at create, and refuses the bind of a session created
	// before the limit was reached. (Pending sessions per user are in
	// test/e2e.)
	t.Run("active limits", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		ann, ben, cyd := newUser(t, "ann"), newUser(t, "ben"), newUser(t, "cyd")
		open := func(u *tuser) *framework.Terminal {
			term := openShell(t, ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: ticking}, framework.WebSocket)
			if err := term.Out.WaitFor(ctx, "tick-1"); err != nil {
				t.Fatal(err)
			}
			return term
		}
		var terms []*framework.Terminal
		for range shortMaxActivePerUser {
			terms = append(terms, open(ann))
		}
		expect429(t, createOnce(ctx, ann, ns, pod), fmt.Sprintf("max-active-sessions-per-user=%d", shortMaxActivePerUser))

		// Created while there is room, bound when there is none.
		early, err := createShell(ctx, cyd, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: ticking})
		if err != nil {
			t.Fatal(err)
		}
		for len(terms) < shortMaxActive {
			terms = append(terms, open(ben))
		}
		expect429(t, createOnce(ctx, cyd, ns, pod), fmt.Sprintf("max-active-sessions=%d", shortMaxActive))
		late := openTerminal(t, ctx, cyd, ns, pod, framework.WebSocket)
		bind(t, late, early.Status.ID)
		expectClosed(t, ctx, late, 2, fmt.Sprintf("too many terminal sessions (limit max-active-sessions=%d)", shortMaxActive))

		// A session that ends frees its slot at once.
		terms[0].Close()
		eventually(t, 30*time.Second, "ann's slot to be free", func() (bool, string) {
			err := createOnce(ctx, ann, ns, pod)
			return err == nil, fmt.Sprint(err)
		})
		for _, term := range terms {
			term.Close()
		}
		awaitQuiet(t, quietTimeout)
	})

	t.Run("timers", func(t *testing.T) {
		// An idle session ends after --idle-timeout, saying so.
		t.Run("idle", func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			u := newUser(t, "ida")
			term := openShell(t, ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: upThenSleep}, framework.WebSocket)
			if err := term.Out.WaitFor(ctx, "up"); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			expectClosed(t, ctx, term, 2, fmt.Sprintf("session idle for %s", shortIdle))
			if took := time.Since(start); took < shortIdle-time.Second || took > shortIdle+5*time.Second {
				t.Fatalf("ended after %s idle, want about %s", took, shortIdle)
			}
		})
		// A busy session ends after --max-session-duration, saying so.
		t.Run("max duration", func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			u := newUser(t, "max")
			start := time.Now()
			term := openShell(t, ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: ticking}, framework.XHRStreaming)
			expectClosed(t, ctx, term, 2, fmt.Sprintf("session reached its maximum duration of %s", shortMaxDur))
			if took := time.Since(start); took < shortMaxDur-time.Second || took > shortMaxDur+5*time.Second {
				t.Fatalf("ended after %s, want about %s", took, shortMaxDur)
			}
			if out := term.Out.String(); !strings.Contains(out, "tick-5") {
				t.Fatalf("the session was not busy: %q", out)
			}
		})
		// A session bound after its TTL is refused.
		t.Run("expired session ID", func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			u := newUser(t, "exp")
			s, err := createShell(ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{})
			if err != nil {
				t.Fatal(err)
			}
			// The timestamp is truncated to the second; wait a second more.
			time.Sleep(time.Until(s.Status.ExpirationTimestamp.Add(time.Second)))
			term := openTerminal(t, ctx, u, ns, pod, framework.WebSocket)
			bind(t, term, s.Status.ID)
			expectClosed(t, ctx, term, 2, "does not exist, has expired or was already used")
		})
	})
	awaitQuiet(t, quietTimeout)
}
