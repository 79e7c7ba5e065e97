package reliability

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/apiserver/pkg/authentication/user"

	consolesv1alpha1 "github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

func waitForAudit(t *testing.T, what string, match func(*auditv1.Event) bool) auditv1.Event {
	t.Helper()
	var found []auditv1.Event
	eventually(t, 15*time.Second, "an audit event of "+what, func() (bool, string) {
		var err error
		if found, err = cp.AuditEvents(match); err != nil {
			return false, err.Error()
		}
		return len(found) > 0, "none yet"
	})
	return found[len(found)-1]
}

// TestAuditLogsAndMetrics opens a terminal as an identity with a UID and
// extra (through an authenticating proxy), and checks what is recorded:
//   - kube-apiserver's audit log has the terminal connection (pods/attach of
//     this group) as the caller, and the exec as the server's
//     ServiceAccount impersonating the caller, UID, groups and extra
//     included;
//   - console-apiserver logs the create, the bind and the end with who,
//     what, how long, how many bytes and why it ended;
//   - its /metrics, scraped directly on its port with the admin's client
//     certificate, count the session.
func TestAuditLogsAndMetrics(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ns, pod := sharedPodFor(t)
	id := &user.DefaultInfo{
		Name:   "hana",
		UID:    "uid-hana-7",
		Groups: []string{usersGroup, "auditors"},
		Extra:  map[string][]string{"scopes": {"terminal", "read"}, "tenant": {"acme"}},
	}
	u := identityUser(id)
	port := mainServer.Prep.Port
	before := scrape(t, ctx, port)

	term := openShell(t, ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: []string{"sh"}}, framework.WebSocket)
	const typed = "echo audit-$((6*7)); exit 4\n"
	if err := term.Stdin(typed); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, ctx, term, 1, "Process exited")
	if code := term.ExitCode(); code == nil || *code != 4 {
		t.Fatalf("exit code %v", code)
	}
	awaitQuiet(t, quietTimeout)

	t.Run("metrics", func(t *testing.T) {
		after := scrape(t, ctx, port)
		for _, c := range []struct {
			name   string
			labels []string
			min    float64
			exact  bool
		}{
			{"console_apiserver_shell_sessions_created_total", nil, 1, true},
			{endedCounter, []string{`reason="exited"`}, 1, true},
			{"console_apiserver_terminal_bytes_total", []string{`direction="in"`}, float64(len(typed)), true},
			{"console_apiserver_terminal_bytes_total", []string{`direction="out"`}, float64(len("audit-42")), false},
			{"console_apiserver_terminal_bind_latency_seconds_count", nil, 1, true},
		} {
			d := after.get(c.name, c.labels...) - before.get(c.name, c.labels...)
			if d < c.min || (c.exact && d != c.min) {
				t.Errorf("%s%v grew by %v, want %v", c.name, c.labels, d, c.min)
			}
		}
		if v := after.get(activeGauge); v != 0 {
			t.Errorf("%s = %v after the session", activeGauge, v)
		}
		if after.get("console_apiserver_terminal_bind_latency_seconds_bucket", `le="+Inf"`) < 1 {
			t.Error("the bind latency histogram has no buckets")
		}
	})

	t.Run("klog", func(t *testing.T) {
		who := map[string]string{"user": id.Name, "namespace": ns, "pod": pod}
		for _, line := range []struct {
			msg  string
			want map[string]string
		}{
			{"Shell session created", map[string]string{"container": "app", "command": "[sh]", "tty": "true"}},
			{"Terminal session bound", map[string]string{"container": "app", "command": "[sh]", "tty": "true", "transport": "websocket"}},
			{"Terminal session ended", map[string]string{"container": "app", "command": "[sh]", "reason": "exited", "exitCode": "4",
				"bytesIn": fmt.Sprint(len(typed))}},
		} {
			match := map[string]string{}
			for k, v := range who {
				match[k] = v
			}
			for k, v := range line.want {
				match[k] = v
			}
			found := logs.find(line.msg, match)
			if len(found) != 1 {
				t.Errorf("%d lines %q with %v; lines of %s: %v", len(found), line.msg, match, id.Name, logs.find(line.msg, map[string]string{"user": id.Name}))
				continue
			}
			if line.msg == "Terminal session ended" {
				kv := found[0].KV
				if d, ok := kv["duration"].(time.Duration); !ok || d <= 0 {
					t.Errorf("duration %v", kv["duration"])
				}
				if n, ok := kv["bytesOut"].(int64); !ok || n < int64(len("audit-42")) {
					t.Errorf("bytesOut %v", kv["bytesOut"])
				}
			}
		}
	})

	t.Run("kube-apiserver audit", func(t *testing.T) {
		sameIdentity := func(name, uid string, groups []string, extra map[string][]string) error {
			if name != id.Name || uid != id.UID {
				return fmt.Errorf("user %q uid %q", name, uid)
			}
			for _, g := range id.Groups {
				if !slices.Contains(groups, g) {
					return fmt.Errorf("groups %v lack %q", groups, g)
				}
			}
			for k, v := range id.Extra {
				if !slices.Equal(extra[k], v) {
					return fmt.Errorf("extra %v, want %q=%v", extra, k, v)
				}
			}
			return nil
		}
		extraOf := func(e map[string]authnv1.ExtraValue) map[string][]string {
			out := map[string][]string{}
			for k, v := range e {
				out[k] = v
			}
			return out
		}
		server := "system:serviceaccount:" + framework.ConsoleNamespace + ":" + framework.ConsoleServiceAccount
		exec := waitForAudit(t, "the impersonated exec", func(e *auditv1.Event) bool {
			return e.ObjectRef != nil && e.ObjectRef.Namespace == ns && e.ObjectRef.Subresource == "exec" &&
				e.ImpersonatedUser != nil && e.ImpersonatedUser.Username == id.Name
		})
		if exec.User.Username != server {
			t.Errorf("exec by %q, want %q impersonating", exec.User.Username, server)
		}
		// The command is in the exec's URI, which Metadata level keeps.
		if !strings.Contains(exec.RequestURI, "command=sh") {
			t.Errorf("exec URI %q does not show the command", exec.RequestURI)
		}
		iu := exec.ImpersonatedUser
		if err := sameIdentity(iu.Username, iu.UID, iu.Groups, extraOf(iu.Extra)); err != nil {
			t.Errorf("exec impersonated %+v: %v", iu, err)
		}
		attach := waitForAudit(t, "the terminal connection", func(e *auditv1.Event) bool {
			return e.ObjectRef != nil && e.ObjectRef.APIGroup == framework.ConsoleGroup && e.ObjectRef.Subresource == "attach" &&
				e.ObjectRef.Namespace == ns && e.User.Username == id.Name
		})
		if err := sameIdentity(attach.User.Username, attach.User.UID, attach.User.Groups, extraOf(attach.User.Extra)); err != nil {
			t.Errorf("attach by %+v: %v", attach.User, err)
		}
		create := waitForAudit(t, "the session's creation", func(e *auditv1.Event) bool {
			return e.ObjectRef != nil && e.ObjectRef.APIGroup == framework.ConsoleGroup && e.ObjectRef.Subresource == "shell" &&
				e.ObjectRef.Namespace == ns && e.User.Username == id.Name && e.Verb == "create"
		})
		if create.ResponseStatus == nil || create.ResponseStatus.Code != 201 {
			t.Errorf("shell create audited with %+v", create.ResponseStatus)
		}
	})
}
