// Package multicluster tests member clusters: console-apiserver on a home
// plane opens terminals in a second plane named by spec.cluster,
// impersonating the caller there, with that cluster's RBAC deciding.
package multicluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	consolesv1alpha1 "github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
	"github.com/kubecube-io/console-apiserver/pkg/generated/clientset/versioned"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

const ns = "shared"

var (
	home, east *framework.ControlPlane
	membersDir string
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	ctx := context.Background()
	var err error
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	if home, err = framework.Start(ctx, framework.Options{}); err != nil {
		return fail(err)
	}
	defer home.Stop()
	if east, err = framework.Start(ctx, framework.Options{}); err != nil {
		return fail(err)
	}
	defer east.Stop()
	membersDir = filepath.Join(home.Dir, "members")
	if err := os.MkdirAll(membersDir, 0o700); err != nil {
		return fail(err)
	}
	// The server's identity in the member: the shipped RBAC, applied there.
	if err := east.ConsoleKubeconfig(ctx, filepath.Join(membersDir, "east.kubeconfig")); err != nil {
		return fail(err)
	}
	server, err := home.RunConsoleServer(ctx, "home", "--member-clusters-dir="+membersDir, "--member-clusters-resync=500ms")
	if err != nil {
		return fail(err)
	}
	defer server.Stop()
	for _, cp := range []*framework.ControlPlane{home, east} {
		if _, err := cp.CreatePod(ctx, framework.PodSpec{Namespace: ns, Name: "app"}); err != nil {
			return fail(err)
		}
	}
	return m.Run()
}

func bindRole(t *testing.T, cp *framework.ControlPlane, user string, ref rbacv1.RoleRef) {
	t.Helper()
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user + "-" + ref.Name, Namespace: ns},
		RoleRef:    ref,
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if _, err := cp.AdminClient().RbacV1().RoleBindings(ns).Create(t.Context(), rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func grantExec(t *testing.T, cp *framework.ControlPlane, user string) {
	t.Helper()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "exec", Namespace: ns},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}}},
	}
	if _, err := cp.AdminClient().RbacV1().Roles(ns).Create(t.Context(), role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	bindRole(t, cp, user, rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "exec"})
}

// shell creates a session in cluster and runs `pwd` in it: each plane's
// kwok runs commands in its own directory, which tells the clusters apart.
func shell(t *testing.T, ctx context.Context, user, cluster string) (string, error) {
	t.Helper()
	cfg, err := home.UserConfig(user)
	if err != nil {
		t.Fatal(err)
	}
	s, err := versioned.NewForConfigOrDie(cfg).ConsolesV1alpha1().Pods(ns).CreateShell(ctx, "app",
		&consolesv1alpha1.ShellSession{Spec: consolesv1alpha1.ShellSessionSpec{Cluster: cluster, Command: []string{"sh"}}}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	term, err := framework.OpenTerminal(ctx, cfg, ns, "app", framework.TerminalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	if err := term.Bind(s.Status.ID); err != nil {
		t.Fatal(err)
	}
	if err := term.Stdin("echo \"dir=$(pwd)\"\n"); err != nil {
		t.Fatal(err)
	}
	if err := term.Out.WaitFor(ctx, "dir=/"); err != nil {
		t.Fatal(err)
	}
	_ = term.Stdin("exit\n")
	return term.Out.String(), nil
}

// TestSameUserDifferentClusters: alice may open terminals in namespace
// shared (console-user on the home cluster, where the API is served), may
// exec there only in the member cluster east: a shell in east, a 403 at home.
func TestSameUserDifferentClusters(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	bindRole(t, home, "alice", rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "console-user"})
	grantExec(t, east, "alice")

	out, err := shell(t, ctx, "alice", "east")
	if err != nil {
		t.Fatalf("shell in east: %v", err)
	}
	if !strings.Contains(out, "dir="+east.ExecDir) {
		t.Fatalf("the command did not run in east (exec dir %s): %q", east.ExecDir, out)
	}
	_, err = shell(t, ctx, "alice", "")
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `cannot create resource "pods/exec"`) {
		t.Fatalf("shell at home: %v, want 403 for pods/exec", err)
	}
}

func TestUnknownClusterIs422(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	bindRole(t, home, "bob", rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "console-user"})
	_, err := shell(t, ctx, "bob", "nowhere")
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.cluster") {
		t.Fatalf("unknown cluster: %v, want 422 on spec.cluster", err)
	}
}

// TestMembersReloadWithoutRestart adds a member file while the server runs.
func TestMembersReloadWithoutRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	bindRole(t, home, "carol", rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "console-user"})
	grantExec(t, east, "carol")
	b, err := os.ReadFile(filepath.Join(membersDir, "east.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(membersDir, "east-alias.kubeconfig"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(filepath.Join(membersDir, "east-alias.kubeconfig"))
	for {
		out, err := shell(t, ctx, "carol", "east-alias")
		if err == nil {
			if !strings.Contains(out, "dir="+east.ExecDir) {
				t.Fatalf("east-alias ran elsewhere: %q", out)
			}
			return
		}
		if !apierrors.IsInvalid(err) || ctx.Err() != nil {
			t.Fatalf("east-alias: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestMemberDownIsAClearError stops the member's kube-apiserver: creating a
// session there fails fast and says which cluster, and home still works.
func TestMemberDownIsAClearError(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	bindRole(t, home, "dave", rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "console-user"})
	grantExec(t, home, "dave")
	if err := east.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := east.RestartAPIServer(context.WithoutCancel(ctx)); err != nil {
			t.Errorf("restarting east: %v", err)
		}
	}()
	start := time.Now()
	_, err := shell(t, ctx, "dave", "east")
	var status apierrors.APIStatus
	if !errors.As(err, &status) || status.Status().Code != 503 || !strings.Contains(err.Error(), `cluster "east"`) {
		t.Fatalf("member down: %v, want 503 naming cluster east", err)
	}
	t.Logf("member down reported in %s: %v", time.Since(start), err)
	if _, err := shell(t, ctx, "dave", ""); err != nil {
		t.Fatalf("home while east is down: %v", err)
	}
}
