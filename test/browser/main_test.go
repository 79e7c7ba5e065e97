// Package browser tests the console page in a real headless Chromium, driven
// over the DevTools protocol with chromedp: the page is opened through the
// demo user's kubectl proxy, so every request takes the path a person's would
// (kubectl proxy, kube-apiserver's authentication and RBAC, the aggregator,
// console-apiserver, exec into a kwok pod).
package browser

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/kubecube-io/console-apiserver/test/framework"
	"github.com/kubecube-io/console-apiserver/web"
)

// chromiumPath is where hack/install-test-deps.sh (Debian's chromium) puts it.
const chromiumPath = "/usr/bin/chromium"

var (
	demo *framework.Demo
	// browserCtx holds the one Chromium the tests share; each test opens its
	// own tab in its own browser context (cookies, storage) from it.
	browserCtx context.Context
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if _, err := os.Stat(chromiumPath); err != nil {
		// make test installs it first, so a missing browser is a broken
		// setup, not a reason to skip quietly.
		fmt.Fprintf(os.Stderr, "browser tests need Chromium at %s: run hack/install-test-deps.sh (make test-deps): %v\n", chromiumPath, err)
		return 1
	}
	if !web.Built() {
		fmt.Fprintln(os.Stderr, "browser tests need the console page built into the binary: run `make web`, then rerun the tests")
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logf := func(f string, a ...any) { fmt.Printf(f+"\n", a...) }

	cp, err := framework.Start(ctx, framework.Options{Logf: logf})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the control plane:", err)
		return 1
	}
	defer cp.Stop()
	if demo, err = framework.StartDemo(ctx, cp, "", 0); err != nil {
		fmt.Fprintln(os.Stderr, "starting console-apiserver and the demo:", err)
		return 1
	}
	defer demo.Stop()
	logf("demo page at %s", demo.URL)

	stop, err := startBrowser(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting Chromium:", err)
		if stop != nil {
			_ = stop()
		}
		return 1
	}
	code := m.Run()
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// startBrowser starts Chromium and sets browserCtx. stop ends it and reports
// any of its processes still alive afterwards.
func startBrowser(ctx context.Context) (stop func() error, err error) {
	dir, err := os.MkdirTemp("", "console-browser-")
	if err != nil {
		return nil, err
	}
	profile := filepath.Join(dir, "profile")
	logFile, err := os.Create(filepath.Join(dir, "chromium.log"))
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		// We run as root, where Chromium's sandbox refuses to start.
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		// This machine's network is closed: Chromium's own background
		// connections (updates, sync, field trials, QUIC probes) are refused
		// and, without these, slow or break its startup.
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		// Our own profile dir, so the leak check below can find every
		// Chromium process of this run by it (each child carries it).
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1100, 650),
		chromedp.CombinedOutput(logFile),
	)
	allocCtx, allocCancel := chromedp.NewExecAllocator(ctx, opts...)
	bctx, bcancel := chromedp.NewContext(allocCtx)
	stop = func() error {
		bcancel()
		// Waits for the browser process itself to exit.
		allocCancel()
		_ = logFile.Close()
		left := waitGone(profile, 15*time.Second)
		for _, pid := range left {
			// Ours: each carries this run's profile dir.
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		_ = os.RemoveAll(dir)
		if len(left) > 0 {
			return fmt.Errorf("chromium processes %v outlived the browser; killed them", left)
		}
		return nil
	}
	// The first Run starts the browser; it must not carry a timeout (that
	// would end the browser with it), so bound it from outside.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(bctx) }()
	select {
	case err = <-started:
	case <-time.After(90 * time.Second):
		err = errors.New("Chromium did not start within 90s")
	}
	if err != nil {
		out, _ := os.ReadFile(logFile.Name())
		return stop, fmt.Errorf("%w\nchromium output:\n%s", err, tail(string(out), 30))
	}
	browserCtx = bctx
	return stop, nil
}

// waitGone waits until no process has marker in its command line, and
// returns those that still do at the deadline.
func waitGone(marker string, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	for {
		left := processesWith(marker)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// processesWith lists live (not zombie) processes whose command line
// contains marker.
func processesWith(marker string) []int {
	var out []int
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range cmdlines {
		b, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(b), marker) {
			continue
		}
		procDir := filepath.Dir(f)
		if stat, err := os.ReadFile(filepath.Join(procDir, "stat")); err == nil {
			s := string(stat)
			if i := strings.LastIndexByte(s, ')'); i >= 0 {
				if f := strings.Fields(s[i+1:]); len(f) > 0 && (f[0] == "Z" || f[0] == "X") {
					continue
				}
			}
		}
		if pid, err := strconv.Atoi(filepath.Base(procDir)); err == nil && pid != os.Getpid() {
			out = append(out, pid)
		}
	}
	return out
}

func tail(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
