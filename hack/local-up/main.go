// Command local-up runs the local control plane for people: etcd,
// kube-apiserver and a kwok node, and with --console, console-apiserver
// registered behind the aggregator plus a demo namespace, pod and user with a
// kubectl proxy in front. It stops everything on Ctrl-C or SIGTERM.
//
// hack/local-up.sh and `make run` call it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kubecube-io/console-apiserver/test/framework"
)

func main() {
	dir := flag.String("dir", filepath.Join(framework.RepoRoot(), "_output", "local-up"), "Folder for the plane's data, certificates, kubeconfigs and logs (wiped at start).")
	console := flag.Bool("console", false, "Also run console-apiserver (--console-binary) behind the aggregator, with a demo pod and user behind kubectl proxy.")
	consoleBinary := flag.String("console-binary", filepath.Join(framework.RepoRoot(), "_output", "bin", "console-apiserver"), "console-apiserver binary to run with --console.")
	proxyPort := flag.Int("proxy-port", 8001, "Port of the demo user's kubectl proxy on 127.0.0.1 (0: any free port).")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *dir, *console, *consoleBinary, *proxyPort); err != nil {
		fmt.Fprintln(os.Stderr, "local-up:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dir string, console bool, consoleBinary string, proxyPort int) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	start := time.Now()
	logf := func(f string, a ...any) { fmt.Printf("  "+f+"\n", a...) }
	fmt.Println("Starting the local control plane (etcd, kube-apiserver, kwok node)...")
	cp, err := framework.Start(ctx, framework.Options{Dir: dir, Logf: logf})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("\nStopping...")
		cp.Stop()
		fmt.Println("Stopped; nothing is left running.")
	}()

	var demo *framework.Demo
	if console {
		if demo, err = framework.StartDemo(ctx, cp, consoleBinary, proxyPort); err != nil {
			return err
		}
		defer demo.Stop()
	}

	fmt.Printf("\nReady in %s. Logs and kubeconfigs: %s\n\n", time.Since(start).Round(100*time.Millisecond), dir)
	if demo != nil {
		fmt.Printf("Open a terminal in the demo pod (as user %q):\n\n    %s\n\n", demo.User, demo.URL)
		fmt.Printf("Note: kwok simulates the pod; its shell is a real process on this machine, running as %s.\n\n", currentUser())
		fmt.Printf("As the demo user, from another shell:\n\n    export KUBECONFIG=%s\n    kubectl get pods\n    %s\n\n",
			demo.Kubeconfig, demo.CreateRawExample)
		fmt.Printf("Administration (system:masters):\n\n    export KUBECONFIG=%s\n\n", cp.AdminKubeconfig)
	} else {
		fmt.Printf("    export KUBECONFIG=%s\n\n", cp.AdminKubeconfig)
	}
	fmt.Println("kubectl is at " + framework.KubectlPath() + ". Press Ctrl-C to stop.")
	select {
	case <-ctx.Done():
	case <-demoExited(demo):
		return fmt.Errorf("a demo process exited; see the logs in %s/logs", dir)
	}
	return nil
}

func demoExited(d *framework.Demo) <-chan struct{} {
	if d == nil {
		return nil
	}
	return d.Exited()
}

func currentUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return fmt.Sprintf("uid %d", os.Getuid())
}
