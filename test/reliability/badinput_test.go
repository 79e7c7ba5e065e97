package reliability

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/user"

	consolesv1alpha1 "github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
	"github.com/kubecube-io/console-apiserver/pkg/session"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

// quietCommand runs in sessions that are bound before the bad input: it
// says when the exec stream is up, reads nothing, and ends by itself.
var quietCommand = []string{"sh", "-c", "echo up; exec sleep 30"}

// TestBadFramesThroughTheChain sends what a broken or hostile client could,
// over WebSocket through kube-apiserver: each gets a toast saying what was
// wrong and close code 2, and nothing else happens (no session is left, no
// goroutine of one, and the server goes on serving).
func TestBadFramesThroughTheChain(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ns, pod := sharedPodFor(t)
	u := newUser(t, "wade")
	protocolBefore := gathered(t, endedCounter, "reason=protocol-error")
	refusedBefore := gathered(t, endedCounter, "reason=bind-refused")

	raw := func(s string) func(*rawWS) error {
		return func(w *rawWS) error { return w.conn.WriteMessage(websocket.TextMessage, []byte(s)) }
	}
	msg := func(m string) func(*rawWS) error { return func(w *rawWS) error { return w.send(m) } }
	cases := []struct {
		name      string
		bindFirst bool
		send      func(*rawWS) error
		want      string
		refused   bool // a bind refusal rather than a protocol error
	}{
		{"malformed JSON", false, msg(`{"Op":"bind",`), "malformed frame", false},
		{"not JSON", false, msg(`hello`), "malformed frame", false},
		{"first frame not bind", false, msg(stdinMsg("id\n")), "the first frame must be a bind", false},
		{"second bind", true, msg(bindMsg(strings.Repeat("0", 32))), "already bound", false},
		{"unknown Op", true, msg(`{"Op":"exec","Data":"rm -rf /"}`), `unknown operation "exec"`, false},
		{"oversized frame", true, msg(stdinMsg(strings.Repeat("x", maxMessageSize))), fmt.Sprintf("exceeds the limit of %d bytes", maxMessageSize), false},
		{"resize to 0", true, msg(resizeMsg(0, 80)), "out of range", false},
		{"resize to 65535", true, msg(resizeMsg(65535, 65535)), "out of range", false},
		{"invalid UTF-8", true, raw("[\"{\\\"Op\\\":\\\"stdin\\\",\\\"Data\\\":\\\"ls \xff\xfe\\\\n\\\"}\"]"), "not valid UTF-8", false},
		{"lone surrogate", true, msg(`{"Op":"stdin","Data":"\ud800"}`), "not valid UTF-8", false},
		{"empty session ID", false, msg(`{"Op":"bind","SessionID":""}`), "bind frame without a SessionID", false},
		{"session ID too long", false, msg(bindMsg(strings.Repeat("a", 4096))), "invalid session ID", true},
		{"session ID not hex", false, msg(bindMsg(strings.Repeat("g", 32))), "invalid session ID", true},
		{"session ID upper case", false, msg(bindMsg(strings.ToUpper(session.NewID()))), "invalid session ID", true},
		{"unknown session ID", false, msg(bindMsg(session.NewID())), "does not exist, has expired or was already used", true},
	}
	wantProtocol, wantRefused := 0, 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, err := dialRawWS(ctx, u, ns, pod)
			if err != nil {
				t.Fatal(err)
			}
			defer w.drop()
			if tc.bindFirst {
				s, err := createShell(ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: quietCommand})
				if err != nil {
					t.Fatal(err)
				}
				if err := w.send(bindMsg(s.Status.ID)); err != nil {
					t.Fatal(err)
				}
				if err := w.readUntil(30*time.Second, "up"); err != nil {
					t.Fatal(err)
				}
			}
			if err := tc.send(w); err != nil {
				t.Fatal(err)
			}
			w.readAll(30*time.Second).expect(t, 2, tc.want)
		})
		if tc.refused {
			wantRefused++
		} else {
			wantProtocol++
		}
	}
	awaitQuiet(t, quietTimeout)
	if d := gathered(t, endedCounter, "reason=protocol-error") - protocolBefore; d != float64(wantProtocol) {
		t.Errorf("sessions_ended_total{reason=protocol-error} grew by %v, want %d", d, wantProtocol)
	}
	if d := gathered(t, endedCounter, "reason=bind-refused") - refusedBefore; d != float64(wantRefused) {
		t.Errorf("sessions_ended_total{reason=bind-refused} grew by %v, want %d", d, wantRefused)
	}
	echoes(t, ctx, u)
}

// TestBadXHRSendsThroughTheChain is the XHR side: a body over
// --max-message-size and bytes that are not UTF-8 are refused with 413 and
// 400, and the session ends with a toast saying why.
func TestBadXHRSendsThroughTheChain(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ns, pod := sharedPodFor(t)
	u := newUser(t, "xavier")
	for _, tc := range []struct {
		name string
		body []byte
		code int
		want string
	}{
		{"oversized body", []byte(frameJSON([]string{stdinMsg(strings.Repeat("x", maxMessageSize))})), http.StatusRequestEntityTooLarge, "exceeds the limit"},
		{"invalid UTF-8", []byte("[\"{\\\"Op\\\":\\\"stdin\\\",\\\"Data\\\":\\\"\xff\\\"}\"]"), http.StatusBadRequest, "not valid UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := createShell(ctx, u, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: quietCommand})
			if err != nil {
				t.Fatal(err)
			}
			x := newRawXHR(t, u, ns, pod)
			body, r, err := x.stream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer body.Close()
			if code, msg := x.sendMsgs(ctx, bindMsg(s.Status.ID)); code != http.StatusNoContent {
				t.Fatalf("bind: %d %s", code, msg)
			}
			// Once the exec stream is up: a session ended while client-go
			// creates its streams leaves a goroutine of client-go's for
			// up to 30s (see awaitQuiet).
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(line, "up") {
					break
				}
			}
			if code, msg := x.send(ctx, tc.body); code != tc.code {
				t.Fatalf("xhr_send: %d %s, want %d", code, msg, tc.code)
			}
			readXHR(r).expect(t, 2, tc.want)
		})
	}
	awaitQuiet(t, quietTimeout)
}

// TestBindIsBoundToTheWholeIdentityAndPod binds sessions as someone who is
// not quite the owner: the same name with another UID or other extra, or
// the owner at another pod's attach. Each is refused and burns the session,
// so that the owner cannot use it either. (A plain replay, and a bind by
// another user, are in test/e2e's TestSessionIsSingleUseAndBoundToItsOwner.)
func TestBindIsBoundToTheWholeIdentityAndPod(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ns, pod := sharedPodFor(t)
	const otherPod = "other"
	if _, err := cp.CreatePod(ctx, framework.PodSpec{Namespace: ns, Name: otherPod}); err != nil {
		t.Fatal(err)
	}
	owner := &user.DefaultInfo{Name: "yara", UID: "uid-yara-1", Groups: []string{usersGroup}, Extra: map[string][]string{"scopes": {"read"}}}
	for _, tc := range []struct {
		name     string
		imposter *user.DefaultInfo
		pod      string
	}{
		{"same name, other UID", &user.DefaultInfo{Name: "yara", UID: "uid-yara-2", Groups: owner.Groups, Extra: owner.Extra}, pod},
		{"same name and UID, other extra", &user.DefaultInfo{Name: "yara", UID: owner.UID, Groups: owner.Groups, Extra: map[string][]string{"scopes": {"read", "write"}}}, pod},
		{"same name and UID, other groups", &user.DefaultInfo{Name: "yara", UID: owner.UID, Groups: []string{usersGroup, "admins"}, Extra: owner.Extra}, pod},
		{"the owner at another pod", owner, otherPod},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := createShell(ctx, identityUser(owner), ns, pod, consolesv1alpha1.ShellSessionSpec{Command: quietCommand})
			if err != nil {
				t.Fatal(err)
			}
			w, err := dialRawWS(ctx, identityUser(tc.imposter), ns, tc.pod)
			if err != nil {
				t.Fatal(err)
			}
			defer w.drop()
			if err := w.send(bindMsg(s.Status.ID)); err != nil {
				t.Fatal(err)
			}
			w.readAll(30*time.Second).expect(t, 2, "belongs to another user or pod")
			// Burned: the owner's own bind fails now.
			w2, err := dialRawWS(ctx, identityUser(owner), ns, pod)
			if err != nil {
				t.Fatal(err)
			}
			defer w2.drop()
			if err := w2.send(bindMsg(s.Status.ID)); err != nil {
				t.Fatal(err)
			}
			w2.readAll(30*time.Second).expect(t, 2, "does not exist, has expired or was already used")
		})
	}
	awaitQuiet(t, quietTimeout)
}

// TestOriginsThroughTheChain checks --allowed-origins on both transports,
// with the Origin a browser sends through kube-apiserver's proxy.
func TestOriginsThroughTheChain(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns, pod := sharedPodFor(t)
	u := newUser(t, "zoe")
	for _, tc := range []struct {
		origin  string
		allowed bool
	}{
		{"", true}, // not a browser
		{allowedOrigin, true},
		{"https://evil.example.com", false},
		{"null", false},
		// A page served by kube-apiserver itself: the aggregator sends
		// console-apiserver another Host, so this is not "same host" there.
		{cp.URL, false},
	} {
		t.Run("websocket "+tc.origin, func(t *testing.T) {
			v := *u
			v.header = http.Header{}
			if tc.origin != "" {
				v.header.Set("Origin", tc.origin)
			}
			w, err := dialRawWS(ctx, &v, ns, pod)
			if tc.allowed {
				if err != nil {
					t.Fatal(err)
				}
				w.drop()
				return
			}
			if err == nil {
				w.drop()
				t.Fatal("the handshake succeeded")
			}
			if !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "is not allowed") {
				t.Fatalf("got %v, want 403 naming the origin", err)
			}
		})
		t.Run("xhr_streaming "+tc.origin, func(t *testing.T) {
			x := newRawXHR(t, u, ns, pod)
			x.header = http.Header{}
			if tc.origin != "" {
				x.header.Set("Origin", tc.origin)
			}
			body, r, err := x.stream(ctx)
			if tc.allowed {
				if err != nil {
					t.Fatal(err)
				}
				defer body.Close()
				// End the session at once.
				if code, msg := x.sendMsgs(ctx, bindMsg(session.NewID())); code != http.StatusNoContent {
					t.Fatalf("xhr_send: %d %s", code, msg)
				}
				readXHR(r).expect(t, 2, "does not exist")
				return
			}
			if err == nil {
				body.Close()
				t.Fatal("the stream opened")
			}
			if !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "is not allowed") {
				t.Fatalf("got %v, want 403 naming the origin", err)
			}
		})
	}
	awaitQuiet(t, quietTimeout)
}

// TestUnauthenticated sends requests without credentials. kube-apiserver
// authenticates them as system:anonymous and RBAC refuses them (403) before
// the aggregator forwards anything. console-apiserver, reached directly,
// does the same (its authorizer asks kube-apiserver), except for the health
// endpoints a kubelet probes. And where RBAC does let anonymous users reach
// attach, the terminal itself answers 401.
func TestUnauthenticated(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const openNS = "anonymous-allowed"
	if _, err := cp.CreatePod(ctx, framework.PodSpec{Namespace: openNS, Name: "app"}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "console-user-for-anyone", Namespace: openNS},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "console-user"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: user.AllUnauthenticated}},
	}
	if _, err := cp.AdminClient().RbacV1().RoleBindings(openNS).Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	anonymous := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	direct := fmt.Sprintf("https://127.0.0.1:%d", mainServer.Prep.Port)
	ns, pod := sharedPodFor(t)
	for _, tc := range []struct {
		name, url string
		code      int
		want      string
	}{
		{"kube-apiserver, attach", framework.AttachURL(cp.URL, ns, pod) + "/info", http.StatusForbidden, `User "system:anonymous" cannot get resource "pods/attach"`},
		{"kube-apiserver, attach websocket", framework.AttachURL(cp.URL, ns, pod) + "/000/abc/websocket", http.StatusForbidden, `User "system:anonymous" cannot get resource "pods/attach"`},
		{"direct, attach", framework.AttachURL(direct, ns, pod) + "/info", http.StatusForbidden, `User "system:anonymous" cannot get resource "pods/attach"`},
		{"direct, metrics", direct + "/metrics", http.StatusForbidden, `forbidden`},
		{"direct, readyz (probes)", direct + "/readyz", http.StatusOK, "ok"},
		{"kube-apiserver, attach allowed by RBAC", framework.AttachURL(cp.URL, openNS, "app") + "/info", http.StatusUnauthorized, "a terminal requires an authenticated user"},
		{"direct, attach allowed by RBAC", framework.AttachURL(direct, openNS, "app") + "/info", http.StatusUnauthorized, "a terminal requires an authenticated user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// RBAC may take a moment to see the new binding.
			eventually(t, 10*time.Second, tc.name, func() (bool, string) {
				resp, err := anonymous.Get(tc.url)
				if err != nil {
					return false, err.Error()
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				text := string(b)
				var st metav1.Status
				if json.Unmarshal(b, &st) == nil && st.Message != "" {
					text = st.Message
				}
				return resp.StatusCode == tc.code && strings.Contains(text, tc.want), fmt.Sprintf("%s: %s", resp.Status, b)
			})
		})
	}
}

// TestShellBodies posts bodies that are not a valid ShellSession. The
// generic server decodes them: an unknown field is dropped with a warning
// (fieldValidation=Warn, the default) or refused with 400 naming it
// (fieldValidation=Strict, what kubectl create -f sends); another kind or
// version, or a field of the wrong type, is a 400 Status. Invalid values
// are 422s with field paths (test/e2e, TestCreateFailsEarlyAndClearly).
// Bodies a cross-origin page could send without a CORS preflight (plain
// text, forms) are refused with 415.
func TestShellBodies(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns, pod := sharedPodFor(t)
	u := newUser(t, "abe")
	const gv = `"apiVersion":"consoles.kubecube.io/v1alpha1"`
	for _, tc := range []struct {
		name, body, validation string
		code                   int
		want, warning          string
		contentType            string // default application/json
	}{
		{"unknown field, default", `{` + gv + `,"kind":"ShellSession","spec":{"bogus":1}}`, "", http.StatusCreated, "", `unknown field "spec.bogus"`, ""},
		{"unknown field, Strict", `{` + gv + `,"kind":"ShellSession","spec":{"bogus":1}}`, "Strict", http.StatusBadRequest, `strict decoding error: unknown field "spec.bogus"`, "", ""},
		{"duplicate field, Strict", `{` + gv + `,"kind":"ShellSession","spec":{"tty":true,"tty":false}}`, "Strict", http.StatusBadRequest, `duplicate field "spec.tty"`, "", ""},
		{"another kind of the group", `{` + gv + `,"kind":"Pod"}`, "", http.StatusBadRequest, "Pod in version \"v1alpha1\" cannot be handled as a ShellSession", "", ""},
		{"a core Pod", `{"apiVersion":"v1","kind":"Pod"}`, "", http.StatusBadRequest, "cannot be handled as a ShellSession", "", ""},
		{"wrong type", `{` + gv + `,"kind":"ShellSession","spec":{"tty":"yes"}}`, "", http.StatusBadRequest, "spec.tty of type bool", "", ""},
		{"not JSON", `tty: yes`, "", http.StatusBadRequest, "the object provided is unrecognized (must be of type ShellSession)", "", ""},
		// What a cross-origin page can send without a CORS preflight.
		{"text/plain", `{` + gv + `,"kind":"ShellSession"}`, "", http.StatusUnsupportedMediaType, `the body of the request was in an unknown format`, "", "text/plain"},
		{"form", `spec=x`, "", http.StatusUnsupportedMediaType, `the body of the request was in an unknown format`, "", "application/x-www-form-urlencoded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			contentType := "application/json"
			if tc.contentType != "" {
				contentType = tc.contentType
			}
			req := u.consoles.ConsolesV1alpha1().RESTClient().Post().Namespace(ns).Resource("pods").Name(pod).
				SubResource("shell").MaxRetries(0).Body([]byte(tc.body)).SetHeader("Content-Type", contentType)
			if tc.validation != "" {
				req = req.Param("fieldValidation", tc.validation)
			}
			res := req.Do(ctx)
			var code int
			res.StatusCode(&code)
			raw, _ := res.Raw()
			if code != tc.code {
				t.Fatalf("%d %s, want %d", code, raw, tc.code)
			}
			if tc.want != "" {
				var st metav1.Status
				if err := json.Unmarshal(raw, &st); err != nil || st.Kind != "Status" || !strings.Contains(st.Message, tc.want) {
					t.Fatalf("got %s, want a Status saying %q", raw, tc.want)
				}
			}
			if tc.warning != "" {
				var warnings []string
				for _, w := range res.Warnings() {
					warnings = append(warnings, w.Text)
				}
				if !strings.Contains(strings.Join(warnings, "|"), tc.warning) {
					t.Fatalf("warnings %q, want %q", warnings, tc.warning)
				}
			}
		})
	}
}
