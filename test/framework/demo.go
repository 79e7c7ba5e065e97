package framework

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Demo is what `make run` shows: console-apiserver behind the aggregator, a
// demo pod, and a demo user's kubectl proxy to open the page through.
type Demo struct {
	User, Namespace, Pod string
	// URL opens a terminal in the demo pod through the proxy.
	URL string
	// Kubeconfig is the demo user's, with the demo namespace selected.
	Kubeconfig string
	// CreateRawExample is a kubectl command that creates a session.
	CreateRawExample string

	server, proxy *Process
	inProcess     *RunningServer
	exited        chan struct{}
}

// StartDemo runs console-apiserver on the plane (the binary, or in this
// process when binary is "") and sets up the demo user, who holds only the
// shipped console-user role plus pods/exec and read access to pods, in the
// demo namespace, behind a kubectl proxy on proxyPort (0: any free port).
func StartDemo(ctx context.Context, cp *ControlPlane, binary string, proxyPort int) (*Demo, error) {
	d := &Demo{User: "demo", Namespace: "demo", Pod: "demo", exited: make(chan struct{})}
	logs := filepath.Join(cp.Dir, "logs")
	if proxyPort == 0 {
		proxyPort = freePort()
	}
	// The page is served through the proxy, so that is the browser's origin.
	origins := fmt.Sprintf("--allowed-origins=http://127.0.0.1:%d,http://localhost:%d", proxyPort, proxyPort)
	fail := func(err error) (*Demo, error) { d.Stop(); return nil, err }
	var serverDone <-chan struct{}
	if binary == "" {
		rs, err := cp.RunConsoleServer(ctx, "demo", origins)
		if err != nil {
			return nil, err
		}
		d.inProcess = rs
		serverDone = rs.Done()
	} else {
		srv, err := cp.PrepareConsoleServer(ctx, "demo", "--v=2", origins)
		if err != nil {
			return nil, err
		}
		if d.server, err = StartProcess("console-apiserver", logs, binary, srv.Args...); err != nil {
			return nil, err
		}
		serverDone = d.server.Done()
		if err := cp.RegisterConsoleAPIService(ctx, srv); err != nil {
			return fail(fmt.Errorf("%w\nconsole-apiserver log:\n%s", err, d.server.LogTail(20)))
		}
	}
	if _, err := cp.CreatePod(ctx, PodSpec{Namespace: d.Namespace, Name: d.Pod, Containers: []string{"shell"}}); err != nil {
		return fail(err)
	}
	if err := grantDemoUser(ctx, cp, d.Namespace, d.User); err != nil {
		return fail(err)
	}
	cfg, err := cp.UserConfig(d.User, "demo-users")
	if err != nil {
		return fail(err)
	}
	d.Kubeconfig = filepath.Join(cp.Dir, "demo.kubeconfig")
	if err := WriteKubeconfig(d.Kubeconfig, cfg, d.Namespace); err != nil {
		return fail(err)
	}
	if d.proxy, err = StartProcess("kubectl-proxy", logs, KubectlPath(), "proxy",
		"--kubeconfig="+d.Kubeconfig, "--address=127.0.0.1", "--port="+strconv.Itoa(proxyPort)); err != nil {
		return fail(err)
	}
	base := "http://127.0.0.1:" + strconv.Itoa(proxyPort)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := waitFor(wctx, d.proxy, "kubectl proxy", func(ctx context.Context) error {
		return httpOK(ctx, http.DefaultClient, base+"/apis/"+ConsoleGroup+"/"+ConsoleVersion)
	}); err != nil {
		return fail(err)
	}
	d.URL = fmt.Sprintf("%s/apis/%s/%s/namespaces/%s/pods/%s/console/", base, ConsoleGroup, ConsoleVersion, d.Namespace, d.Pod)
	d.CreateRawExample = fmt.Sprintf(`echo '{"apiVersion":"%s/%s","kind":"ShellSession"}' | kubectl create --raw /apis/%s/%s/namespaces/%s/pods/%s/shell -f -`,
		ConsoleGroup, ConsoleVersion, ConsoleGroup, ConsoleVersion, d.Namespace, d.Pod)
	go func() {
		select {
		case <-serverDone:
		case <-d.proxy.Done():
		}
		close(d.exited)
	}()
	return d, nil
}

// Exited is closed when the server or the proxy exits.
func (d *Demo) Exited() <-chan struct{} { return d.exited }

// Stop stops the proxy, then the server (which tells its terminals).
func (d *Demo) Stop() {
	for _, p := range []*Process{d.proxy, d.server} {
		if p != nil {
			_ = p.Stop(20 * time.Second)
		}
	}
	if d.inProcess != nil {
		d.inProcess.Stop()
	}
}

// grantDemoUser binds the shipped console-user ClusterRole in namespace, and
// what a terminal user has anyway: pods/exec and reading pods.
func grantDemoUser(ctx context.Context, cp *ControlPlane, namespace, user string) error {
	rbac := cp.AdminClient().RbacV1()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "exec-and-read-pods", Namespace: namespace},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}},
		},
	}
	if _, err := rbac.Roles(namespace).Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	subject := []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}}
	for name, ref := range map[string]rbacv1.RoleRef{
		"demo-console-user": {APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "console-user"},
		"demo-exec":         {APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
	} {
		rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}, RoleRef: ref, Subjects: subject}
		if _, err := rbac.RoleBindings(namespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}
