// Package harness measures console-apiserver against direct exec (D) and a
// raw aggregated hop (H) on one local control plane. It is benchmark-only
// code, run by test/bench/cmd/bench (make bench), never by make test.
package harness

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/kubecube-io/console-apiserver/pkg/generated/clientset/versioned"
	"github.com/kubecube-io/console-apiserver/test/bench/rawhop"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

// Where the benchmark's pod runs, and who uses it.
const (
	Namespace = "bench"
	Pod       = "app"
	Container = "app"
	User      = "alice"

	rawhopNamespace = "rawhop-bench"
	rawhopService   = "rawhop"
)

// Binaries are the servers the benchmark runs as processes of their own, so
// that their CPU time is theirs alone.
type Binaries struct {
	Console, Rawhop string
	// BaselineConsole is console-apiserver built at another revision, for
	// before/after comparisons ("" if none).
	BaselineConsole string
}

// BuildBaseline builds console-apiserver as it was at git revision rev
// (exported with git archive into dir, so the repository is not touched).
func BuildBaseline(ctx context.Context, dir, rev string, logf func(string, ...any)) (string, error) {
	src := filepath.Join(dir, "src-"+rev)
	out := filepath.Join(dir, "console-apiserver-"+rev)
	if err := os.RemoveAll(src); err != nil {
		return "", err
	}
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, "sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", framework.RepoRoot(), rev, src)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("exporting %s: %w\n%s", rev, err, b)
	}
	build := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/console-apiserver")
	build.Dir = src
	if b, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building console-apiserver at %s: %w\n%s", rev, err, b)
	}
	logf("built %s (%s)", out, time.Since(start).Round(time.Millisecond))
	return out, nil
}

// BuildBinaries builds console-apiserver and the raw-hop server into dir.
func BuildBinaries(ctx context.Context, dir string, logf func(string, ...any)) (Binaries, error) {
	b := Binaries{Console: filepath.Join(dir, "console-apiserver"), Rawhop: filepath.Join(dir, "rawhop")}
	for _, t := range []struct{ out, pkg string }{
		{b.Console, "./cmd/console-apiserver"},
		{b.Rawhop, "./test/bench/cmd/rawhop"},
	} {
		start := time.Now()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", t.out, t.pkg)
		cmd.Dir = framework.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("go build %s: %w\n%s", t.pkg, err, out)
		}
		logf("built %s (%s)", t.out, time.Since(start).Round(time.Millisecond))
	}
	return b, nil
}

// EnvOptions tune an Env.
type EnvOptions struct {
	Bins Binaries
	Logf func(string, ...any)
	// ConsoleArgs are extra flags of console-apiserver.
	ConsoleArgs []string
}

// Env is one plane with console-apiserver (C) and the raw hop (H) running,
// a pod, and the user alice allowed to exec into it all three ways.
type Env struct {
	CP      *framework.ControlPlane
	Console *framework.Process
	Rawhop  *framework.Process
	// ConsoleURL and RawhopURL are the servers' own addresses (not through
	// the aggregator), for metrics and profiles.
	ConsoleURL, RawhopURL string
	// User is alice's client config (QPS raised for many sessions).
	User     *rest.Config
	Consoles versioned.Interface
	// Admin reaches the servers directly with the admin client certificate.
	Admin *http.Client

	kubeAdmin *http.Client

	logf func(string, ...any)
}

// StartEnv starts a plane and both servers.
func StartEnv(ctx context.Context, o EnvOptions) (e *Env, err error) {
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	e = &Env{logf: o.Logf}
	start := time.Now()
	e.CP, err = framework.Start(ctx, framework.Options{Logf: o.Logf})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			e.Stop()
		}
	}()
	logs := filepath.Join(e.CP.Dir, "logs")

	// console-apiserver, with limits out of the way of 1,000 sessions of
	// one user.
	args := append([]string{
		"--max-pending-sessions-per-user=0", "--max-active-sessions-per-user=0", "--max-active-sessions=0",
		"--idle-timeout=0", "--session-ttl=60s", "--profiling=true",
	}, o.ConsoleArgs...)
	prep, err := e.CP.PrepareConsoleServer(ctx, "bench", args...)
	if err != nil {
		return e, err
	}
	if e.Console, err = framework.StartProcess("console-apiserver", logs, o.Bins.Console, prep.Args...); err != nil {
		return e, err
	}
	e.ConsoleURL = "https://127.0.0.1:" + strconv.Itoa(prep.Port)
	if err := e.CP.RegisterConsoleAPIService(ctx, prep); err != nil {
		return e, fmt.Errorf("%w\n%s", err, e.Console.LogTail(20))
	}

	if err := e.startRawhop(ctx, o.Bins.Rawhop, logs); err != nil {
		return e, err
	}
	if err := e.setupUser(ctx); err != nil {
		return e, err
	}
	if _, err := e.CP.CreatePod(ctx, framework.PodSpec{Namespace: Namespace, Name: Pod, Containers: []string{Container}}); err != nil {
		return e, err
	}
	if err := e.adminClient(); err != nil {
		return e, err
	}
	o.Logf("plane, console-apiserver (pid %d) and rawhop (pid %d) up in %s", e.Console.PID(), e.Rawhop.PID(), time.Since(start).Round(time.Millisecond))
	return e, nil
}

// Stop stops the servers, then the plane.
func (e *Env) Stop() {
	for _, p := range []*framework.Process{e.Console, e.Rawhop} {
		if p != nil {
			_ = p.Stop(10 * time.Second)
		}
	}
	if e.CP != nil {
		e.CP.Stop()
	}
}

// PIDs names the processes whose CPU the benchmark accounts for.
func (e *Env) PIDs() map[string]int {
	m := e.CP.Processes()
	m["console-apiserver"] = e.Console.PID()
	m["rawhop"] = e.Rawhop.PID()
	m["bench"] = os.Getpid()
	return m
}

// startRawhop runs the raw-hop server as a ServiceAccount of its own with
// the same rights as console-apiserver's, and registers its APIService.
func (e *Env) startRawhop(ctx context.Context, bin, logs string) error {
	cs := e.CP.AdminClient()
	if err := e.CP.CreateNamespace(ctx, rawhopNamespace); err != nil {
		return err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: rawhopService, Namespace: rawhopNamespace}}
	if _, err := cs.CoreV1().ServiceAccounts(rawhopNamespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "rawhop-bench"},
		// The shipped ClusterRole of console-apiserver: impersonation.
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "console-apiserver"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: rawhopService, Namespace: rawhopNamespace}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	exp := int64(24 * 3600)
	tok, err := cs.CoreV1().ServiceAccounts(rawhopNamespace).CreateToken(ctx, rawhopService,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	dir := filepath.Join(e.CP.Dir, "rawhop")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	kcfg := &rest.Config{Host: e.CP.URL, BearerToken: tok.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAData: e.CP.CA.CertPEM}}
	if err := framework.WriteKubeconfig(kubeconfig, kcfg, rawhopNamespace); err != nil {
		return err
	}
	kp, caBundle, err := e.CP.ServingCert(rawhopService, rawhopNamespace)
	if err != nil {
		return err
	}
	port := freePort()
	e.Rawhop, err = framework.StartProcess("rawhop", logs, bin,
		"--secure-port="+strconv.Itoa(port),
		"--tls-cert-file="+kp.CertFile, "--tls-private-key-file="+kp.KeyFile,
		"--requestheader-client-ca-file="+e.CP.FrontProxyCA.CertFile,
		"--admin-ca-file="+e.CP.CA.CertFile,
		"--kubeconfig="+kubeconfig)
	if err != nil {
		return err
	}
	e.RawhopURL = "https://127.0.0.1:" + strconv.Itoa(port)
	if err := e.CP.RegisterAPIService(ctx, framework.AggregatedServer{
		Group: rawhop.Group, Version: rawhop.Version, Namespace: rawhopNamespace, Service: rawhopService,
		Port: port, CABundle: caBundle,
	}); err != nil {
		return fmt.Errorf("%w\n%s", err, e.Rawhop.LogTail(20))
	}
	return nil
}

// setupUser lets alice exec into pods of the bench namespace directly, via
// the raw hop's group, and through console-apiserver (the shipped
// console-user role).
func (e *Env) setupUser(ctx context.Context) error {
	if err := e.CP.CreateNamespace(ctx, Namespace); err != nil {
		return err
	}
	rbac := e.CP.AdminClient().RbacV1()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "bench-exec", Namespace: Namespace},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}},
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
			{APIGroups: []string{rawhop.Group}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}},
		},
	}
	if _, err := rbac.Roles(Namespace).Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	subjects := []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: User}}
	for name, ref := range map[string]rbacv1.RoleRef{
		"bench-exec":         {APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		"bench-console-user": {APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "console-user"},
	} {
		rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: Namespace}, RoleRef: ref, Subjects: subjects}
		if _, err := rbac.RoleBindings(Namespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	cfg, err := e.CP.UserConfig(User, "devs")
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 1000, 2000
	e.User = cfg
	e.Consoles, err = versioned.NewForConfig(cfg)
	return err
}

// adminClient reaches both servers directly, as system:masters, verifying
// their serving certificates with the CAs ServingCert wrote.
func (e *Env) adminClient() error {
	admin, err := rest.TLSConfigFor(e.CP.AdminConfig())
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	for _, svc := range []string{framework.ConsoleService + "-" + framework.ConsoleNamespace, rawhopService + "-" + rawhopNamespace} {
		b, err := os.ReadFile(filepath.Join(e.CP.Dir, "pki", svc+"-ca.crt"))
		if err != nil {
			return err
		}
		roots.AppendCertsFromPEM(b)
	}
	tlsCfg := &tls.Config{RootCAs: roots, Certificates: admin.Certificates, GetClientCertificate: admin.GetClientCertificate, MinVersion: tls.VersionTLS12}
	e.Admin = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}, Timeout: 5 * time.Minute}
	e.kubeAdmin, err = rest.HTTPClientFor(e.CP.AdminConfig())
	return err
}

func (e *Env) kubeAdminClient() (*http.Client, error) { return e.kubeAdmin, nil }

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
