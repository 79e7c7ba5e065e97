package framework

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"

	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

func (cp *ControlPlane) certConfig(kp *KeyPair) *rest.Config {
	return &rest.Config{
		Host: cp.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   cp.CA.CertPEM,
			CertData: kp.CertPEM,
			KeyData:  kp.KeyPEM,
		},
		QPS:   200,
		Burst: 400,
	}
}

// UserConfig is a client config that authenticates as name in groups with a
// client certificate, the way a person's kubeconfig would. The user gets
// system:authenticated from kube-apiserver like any other.
func (cp *ControlPlane) UserConfig(name string, groups ...string) (*rest.Config, error) {
	kp, err := cp.CA.Issue("", "", CertSpec{CommonName: name, Organization: groups, Client: true})
	if err != nil {
		return nil, err
	}
	cfg := cp.certConfig(kp)
	cfg.Host = cp.URL
	return cfg, nil
}

// UserClient is UserConfig as a clientset; it panics on error (tests only).
func (cp *ControlPlane) UserClient(name string, groups ...string) kubernetes.Interface {
	cfg, err := cp.UserConfig(name, groups...)
	if err != nil {
		panic(err)
	}
	return kubernetes.NewForConfigOrDie(cfg)
}

// IdentityConfig authenticates as any identity, UID and extra included, which
// client certificates cannot carry: it presents the front-proxy client
// certificate and sets the X-Remote-* headers, as an authenticating proxy in
// front of kube-apiserver would.
func (cp *ControlPlane) IdentityConfig(u user.Info) *rest.Config {
	cfg := &rest.Config{
		Host: cp.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   cp.CA.CertPEM,
			CertData: cp.frontProxy.CertPEM,
			KeyData:  cp.frontProxy.KeyPEM,
		},
		QPS: 200, Burst: 400,
	}
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return identityHeaders{rt: rt, user: u}
	})
	return cfg
}

type identityHeaders struct {
	rt   http.RoundTripper
	user user.Info
}

func (h identityHeaders) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	for k, v := range IdentityHeader(h.user) {
		req.Header[k] = v
	}
	return h.rt.RoundTrip(req)
}

// IdentityHeader is what an authenticating proxy sends kube-apiserver for u.
func IdentityHeader(u user.Info) http.Header {
	h := http.Header{}
	h.Set("X-Remote-User", u.GetName())
	if uid := u.GetUID(); uid != "" {
		h.Set("X-Remote-Uid", uid)
	}
	for _, g := range u.GetGroups() {
		h.Add("X-Remote-Group", g)
	}
	keys := make([]string, 0, len(u.GetExtra()))
	for k := range u.GetExtra() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range u.GetExtra()[k] {
			h.Add("X-Remote-Extra-"+k, v)
		}
	}
	return h
}

// WriteKubeconfig writes cfg (certificate or token auth) as a kubeconfig
// whose context selects namespace.
func WriteKubeconfig(path string, cfg *rest.Config, namespace string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["local"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["user"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData,
		ClientKeyData:         cfg.KeyData,
		Token:                 cfg.BearerToken,
	}
	kc.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "user", Namespace: namespace}
	kc.CurrentContext = "local"
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return clientcmd.WriteToFile(*kc, path)
}

type binaries struct {
	etcd, kubeAPIServer, kubectl, kwok, kwokStages string
}

// ToolsDir is where hack/build-tools.sh puts the plane's binaries:
// $CONSOLE_TOOLS_DIR, else _output/tools in the repository.
func ToolsDir() string {
	if d := os.Getenv("CONSOLE_TOOLS_DIR"); d != "" {
		return d
	}
	return filepath.Join(RepoRoot(), "_output", "tools")
}

// RepoRoot is the repository's top folder, found from this source file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// KubectlPath is the kubectl built from the pinned Kubernetes module.
func KubectlPath() string { return filepath.Join(ToolsDir(), "bin", "kubectl") }

func toolBinaries() (binaries, error) {
	dir := ToolsDir()
	b := binaries{
		etcd:          filepath.Join(dir, "bin", "etcd"),
		kubeAPIServer: filepath.Join(dir, "bin", "kube-apiserver"),
		kubectl:       filepath.Join(dir, "bin", "kubectl"),
		kwok:          filepath.Join(dir, "bin", "kwok"),
		kwokStages:    filepath.Join(dir, "kwok-stages"),
	}
	for _, p := range []string{b.etcd, b.kubeAPIServer, b.kwok, b.kwokStages} {
		if _, err := os.Stat(p); err != nil {
			return b, fmt.Errorf("%s is missing: build the local control plane with `make tools` (hack/build-tools.sh): %w", p, err)
		}
	}
	return b, nil
}
