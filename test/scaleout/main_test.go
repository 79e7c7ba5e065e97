// Package scaleout runs three console-apiserver replicas, as subprocesses
// sharing one serving certificate, behind a real layer-4 round-robin load
// balancer (haproxy in TCP mode) that the APIService points at, and checks
// that any replica serves any session: create on one, bind on another, over
// WebSocket and over the SockJS fallback transports; single use, identity
// binding across replicas; and what a replica's death does.
package scaleout

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authnuser "k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/client-go/rest"

	consolesv1alpha1 "github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
	"github.com/kubecube-io/console-apiserver/pkg/generated/clientset/versioned"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

const nReplicas = 3

// goawayChance stands in for what spreads a real aggregator's requests over
// replicas: its HTTP/2 connection to the Service carries every non-upgrade
// request, so a layer-4 balancer sees one connection, and only reconnections
// (several kube-apiservers, restarts, GOAWAY) move requests to another
// replica. A high chance here makes each session's requests visit all three.
const goawayChance = "0.3"

var (
	cp       *framework.ControlPlane
	binary   string
	caFile   string
	caPEM    []byte
	logDir   string
	lbPort   int
	lb       *framework.Process
	replicas []*replica
)

// replica is one console-apiserver process.
type replica struct {
	name   string
	port   int
	args   []string
	proc   *framework.Process
	direct *http.Client // to its secure port, as system:masters
}

func (r *replica) logPath() string { return filepath.Join(logDir, r.name+".log") }

func (r *replica) start() error {
	p, err := framework.StartProcess(r.name, logDir, binary, r.args...)
	if err != nil {
		return err
	}
	r.proc = p
	return nil
}

// kill ends the replica at once, as a node failure or the OOM killer would.
func (r *replica) kill() {
	_ = syscall.Kill(-r.proc.PID(), syscall.SIGKILL)
	<-r.proc.Done()
}

func (r *replica) url(path string) string {
	return "https://127.0.0.1:" + strconv.Itoa(r.port) + path
}

func (r *replica) waitReady(ctx context.Context) error {
	var last error
	for ctx.Err() == nil {
		if r.proc.Exited() {
			return fmt.Errorf("%s exited:\n%s", r.name, r.proc.LogTail(40))
		}
		// /readyz turns 200 before the authenticators have loaded
		// kube-apiserver's CAs from kube-system; until they have, the
		// aggregator's requests would be anonymous. Ready means both.
		err := r.check("/readyz", nil)
		if err == nil {
			err = r.check("/apis/consoles.kubecube.io/v1alpha1", nil)
		}
		if err == nil {
			err = r.check("/apis/consoles.kubecube.io/v1alpha1", frontProxy)
		}
		if err == nil {
			return nil
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready: %v\n%s", r.name, last, r.proc.LogTail(40))
}

// check GETs path on the replica as system:masters, or through its
// front-proxy authenticator when via is set.
func (r *replica) check(path string, via *http.Client) error {
	client, req := r.direct, mustRequest(r.url(path))
	if via != nil {
		client = via
		req.Header.Set("X-Remote-User", "readiness-probe")
		req.Header.Set("X-Remote-Group", "system:masters")
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return nil
}

func mustRequest(url string) *http.Request {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		panic(err)
	}
	return req
}

// frontProxy presents the aggregator's client certificate.
var frontProxy *http.Client

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
		return 1
	}
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		// Debian installs it in /usr/sbin, outside a user's PATH.
		if _, serr := os.Stat("/usr/sbin/haproxy"); serr != nil {
			return fail("haproxy is not installed (the load balancer of these tests): run hack/install-test-deps.sh")
		}
		haproxy = "/usr/sbin/haproxy"
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tmp, err := os.MkdirTemp("", "console-scaleout-")
	if err != nil {
		return fail("%v", err)
	}
	defer os.RemoveAll(tmp)

	start := time.Now()
	binary = filepath.Join(tmp, "console-apiserver")
	build := exec.Command("go", "build", "-o", binary, "./cmd/console-apiserver")
	build.Dir = framework.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return fail("building console-apiserver: %v\n%s", err, out)
	}
	fmt.Printf("built console-apiserver (%s)\n", time.Since(start).Round(time.Millisecond))

	// An audit policy that keeps Leases in the server's namespace (the
	// framework's drops all Leases): the measurements count every call the
	// replicas make.
	policy := filepath.Join(tmp, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		return fail("%v", err)
	}
	logf := func(f string, a ...any) { fmt.Printf(f+"\n", a...) }
	cp, err = framework.Start(ctx, framework.Options{Logf: logf, ExtraAPIServerArgs: []string{"--audit-policy-file=" + policy}})
	if err != nil {
		return fail("starting the control plane: %v", err)
	}
	defer cp.Stop()
	logDir = filepath.Join(cp.Dir, "logs")

	preps := make([]*framework.ConsoleServer, nReplicas)
	for i := range preps {
		if preps[i], err = cp.PrepareConsoleServer(ctx, fmt.Sprintf("replica-%d", i)); err != nil {
			return fail("preparing replica %d: %v", i, err)
		}
	}
	// One serving certificate for all: the APIService has one caBundle.
	// Copied aside, so that nothing issued later overwrites the files under
	// running replicas (which reload them).
	kp, ca, err := cp.ServingCert(framework.ConsoleService, framework.ConsoleNamespace)
	if err != nil {
		return fail("%v", err)
	}
	caPEM = ca
	pki := filepath.Join(cp.Dir, "pki")
	caFile = filepath.Join(pki, "scaleout-serving-ca.crt")
	certFile, keyFile := filepath.Join(pki, "scaleout-serving.crt"), filepath.Join(pki, "scaleout-serving.key")
	for path, b := range map[string][]byte{caFile: caPEM, certFile: kp.CertPEM, keyFile: kp.KeyPEM} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return fail("%v", err)
		}
	}
	admin := cp.AdminConfig()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	adminCert, err := tls.X509KeyPair(admin.CertData, admin.KeyData)
	if err != nil {
		return fail("%v", err)
	}
	for i, prep := range preps {
		name := fmt.Sprintf("replica-%d", i)
		args := []string{}
		for _, a := range prep.Args {
			switch {
			case strings.HasPrefix(a, "--tls-cert-file="):
				a = "--tls-cert-file=" + certFile
			case strings.HasPrefix(a, "--tls-private-key-file="):
				a = "--tls-private-key-file=" + keyFile
			}
			args = append(args, a)
		}
		args = append(args,
			"--session-store=kube",
			"--session-namespace="+framework.ConsoleNamespace,
			"--peer-address=127.0.0.1:"+strconv.Itoa(prep.Port),
			"--peer-ca-file="+caFile,
			"--replica-name="+name,
			"--goaway-chance="+goawayChance,
			"--session-ttl=30s",
			"--max-pending-sessions-per-user=100",
			"--idle-timeout=0",
		)
		if frontProxy == nil {
			fp := cp.IdentityConfig(&authnuser.DefaultInfo{Name: "readiness-probe"})
			fpCert, err := tls.X509KeyPair(fp.CertData, fp.KeyData)
			if err != nil {
				return fail("%v", err)
			}
			frontProxy = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{fpCert}},
			}}
		}
		r := &replica{name: name, port: prep.Port, args: args, direct: &http.Client{
			Timeout:   10 * time.Second,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{adminCert}}},
		}}
		if err := r.start(); err != nil {
			return fail("%v", err)
		}
		defer func() { _ = r.proc.Stop(15 * time.Second) }()
		replicas = append(replicas, r)
	}
	for _, r := range replicas {
		wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
		err := r.waitReady(wctx)
		wcancel()
		if err != nil {
			return fail("%v", err)
		}
	}
	fmt.Printf("%d replicas ready (%s)\n", nReplicas, time.Since(start).Round(time.Millisecond))

	lbPort = freePort()
	cfg := filepath.Join(cp.Dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(haproxyConfig(lbPort)), 0o600); err != nil {
		return fail("%v", err)
	}
	if lb, err = framework.StartProcess("haproxy", logDir, haproxy, "-db", "-f", cfg); err != nil {
		return fail("%v", err)
	}
	defer func() { _ = lb.Stop(5 * time.Second) }()
	if err := waitListening(ctx, lb, lbPort); err != nil {
		return fail("%v", err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	err = waitBalanced(wctx)
	wcancel()
	if err != nil {
		return fail("%v", err)
	}
	if err := cp.RegisterAPIService(ctx, framework.AggregatedServer{
		Group: framework.ConsoleGroup, Version: framework.ConsoleVersion,
		Namespace: framework.ConsoleNamespace, Service: framework.ConsoleService,
		Port: lbPort, CABundle: caPEM,
	}); err != nil {
		return fail("registering the APIService: %v", err)
	}
	fmt.Printf("APIService available through haproxy on :%d (%s)\n", lbPort, time.Since(start).Round(time.Millisecond))
	code := m.Run()
	if code != 0 {
		for _, r := range replicas {
			fmt.Printf("--- %s log tail\n%s\n", r.name, r.proc.LogTail(30))
		}
		fmt.Printf("--- haproxy log tail\n%s\n", lb.LogTail(30))
	}
	return code
}

// haproxyConfig balances TCP connections round-robin over the replicas.
// Health checks (a TCP connect every 500 ms) take a dead replica out within
// a second; until then, a failed connect is retried on another server.
func haproxyConfig(port int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
  maxconn 4096
  log stdout format raw local0 info
  stats socket %[2]s mode 600 level user
defaults
  mode tcp
  log global
  option tcplog
  option redispatch
  retries 3
  timeout connect 2s
  timeout client 1h
  timeout server 1h
frontend console
  bind 127.0.0.1:%[1]d
  default_backend replicas
backend replicas
  balance roundrobin
`, port, haproxySocket())
	for i, r := range replicas {
		fmt.Fprintf(&b, "  server r%d 127.0.0.1:%d check inter 500ms fall 2 rise 2\n", i, r.port)
	}
	return b.String()
}

func haproxySocket() string { return filepath.Join(cp.Dir, "haproxy.sock") }

// waitBalanced waits until haproxy's health checks count every replica in.
func waitBalanced(ctx context.Context) error {
	var last string
	for ctx.Err() == nil {
		c, err := net.Dial("unix", haproxySocket())
		if err == nil {
			_, _ = c.Write([]byte("show stat\n"))
			b, _ := io.ReadAll(c)
			c.Close()
			up := 0
			for _, line := range strings.Split(string(b), "\n") {
				f := strings.Split(line, ",")
				// pxname,svname,...,status is the 18th field.
				if len(f) > 17 && f[0] == "replicas" && strings.HasPrefix(f[1], "r") && f[17] == "UP" {
					up++
				}
			}
			if up == nReplicas {
				return nil
			}
			last = fmt.Sprintf("%d of %d replicas UP", up, nReplicas)
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("haproxy: %s", last)
}

const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  resources:
  - group: coordination.k8s.io
    resources: ["leases"]
  namespaces: ["kube-node-lease", "kube-system"]
- level: None
  nonResourceURLs: ["/readyz*", "/livez*", "/healthz*"]
- level: Metadata
`

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitListening(ctx context.Context, p *framework.Process, port int) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if p.Exited() {
			return fmt.Errorf("haproxy exited:\n%s", p.LogTail(20))
		}
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("haproxy not listening on %d:\n%s", port, p.LogTail(20))
}

// user is a person with a client certificate, talking to kube-apiserver.
type user struct {
	name     string
	cfg      *rest.Config
	consoles versioned.Interface
}

func newUser(t *testing.T, name string) *user {
	t.Helper()
	cfg, err := cp.UserConfig(name, "devs")
	if err != nil {
		t.Fatal(err)
	}
	return &user{name: name, cfg: cfg, consoles: versioned.NewForConfigOrDie(cfg)}
}

// podFor makes a running pod in a namespace named after the test and lets
// each of users open terminals and exec there.
func podFor(t *testing.T, users ...string) (namespace string) {
	t.Helper()
	namespace = strings.Trim(strings.ToLower(regexp.MustCompile(`[^a-zA-Z0-9]+`).ReplaceAllString(t.Name(), "-")), "-")
	if len(namespace) > 50 {
		namespace = namespace[:50]
	}
	ctx := t.Context()
	if _, err := cp.CreatePod(ctx, framework.PodSpec{Namespace: namespace, Name: "app"}); err != nil {
		t.Fatal(err)
	}
	rbac := cp.AdminClient().RbacV1()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "exec", Namespace: namespace},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}}},
	}
	if _, err := rbac.Roles(namespace).Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for _, u := range users {
		subjects := []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: u}}
		for _, ref := range []rbacv1.RoleRef{
			{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "exec"},
			{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "console-user"},
		} {
			rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: u + "-" + ref.Name, Namespace: namespace}, RoleRef: ref, Subjects: subjects}
			if _, err := rbac.RoleBindings(namespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}
	return namespace
}

// createShell creates a session, retrying on 503 as a client would when the
// aggregator loses its connection to a replica mid-request.
func createShell(ctx context.Context, u *user, namespace string, command ...string) (*consolesv1alpha1.ShellSession, error) {
	var last error
	for attempt := 0; attempt < 8; attempt++ {
		s, err := u.consoles.ConsolesV1alpha1().Pods(namespace).CreateShell(ctx, "app",
			&consolesv1alpha1.ShellSession{Spec: consolesv1alpha1.ShellSessionSpec{Command: command}}, metav1.CreateOptions{})
		if err == nil || !apierrors.IsServiceUnavailable(err) {
			return s, err
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 200 * time.Millisecond):
		}
	}
	return nil, last
}

func open(t *testing.T, ctx context.Context, u *user, namespace string, transport framework.Transport) *framework.Terminal {
	t.Helper()
	term, err := framework.OpenTerminal(ctx, u.cfg, namespace, "app", framework.TerminalOptions{Transport: transport})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(term.Close)
	return term
}

// logLines returns the lines of r's log that contain every one of parts.
func (r *replica) logLines(parts ...string) []string {
	f, err := os.Open(r.logPath())
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
scan:
	for sc.Scan() {
		line := sc.Text()
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue scan
			}
		}
		out = append(out, line)
	}
	return out
}

// whoLogged waits until exactly one replica has logged a line with every
// one of parts, and returns it: the replica that did the thing.
func whoLogged(t *testing.T, parts ...string) *replica {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var found []*replica
		for _, r := range replicas {
			if len(r.logLines(parts...)) > 0 {
				found = append(found, r)
			}
		}
		if len(found) == 1 {
			return found[0]
		}
		if len(found) > 1 || time.Now().After(deadline) {
			names := []string{}
			for _, r := range found {
				names = append(names, r.name)
			}
			t.Fatalf("replicas logging %q: %v, want exactly one", parts, names)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metric reads one sample of r's /metrics (sum over label sets matching
// every labels fragment).
func (r *replica) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	resp, err := r.direct.Get(r.url("/metrics"))
	if err != nil {
		t.Fatalf("%s /metrics: %v", r.name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return sumMetric(string(b), name, labels...)
}

func sumMetric(text, name string, labels ...string) float64 {
	sum := 0.0
lines:
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue lines
			}
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}
