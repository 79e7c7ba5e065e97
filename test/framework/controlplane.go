// Package framework runs a real local Kubernetes control plane for tests and
// for `make run`: etcd, kube-apiserver (RBAC, front-proxy, aggregator, audit)
// and a kwok node that serves exec by running local commands. It needs only
// the binaries hack/build-tools.sh builds; everything else (ports,
// certificates, data) is made per run in a temp dir.
package framework

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Options tune a plane. The zero value is a sound default.
type Options struct {
	// Dir keeps data, certificates, kubeconfigs and logs. Empty means a new
	// temp dir, removed by Stop.
	Dir string
	// RequestTimeout is kube-apiserver's --request-timeout (default 60s).
	RequestTimeout time.Duration
	// ExecDir is the working directory of commands kwok runs for exec
	// (default Dir/exec).
	ExecDir string
	// Logf reports progress; nil is silent.
	Logf func(format string, args ...any)
	// ExtraAPIServerArgs are appended to kube-apiserver's flags.
	ExtraAPIServerArgs []string
}

// ControlPlane is a running plane. Stop it, always: t.Cleanup(cp.Stop).
type ControlPlane struct {
	Dir string
	// URL is kube-apiserver's address, https://127.0.0.1:PORT.
	URL string
	// CA signs kube-apiserver's and the node's serving certificates and every
	// client certificate kube-apiserver accepts.
	CA *CA
	// FrontProxyCA signs the front-proxy client certificate the aggregator
	// presents; aggregated servers trust it for X-Remote-* headers.
	FrontProxyCA *CA
	// AuditLogPath is kube-apiserver's audit log (JSON lines, Metadata level).
	AuditLogPath string
	// NodeName is the kwok node pods run on.
	NodeName string
	// ExecDir is where exec'd commands run.
	ExecDir string
	// AdminKubeconfig is a kubeconfig file for system:masters.
	AdminKubeconfig string

	opts       Options
	ownDir     bool
	admin      *rest.Config
	frontProxy *KeyPair
	etcd       *Process
	apiserver  *Process
	kwok       *Process
	etcdURL    string

	certsMu      sync.Mutex
	servingCerts map[string]servingCert
}

// Start brings up etcd, kube-apiserver and a kwok node, and returns once a pod
// could be scheduled and exec'd. On error, whatever started is stopped.
func Start(ctx context.Context, opts Options) (cp *ControlPlane, err error) {
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 60 * time.Second
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	bins, err := toolBinaries()
	if err != nil {
		return nil, err
	}
	cp = &ControlPlane{opts: opts, Dir: opts.Dir, NodeName: "kwok-node"}
	if cp.Dir == "" {
		if cp.Dir, err = os.MkdirTemp("", "console-plane-"); err != nil {
			return nil, err
		}
		cp.ownDir = true
	}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()
	for _, d := range []string{"pki", "etcd", "logs", "exec"} {
		if err := os.MkdirAll(filepath.Join(cp.Dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	cp.ExecDir = opts.ExecDir
	if cp.ExecDir == "" {
		cp.ExecDir = filepath.Join(cp.Dir, "exec")
	}
	start := time.Now()
	if err := cp.makePKI(); err != nil {
		return nil, fmt.Errorf("making certificates: %w", err)
	}
	if err := cp.startEtcd(ctx, bins.etcd); err != nil {
		return nil, err
	}
	opts.Logf("etcd ready at %s (%s)", cp.etcdURL, time.Since(start).Round(time.Millisecond))
	if err := cp.startAPIServer(ctx, bins.kubeAPIServer); err != nil {
		return nil, err
	}
	opts.Logf("kube-apiserver ready at %s (%s)", cp.URL, time.Since(start).Round(time.Millisecond))
	if err := cp.startKwok(ctx, bins); err != nil {
		return nil, err
	}
	opts.Logf("kwok node %s ready (%s)", cp.NodeName, time.Since(start).Round(time.Millisecond))
	return cp, nil
}

// Stop ends kube-apiserver before etcd (the other order once hung it), then
// the node, and removes the temp dir it made. It is safe to call twice.
func (cp *ControlPlane) Stop() {
	for _, p := range []*Process{cp.kwok, cp.apiserver, cp.etcd} {
		if p != nil {
			if err := p.Stop(15 * time.Second); err != nil {
				cp.opts.Logf("stopping: %v", err)
			}
		}
	}
	if cp.ownDir && cp.Dir != "" {
		_ = os.RemoveAll(cp.Dir)
	}
}

// Processes lists the plane's live children's PIDs, for leak checks.
func (cp *ControlPlane) Processes() map[string]int {
	out := map[string]int{}
	for _, p := range []*Process{cp.etcd, cp.apiserver, cp.kwok} {
		if p != nil && !p.Exited() {
			out[p.name] = p.cmd.Process.Pid
		}
	}
	return out
}

// LogTail returns the end of a component's log ("etcd", "kube-apiserver",
// "kwok"), for failure messages.
func (cp *ControlPlane) LogTail(component string, lines int) string {
	for _, p := range []*Process{cp.etcd, cp.apiserver, cp.kwok} {
		if p != nil && p.name == component {
			return p.LogTail(lines)
		}
	}
	return ""
}

func (cp *ControlPlane) pki(name string) string { return filepath.Join(cp.Dir, "pki", name) }

func (cp *ControlPlane) makePKI() error {
	dir := filepath.Join(cp.Dir, "pki")
	var err error
	if cp.CA, err = NewCA(dir, "ca"); err != nil {
		return err
	}
	if cp.FrontProxyCA, err = NewCA(dir, "front-proxy-ca"); err != nil {
		return err
	}
	loopback := []net.IP{net.ParseIP("127.0.0.1")}
	if _, err = cp.CA.Issue(dir, "apiserver", CertSpec{
		CommonName: "kube-apiserver", Server: true, IPs: append(loopback, net.ParseIP("10.0.0.1")),
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
	}); err != nil {
		return err
	}
	if _, err = cp.CA.Issue(dir, "apiserver-kubelet-client", CertSpec{
		CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}, Client: true,
	}); err != nil {
		return err
	}
	if _, err = cp.CA.Issue(dir, "kubelet", CertSpec{CommonName: cp.NodeName, Server: true, IPs: loopback, DNSNames: []string{"localhost"}}); err != nil {
		return err
	}
	if cp.frontProxy, err = cp.FrontProxyCA.Issue(dir, "front-proxy-client", CertSpec{CommonName: "front-proxy-client", Client: true}); err != nil {
		return err
	}
	admin, err := cp.CA.Issue(dir, "admin", CertSpec{CommonName: "kubernetes-admin", Organization: []string{"system:masters"}, Client: true})
	if err != nil {
		return err
	}
	if _, _, err = writeServiceAccountKeys(dir); err != nil {
		return err
	}
	cp.admin = cp.certConfig(admin)
	return nil
}

func (cp *ControlPlane) startEtcd(ctx context.Context, bin string) error {
	client, peer := freePort(), freePort()
	cp.etcdURL = "http://127.0.0.1:" + strconv.Itoa(client)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	p, err := StartProcess("etcd", filepath.Join(cp.Dir, "logs"), bin,
		"--name=default",
		"--data-dir="+filepath.Join(cp.Dir, "etcd"),
		"--listen-client-urls="+cp.etcdURL, "--advertise-client-urls="+cp.etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL,
		// Tests throw the data away; fsync only slows them.
		"--unsafe-no-fsync",
		"--log-level=warn",
	)
	if err != nil {
		return err
	}
	cp.etcd = p
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return waitFor(wctx, p, "etcd health", func(ctx context.Context) error {
		return httpOK(ctx, http.DefaultClient, cp.etcdURL+"/health")
	})
}

func (cp *ControlPlane) startAPIServer(ctx context.Context, bin string) error {
	port := freePort()
	cp.URL = "https://127.0.0.1:" + strconv.Itoa(port)
	cp.admin.Host = cp.URL
	cp.AuditLogPath = filepath.Join(cp.Dir, "logs", "audit.log")
	policy := filepath.Join(cp.Dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		return err
	}
	args := []string{
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port=" + strconv.Itoa(port),
		"--etcd-servers=" + cp.etcdURL,
		"--tls-cert-file=" + cp.pki("apiserver.crt"), "--tls-private-key-file=" + cp.pki("apiserver.key"),
		"--client-ca-file=" + cp.CA.CertFile,
		"--authorization-mode=RBAC",
		"--service-account-key-file=" + cp.pki("sa.pub"), "--service-account-signing-key-file=" + cp.pki("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-cluster-ip-range=10.0.0.0/24", "--endpoint-reconciler-type=none",
		"--kubelet-client-certificate=" + cp.pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + cp.pki("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority=" + cp.CA.CertFile,
		"--kubelet-preferred-address-types=InternalIP",
		// The aggregator's front-proxy identity, and the headers it sets.
		"--requestheader-client-ca-file=" + cp.FrontProxyCA.CertFile,
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-uid-headers=X-Remote-Uid",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + cp.frontProxy.CertFile, "--proxy-client-key-file=" + cp.frontProxy.KeyFile,
		// Routing to endpoints cannot reach loopback; an ExternalName
		// Service to localhost can (see RegisterAPIService).
		"--enable-aggregator-routing=false",
		"--audit-policy-file=" + policy, "--audit-log-path=" + cp.AuditLogPath,
		"--request-timeout=" + cp.opts.RequestTimeout.String(),
		"--profiling=false",
	}
	args = append(args, cp.opts.ExtraAPIServerArgs...)
	p, err := StartProcess("kube-apiserver", filepath.Join(cp.Dir, "logs"), bin, args...)
	if err != nil {
		return err
	}
	cp.apiserver = p
	if err := cp.waitAPIServerReady(ctx); err != nil {
		return err
	}
	cp.AdminKubeconfig = filepath.Join(cp.Dir, "admin.kubeconfig")
	return WriteKubeconfig(cp.AdminKubeconfig, cp.admin, "default")
}

func (cp *ControlPlane) startKwok(ctx context.Context, bins binaries) error {
	port := freePort()
	cfg := filepath.Join(cp.Dir, "kwok.yaml")
	if err := writeKwokConfig(cfg, bins.kwokStages, cp.ExecDir); err != nil {
		return err
	}
	p, err := StartProcess("kwok", filepath.Join(cp.Dir, "logs"), bins.kwok,
		"--kubeconfig="+cp.AdminKubeconfig,
		"--config="+cfg,
		"--manage-all-nodes=true",
		"--node-ip=127.0.0.1", "--node-name="+cp.NodeName, "--node-port="+strconv.Itoa(port),
		"--server-address=127.0.0.1:"+strconv.Itoa(port),
		"--tls-cert-file="+cp.pki("kubelet.crt"), "--tls-private-key-file="+cp.pki("kubelet.key"),
	)
	if err != nil {
		return err
	}
	cp.kwok = p
	cs := cp.AdminClient()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:        cp.NodeName,
		Labels:      map[string]string{"type": "kwok", "kubernetes.io/hostname": cp.NodeName},
		Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"},
	}}
	if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating node: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return waitFor(wctx, p, "kwok node Ready", func(ctx context.Context) error {
		n, err := cs.CoreV1().Nodes().Get(ctx, cp.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return errors.New("node not Ready yet")
	})
}

// StopAPIServer stops kube-apiserver alone (for restart tests);
// StartAPIServer brings it back on the same port and data.
func (cp *ControlPlane) StopAPIServer() error {
	return cp.apiserver.Stop(15 * time.Second)
}

// RestartAPIServer starts kube-apiserver again with the same flags.
func (cp *ControlPlane) RestartAPIServer(ctx context.Context) error {
	if !cp.apiserver.Exited() {
		return errors.New("kube-apiserver is still running")
	}
	args := cp.apiserver.cmd.Args[1:]
	p, err := StartProcess("kube-apiserver", filepath.Join(cp.Dir, "logs"), cp.apiserver.cmd.Path, args...)
	if err != nil {
		return err
	}
	cp.apiserver = p
	return cp.waitAPIServerReady(ctx)
}

func (cp *ControlPlane) waitAPIServerReady(ctx context.Context) error {
	client, err := rest.HTTPClientFor(cp.admin)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return waitFor(wctx, cp.apiserver, "kube-apiserver /readyz", func(ctx context.Context) error {
		return httpOK(ctx, client, cp.URL+"/readyz")
	})
}

// AdminConfig is a client config for system:masters.
func (cp *ControlPlane) AdminConfig() *rest.Config { return rest.CopyConfig(cp.admin) }

// AdminClient is a clientset for system:masters.
func (cp *ControlPlane) AdminClient() kubernetes.Interface {
	return kubernetes.NewForConfigOrDie(cp.AdminConfig())
}

func httpOK(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := client.Do(req.WithContext(rctx))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// freePort asks the kernel for a port no one listens on. Another process
// may take it before we do; the plane's start then fails loudly.
func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("no free port on loopback: %v", err))
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
# Reads of leases and health checks drown the rest.
- level: None
  resources:
  - group: coordination.k8s.io
    resources: ["leases"]
- level: None
  nonResourceURLs: ["/readyz*", "/livez*", "/healthz*"]
- level: Metadata
`

func writeKwokConfig(path, stagesDir, execDir string) error {
	entries, err := os.ReadDir(stagesDir)
	if err != nil {
		return fmt.Errorf("reading kwok stages (run hack/build-tools.sh): %w", err)
	}
	var docs []string
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(stagesDir, e.Name()))
		if err != nil {
			return err
		}
		docs = append(docs, strings.TrimSpace(string(b)))
	}
	// Every container of every pod on the node execs as a local process in
	// execDir: kwok's simulated containers have no filesystem of their own.
	docs = append(docs, fmt.Sprintf(`apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata:
  name: local
spec:
  execs:
  - local:
      workDir: %q
      envs:
      - name: TERM
        value: xterm-256color
      - name: PS1
        value: '\u@kwok:\w\$ '`, execDir))
	return os.WriteFile(path, []byte(strings.Join(docs, "\n---\n")+"\n"), 0o600)
}
