// Package reliability proves console-apiserver's behaviour under faults, bad
// input, limits and load through the real chain: kube-apiserver (RBAC,
// front-proxy, aggregator, audit) in front of console-apiserver running in
// this process, and a kwok node behind it. Each test asserts both what the
// user sees (toasts, close codes, exit frames) and what the server keeps
// (goroutines, active sessions, metrics, memory).
//
// The package runs two console-apiservers in this process and, for the
// SIGTERM test, one as a subprocess. Only one of them can back the APIService
// v1alpha1.consoles.kubecube.io at a time: "main" does, except while a test
// has switched it with useServer. Each server has its own --session-ttl,
// which a created session's expirationTimestamp reveals; that is how
// useServer knows the aggregator routes to the server it switched to.
package reliability

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"

	"github.com/kubecube-io/console-apiserver/test/framework"
)

const (
	// usersGroup holds every test identity; it may open terminals anywhere.
	usersGroup = "reliability-users"
	// maxMessageSize is main's --max-message-size.
	maxMessageSize = 16384
	// Each server's --session-ttl; also its fingerprint (see useServer).
	mainTTL     = 20 * time.Second
	shortTTL    = 4 * time.Second
	sigtermTTL  = 12 * time.Second
	shortIdle   = 3 * time.Second
	shortMaxDur = 8 * time.Second
	// shortMaxActivePerUser and shortMaxActive are the short server's limits.
	shortMaxActivePerUser = 2
	shortMaxActive        = 3
	// allowedOrigin is in main's --allowed-origins.
	allowedOrigin = "https://console.example.com"
)

var (
	cp *framework.ControlPlane
	// mainServer backs the APIService unless a test switched it.
	mainServer *framework.RunningServer
	// shortServer has short timers and small limits (see TestMain).
	shortServer *framework.RunningServer
	// logs records what the in-process servers log through klog.
	logs *logCapture

	// binary is console-apiserver built for the SIGTERM test; binaryErr
	// says why not. Both are set when binaryDone is closed.
	binary     string
	binaryErr  error
	binaryDone = make(chan struct{})
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	logf := func(f string, a ...any) { fmt.Printf(f+"\n", a...) }

	tmp, err := os.MkdirTemp("", "console-reliability-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	// The SIGTERM test runs the real binary; link it while the plane starts.
	go func() {
		defer close(binaryDone)
		out := filepath.Join(tmp, "console-apiserver")
		cmd := exec.Command("go", "build", "-o", out, "./cmd/console-apiserver")
		cmd.Dir = framework.RepoRoot()
		if b, err := cmd.CombinedOutput(); err != nil {
			binaryErr = fmt.Errorf("go build: %v\n%s", err, b)
			return
		}
		binary = out
	}()

	cp, err = framework.Start(ctx, framework.Options{Logf: logf})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the control plane:", err)
		return 1
	}
	defer cp.Stop()
	if err := grantUsers(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "granting test users:", err)
		return 1
	}

	// Two servers in one process apply the same logging configuration
	// twice; allow that (it is unchanged).
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
	shortServer, err = runServer(ctx, "short",
		"--session-ttl="+shortTTL.String(),
		"--idle-timeout="+shortIdle.String(),
		"--max-session-duration="+shortMaxDur.String(),
		fmt.Sprintf("--max-active-sessions-per-user=%d", shortMaxActivePerUser),
		fmt.Sprintf("--max-active-sessions=%d", shortMaxActive),
		"--shutdown-drain-timeout=5s",
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the short console-apiserver:", err)
		return 1
	}
	defer shortServer.Stop()
	// Registered last, so the APIService points at it.
	mainServer, err = runServer(ctx, "main",
		"--session-ttl="+mainTTL.String(),
		fmt.Sprintf("--max-message-size=%d", maxMessageSize),
		"--allowed-origins="+allowedOrigin,
		"--shutdown-drain-timeout=5s",
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the main console-apiserver:", err)
		return 1
	}
	defer mainServer.Stop()
	// Available is not yet routed: wait until a request reaches main.
	if _, err := cp.CreatePod(ctx, framework.PodSpec{Namespace: sharedNS, Name: sharedPod}); err != nil {
		fmt.Fprintln(os.Stderr, "creating the shared pod:", err)
		return 1
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		ok, state := routesTo(ctx, mainTTL)
		if ok {
			break
		}
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "the APIService does not reach main:", state)
			return 1
		}
	}
	logs = captureKlog()
	fmt.Printf("plane and servers up in %s\n", time.Since(start).Round(time.Millisecond))
	return m.Run()
}

// runServer runs a console-apiserver in this process, with a serving
// certificate of its own, and points the APIService at it.
func runServer(ctx context.Context, name string, args ...string) (*framework.RunningServer, error) {
	prep, err := cp.PrepareConsoleServer(ctx, name, args...)
	if err != nil {
		return nil, err
	}
	return cp.RunPreparedConsoleServer(ctx, prep)
}

// grantUsers lets usersGroup open terminals in every namespace: the shipped
// console-user role, plus pods/exec, which the server checks and the exec
// needs.
func grantUsers(ctx context.Context) error {
	rbac := cp.AdminClient().RbacV1()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "reliability-exec"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}}},
	}
	if _, err := rbac.ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	// console-user comes with the shipped RBAC, which PrepareConsoleServer
	// applies; apply it now, before any server, so the binding has a role.
	b, err := os.ReadFile(filepath.Join(framework.RepoRoot(), "artifacts", "deploy", "20-rbac-users.yaml"))
	if err != nil {
		return err
	}
	if err := cp.Apply(ctx, b); err != nil {
		return err
	}
	subjects := []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: usersGroup}}
	for _, r := range []string{"reliability-exec", "console-user"} {
		crb := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "reliability-" + r},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: r},
			Subjects:   subjects,
		}
		if _, err := rbac.ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}
