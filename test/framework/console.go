package framework

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// The names artifacts/deploy uses; the plane runs the server as that
// ServiceAccount, with the shipped RBAC, so tests prove what ships.
const (
	ConsoleNamespace      = "kubecube-console"
	ConsoleServiceAccount = "console-apiserver"
	ConsoleService        = "console-apiserver"
	ConsoleGroup          = "consoles.kubecube.io"
	ConsoleVersion        = "v1alpha1"
)

// ConsoleServer is what a console-apiserver on loopback needs: flags, and
// the APIService to register once it listens.
type ConsoleServer struct {
	// Args are console-apiserver's flags.
	Args []string
	Port int
	// Kubeconfig is the ServiceAccount's kubeconfig the server runs with.
	Kubeconfig string
	caBundle   []byte
}

// ConsoleKubeconfig applies the shipped namespace and server RBAC
// (artifacts/deploy 00-20), mints a token for the server's ServiceAccount
// and writes a kubeconfig with it to path: what console-apiserver runs with
// against this cluster, as its home cluster or as a member.
func (cp *ControlPlane) ConsoleKubeconfig(ctx context.Context, path string) error {
	deploy := filepath.Join(RepoRoot(), "artifacts", "deploy")
	for _, f := range []string{"00-namespace.yaml", "10-rbac-server.yaml", "20-rbac-users.yaml"} {
		b, err := os.ReadFile(filepath.Join(deploy, f))
		if err != nil {
			return err
		}
		if err := cp.Apply(ctx, b); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
	}
	if err := cp.CreateNamespace(ctx, ConsoleNamespace); err != nil {
		return err
	}
	token, err := cp.AdminClient().CoreV1().ServiceAccounts(ConsoleNamespace).CreateToken(ctx, ConsoleServiceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(24 * 3600))}},
		metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token for the server's service account: %w", err)
	}
	cfg := &rest.Config{Host: cp.URL, BearerToken: token.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAData: cp.CA.CertPEM}}
	return WriteKubeconfig(path, cfg, ConsoleNamespace)
}

// PrepareConsoleServer sets up what a console-apiserver on loopback needs:
// the ServiceAccount kubeconfig (ConsoleKubeconfig), a serving certificate for
// the Service the APIService names, a port and flags. name distinguishes
// several servers (replicas) in one plane.
func (cp *ControlPlane) PrepareConsoleServer(ctx context.Context, name string, extraArgs ...string) (*ConsoleServer, error) {
	dir := filepath.Join(cp.Dir, "console-"+name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := cp.ConsoleKubeconfig(ctx, kubeconfig); err != nil {
		return nil, err
	}
	kp, caBundle, err := cp.ServingCert(ConsoleService, ConsoleNamespace)
	if err != nil {
		return nil, err
	}
	port := freePort()
	args := []string{
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + kp.CertFile,
		"--tls-private-key-file=" + kp.KeyFile,
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
	}
	return &ConsoleServer{Args: append(args, extraArgs...), Port: port, Kubeconfig: kubeconfig, caBundle: caBundle}, nil
}

// RegisterConsoleAPIService points v1alpha1.consoles.kubecube.io at s and
// waits until the aggregator reports it Available.
func (cp *ControlPlane) RegisterConsoleAPIService(ctx context.Context, s *ConsoleServer) error {
	return cp.RegisterAPIService(ctx, AggregatedServer{
		Group: ConsoleGroup, Version: ConsoleVersion,
		Namespace: ConsoleNamespace, Service: ConsoleService,
		Port: s.Port, CABundle: s.caBundle,
	})
}

func ptr[T any](v T) *T { return &v }
