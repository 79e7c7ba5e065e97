// Package e2e tests console-apiserver through the real chain: kube-apiserver
// authenticates the caller, the aggregator forwards to console-apiserver
// (running in this process on loopback, as the shipped ServiceAccount with
// the shipped RBAC), and commands run on a kwok node through kube-apiserver,
// impersonating the caller.
package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	consolesv1alpha1 "github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
	"github.com/kubecube-io/console-apiserver/pkg/generated/clientset/versioned"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

// requestTimeout is kube-apiserver's --request-timeout here: short, so a
// test can hold a terminal open past it.
const requestTimeout = 10 * time.Second

var (
	cp     *framework.ControlPlane
	server *framework.RunningServer
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logf := func(f string, a ...any) { fmt.Printf(f+"\n", a...) }
	var err error
	cp, err = framework.Start(ctx, framework.Options{RequestTimeout: requestTimeout, Logf: logf})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the control plane:", err)
		return 1
	}
	defer cp.Stop()
	server, err = cp.RunConsoleServer(ctx, "e2e",
		"--session-ttl=30s", "--max-pending-sessions-per-user=5", "--idle-timeout=0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting console-apiserver:", err)
		return 1
	}
	defer server.Stop()
	return m.Run()
}

// user is a person with a client certificate.
type user struct {
	name     string
	cfg      *rest.Config
	consoles versioned.Interface
}

func newUser(t *testing.T, name string, groups ...string) *user {
	t.Helper()
	cfg, err := cp.UserConfig(name, groups...)
	if err != nil {
		t.Fatal(err)
	}
	return &user{name: name, cfg: cfg, consoles: versioned.NewForConfigOrDie(cfg)}
}

// grant binds the shipped console-user ClusterRole (consoleUser) and/or
// pods/exec to name in namespace.
func grant(t *testing.T, namespace, name string, consoleUser, exec bool) {
	t.Helper()
	ctx := t.Context()
	rbac := cp.AdminClient().RbacV1()
	subjects := []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: name}}
	if exec {
		role := &rbacv1.Role{
			ObjectMeta: metav1.ObjectMeta{Name: "exec", Namespace: namespace},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}}},
		}
		if _, err := rbac.Roles(namespace).Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		bind(t, namespace, "exec-"+name, rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "exec"}, subjects)
	}
	if consoleUser {
		bind(t, namespace, "console-user-"+name, rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "console-user"}, subjects)
	}
}

func bind(t *testing.T, namespace, name string, ref rbacv1.RoleRef, subjects []rbacv1.Subject) {
	t.Helper()
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}, RoleRef: ref, Subjects: subjects}
	if _, err := cp.AdminClient().RbacV1().RoleBindings(namespace).Create(t.Context(), rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// pod makes a running pod in a fresh namespace named after the test.
func pod(t *testing.T, containers ...string) (namespace, name string) {
	t.Helper()
	namespace = strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(namespace) > 60 {
		namespace = namespace[:60]
	}
	namespace = strings.Trim(namespace, "-")
	if _, err := cp.CreatePod(t.Context(), framework.PodSpec{Namespace: namespace, Name: "app", Containers: containers}); err != nil {
		t.Fatal(err)
	}
	return namespace, "app"
}

func createShell(ctx context.Context, u *user, namespace, pod string, spec consolesv1alpha1.ShellSessionSpec) (*consolesv1alpha1.ShellSession, error) {
	return u.consoles.ConsolesV1alpha1().Pods(namespace).CreateShell(ctx, pod, &consolesv1alpha1.ShellSession{Spec: spec}, metav1.CreateOptions{})
}

// openShell creates a session and binds it over transport.
func openShell(t *testing.T, ctx context.Context, u *user, namespace, pod string, spec consolesv1alpha1.ShellSessionSpec, transport framework.Transport) *framework.Terminal {
	t.Helper()
	s, err := createShell(ctx, u, namespace, pod, spec)
	if err != nil {
		t.Fatalf("creating a shell session as %s: %v", u.name, err)
	}
	term, err := framework.OpenTerminal(ctx, u.cfg, namespace, pod, framework.TerminalOptions{Transport: transport})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(term.Close)
	if err := term.Bind(s.Status.ID); err != nil {
		t.Fatal(err)
	}
	return term
}
