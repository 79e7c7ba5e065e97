package reliability

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/user"

	consolesv1alpha1 "github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
	"github.com/kubecube-io/console-apiserver/pkg/generated/clientset/versioned"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

// serverSA is how kube-apiserver knows console-apiserver.
var serverSA = user.DefaultInfo{
	Name:   "system:serviceaccount:" + framework.ConsoleNamespace + ":" + framework.ConsoleServiceAccount,
	Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + framework.ConsoleNamespace, user.AllAuthenticated},
}

// allowed asks kube-apiserver whether u may do attrs.
func allowed(ctx context.Context, u user.DefaultInfo, attrs authorizationv1.ResourceAttributes) (bool, error) {
	r, err := cp.AdminClient().AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{User: u.Name, Groups: u.Groups, ResourceAttributes: &attrs},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	return r.Status.Allowed, nil
}

// TestNarrowedImpersonationFailsClosed narrows the server's right to
// impersonate, as docs/security.md suggests (uids and the extra keys an
// authenticator sets, listed one by one, instead of "*"): a caller whose
// extra the server may impersonate gets a terminal; one with another extra
// key gets a clear refusal, never a terminal with part of its identity
// dropped.
func TestNarrowedImpersonationFailsClosed(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	roles := cp.AdminClient().RbacV1().ClusterRoles()
	shipped, err := roles.Get(ctx, "console-apiserver", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	narrowed := shipped.DeepCopy()
	found := false
	for i, r := range narrowed.Rules {
		if slices.Equal(r.APIGroups, []string{"authentication.k8s.io"}) && slices.Equal(r.Resources, []string{"*"}) {
			narrowed.Rules[i].Resources = []string{"uids", "userextras/scopes"}
			found = true
		}
	}
	if !found {
		t.Fatalf("the shipped role has no authentication.k8s.io/* impersonation rule: %+v", shipped.Rules)
	}
	if _, err := roles.Update(ctx, narrowed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		current, err := roles.Get(context.Background(), "console-apiserver", metav1.GetOptions{})
		if err == nil {
			current.Rules = shipped.Rules
			_, err = roles.Update(context.Background(), current, metav1.UpdateOptions{})
		}
		if err != nil {
			t.Errorf("restoring the server's role: %v", err)
		}
	})
	eventually(t, 30*time.Second, "RBAC to see the narrowed role", func() (bool, string) {
		ok, err := allowed(ctx, serverSA, authorizationv1.ResourceAttributes{Verb: "impersonate", Group: "authentication.k8s.io", Resource: "userextras", Subresource: "tenant"})
		return err == nil && !ok, fmt.Sprint("may impersonate userextras/tenant: ", ok, err)
	})

	ns, pod := sharedPodFor(t)
	scoped := identityUser(&user.DefaultInfo{Name: "jade", UID: "uid-jade", Groups: []string{usersGroup}, Extra: map[string][]string{"scopes": {"terminal"}}})
	echoes(t, ctx, scoped)

	tenant := identityUser(&user.DefaultInfo{Name: "kira", UID: "uid-kira", Groups: []string{usersGroup},
		Extra: map[string][]string{"scopes": {"terminal"}, "tenant": {"acme"}}})
	term := openShell(t, ctx, tenant, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: []string{"sh"}}, framework.WebSocket)
	closed := expectClosed(t, ctx, term, 2, `cannot impersonate resource "userextras/tenant"`)
	t.Logf("a caller with an extra the server may not impersonate: %q", closed.Reason)
	awaitQuiet(t, quietTimeout)
}

// TestRightsAreCheckedAgainAtBind revokes a user's pods/exec between create
// and bind: the exec, which kube-apiserver authorizes as the caller, is
// refused, and new sessions are refused at create. A terminal already
// running goes on: its exec was authorized when it started, as kubectl
// exec's is; --max-session-duration bounds how long.
func TestRightsAreCheckedAgainAtBind(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const ns, pod = "revoked", "app"
	if _, err := cp.CreatePod(ctx, framework.PodSpec{Namespace: ns, Name: pod}); err != nil {
		t.Fatal(err)
	}
	// Not in usersGroup: only the bindings below let her in.
	cfg, err := cp.UserConfig("lena")
	if err != nil {
		t.Fatal(err)
	}
	lena := &tuser{name: "lena", cfg: cfg, consoles: versioned.NewForConfigOrDie(cfg)}
	rbac := cp.AdminClient().RbacV1().RoleBindings(ns)
	for _, role := range []string{"console-user", "reliability-exec"} {
		rb := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: role + "-lena"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: "lena"}},
		}
		if _, err := rbac.Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	lenaInfo := user.DefaultInfo{Name: "lena", Groups: []string{user.AllAuthenticated}}
	execAttrs := authorizationv1.ResourceAttributes{Namespace: ns, Verb: "create", Resource: "pods", Subresource: "exec", Name: pod}
	eventually(t, 30*time.Second, "lena's rights", func() (bool, string) {
		ok, err := allowed(ctx, lenaInfo, execAttrs)
		return err == nil && ok, fmt.Sprint(ok, err)
	})

	running := openShell(t, ctx, lena, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: []string{"sh"}}, framework.WebSocket)
	if err := running.Stdin("echo before\n"); err != nil {
		t.Fatal(err)
	}
	if err := running.Out.WaitFor(ctx, "before"); err != nil {
		t.Fatal(err)
	}
	pending, err := createShell(ctx, lena, ns, pod, consolesv1alpha1.ShellSessionSpec{Command: []string{"sh"}})
	if err != nil {
		t.Fatal(err)
	}

	if err := rbac.Delete(ctx, "reliability-exec-lena", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "RBAC to drop lena's pods/exec", func() (bool, string) {
		ok, err := allowed(ctx, lenaInfo, execAttrs)
		return err == nil && !ok, fmt.Sprint(ok, err)
	})

	late := openTerminal(t, ctx, lena, ns, pod, framework.WebSocket)
	bind(t, late, pending.Status.ID)
	closed := expectClosed(t, ctx, late, 2, "exec failed")
	t.Logf("bind after the revocation: %q", closed.Reason)
	if _, err := createShell(ctx, lena, ns, pod, consolesv1alpha1.ShellSessionSpec{}); !apierrors.IsForbidden(err) {
		t.Fatalf("create after the revocation: %v, want 403", err)
	}
	if err := running.Stdin("echo after-$((2+3))\n"); err != nil {
		t.Fatal(err)
	}
	if err := running.Out.WaitFor(ctx, "after-5"); err != nil {
		t.Fatal(err)
	}
	_ = running.Stdin("exit\n")
	expectClosed(t, ctx, running, 1, "Process exited")
	awaitQuiet(t, quietTimeout)
}
