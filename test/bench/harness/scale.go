package harness

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// RampOptions tune a scale ramp.
type RampOptions struct {
	Steps    []int
	Probe    int
	Interval time.Duration
	Parallel int
	Logf     func(string, ...any)
	// ProfileDir, when set, receives the relaying server's heap profile
	// and goroutine dump at each step.
	ProfileDir string
}

// ScaleStep is what the ramp saw with N sessions open.
type ScaleStep struct {
	N int
	// OpenSeconds is how long opening this step's new sessions took.
	OpenSeconds float64
	// Per idle session (the step's figure minus the figure with none open,
	// divided by N) for the relaying server (NaN for D, which has none),
	// kube-apiserver and kwok.
	ServerGoroutines, ServerHeapKiB, ServerLiveKiB, ServerRSSKiB float64
	KubeGoroutines, KubeRSSKiB, KwokRSSKiB                       float64
	// Absolute figures of the relaying server.
	Server ServerStats
	// Keystroke echo while every session but the probe types one key per
	// interval: the probe's back-to-back round trips, and the others'.
	ProbeP50, ProbeP99   float64 // ms
	TypingP50, TypingP99 float64
	TypingSamples        int
	Failures             int
}

func (e *Env) serverStats(ctx context.Context, v Variant) (ServerStats, error) {
	switch v {
	case C:
		return e.ConsoleStats(ctx)
	case H:
		return e.RawhopStats(ctx)
	}
	return ServerStats{Goroutines: -1}, nil
}

// Ramp opens sessions through v up to each step's count, and at each step
// measures the servers' memory and goroutines per idle session, then
// keystroke echo under typing load. Sessions are left open (the caller
// stops the plane: kwok keeps their processes anyway).
func (e *Env) Ramp(ctx context.Context, v Variant, o RampOptions) ([]ScaleStep, error) {
	if o.Parallel <= 0 {
		o.Parallel = 16
	}
	// Warm up: the first session builds clients and caches that are not
	// per session.
	x, err := e.openEchoer(ctx, v, 6, false)
	if err != nil {
		return nil, err
	}
	for i := 0; i < 5; i++ {
		if _, err := x.key('w'); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	x.finish()
	time.Sleep(2 * time.Second)
	base, err := e.serverStats(ctx, v)
	if err != nil {
		return nil, err
	}
	kubeBase, err := e.KubeAPIServerStats(ctx)
	if err != nil {
		return nil, err
	}
	kwokPID := e.CP.Processes()["kwok"]
	kwokBase, _ := ReadRSS(kwokPID)

	var sessions []*echoer
	defer func() {
		for _, s := range sessions {
			s.s.Close()
		}
	}()
	var out []ScaleStep
	for _, n := range o.Steps {
		start := time.Now()
		added, err := e.openMany(ctx, v, n-len(sessions), o.Parallel)
		sessions = append(sessions, added...)
		if err != nil {
			return out, fmt.Errorf("opening %d sessions (have %d): %w", n, len(sessions), err)
		}
		step := ScaleStep{N: n, OpenSeconds: time.Since(start).Seconds()}
		time.Sleep(2 * time.Second)
		st, err := e.serverStats(ctx, v)
		if err != nil {
			return out, err
		}
		step.Server = st
		if o.ProfileDir != "" {
			if err := e.saveServerProfiles(ctx, v, n, o.ProfileDir); err != nil {
				o.Logf("saving profiles: %v", err)
			}
		}
		kube, err := e.KubeAPIServerStats(ctx)
		if err != nil {
			return out, err
		}
		kwok, _ := ReadRSS(kwokPID)
		per := func(a, b float64) float64 { return (a - b) / float64(n) }
		if v == D {
			step.ServerGoroutines, step.ServerHeapKiB, step.ServerLiveKiB, step.ServerRSSKiB = math.NaN(), math.NaN(), math.NaN(), math.NaN()
		} else {
			step.ServerGoroutines = per(float64(st.Goroutines), float64(base.Goroutines))
			step.ServerHeapKiB = per(st.HeapInuse, base.HeapInuse) / 1024
			step.ServerLiveKiB = per(st.HeapAlloc, base.HeapAlloc) / 1024
			step.ServerRSSKiB = per(st.RSS, base.RSS) / 1024
		}
		step.KubeGoroutines = per(float64(kube.Goroutines), float64(kubeBase.Goroutines))
		step.KubeRSSKiB = per(kube.RSS, kubeBase.RSS) / 1024
		step.KwokRSSKiB = per(float64(kwok), float64(kwokBase)) / 1024

		probe, typing, failures := typeAll(sessions, o.Probe, o.Interval)
		step.ProbeP50, step.ProbeP99 = Ms(Percentile(probe, 50)), Ms(Percentile(probe, 99))
		step.TypingP50, step.TypingP99 = Ms(Percentile(typing, 50)), Ms(Percentile(typing, 99))
		step.TypingSamples, step.Failures = len(typing), failures
		o.Logf("  %s n=%d opened in %.1fs; per session: server %.1f goroutines %.1f KiB heap in use (%.1f KiB live) %.1f KiB RSS; kube-apiserver %.1f goroutines %.1f KiB RSS; kwok %.1f KiB RSS; echo probe p50 %.2f p99 %.2f ms, typing p50 %.2f p99 %.2f ms (%d), failures %d",
			v, n, step.OpenSeconds, step.ServerGoroutines, step.ServerHeapKiB, step.ServerLiveKiB, step.ServerRSSKiB,
			step.KubeGoroutines, step.KubeRSSKiB, step.KwokRSSKiB, step.ProbeP50, step.ProbeP99, step.TypingP50, step.TypingP99, step.TypingSamples, failures)
		out = append(out, step)
	}
	return out, nil
}

// openMany opens n echoing sessions, parallel at a time.
func (e *Env) openMany(ctx context.Context, v Variant, n, parallel int) ([]*echoer, error) {
	var (
		mu       sync.Mutex
		out      []*echoer
		firstErr error
		wg       sync.WaitGroup
	)
	next := make(chan struct{})
	go func() {
		defer close(next)
		for i := 0; i < n; i++ {
			select {
			case next <- struct{}{}:
			case <-ctx.Done():
				return
			}
		}
	}()
	for w := 0; w < min(parallel, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				mu.Lock()
				failed := firstErr != nil
				mu.Unlock()
				if failed {
					continue
				}
				x, err := e.openEchoer(ctx, v, 1<<30, false)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if x != nil {
					out = append(out, x)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out, firstErr
}

// typeAll has sessions[0] measure probe back-to-back keystrokes while every
// other session types one key per interval (at a random phase) until the
// probe is done (and at least two intervals have passed).
func typeAll(sessions []*echoer, probe int, interval time.Duration) (probeDs, typingDs []time.Duration, failures int) {
	stop := make(chan struct{})
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for _, x := range sessions[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTimer(rand.N(interval))
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				d, err := x.key('k')
				mu.Lock()
				if err != nil {
					failures++
				} else {
					typingDs = append(typingDs, d)
				}
				mu.Unlock()
				t.Reset(interval)
			}
		}()
	}
	started := time.Now()
	x := sessions[0]
	for i := 0; i < probe; i++ {
		d, err := x.key(byte('a' + i%26))
		if err != nil {
			mu.Lock()
			failures++
			mu.Unlock()
			continue
		}
		probeDs = append(probeDs, d)
	}
	if len(sessions) > 1 {
		time.Sleep(2*interval - time.Since(started))
	}
	close(stop)
	wg.Wait()
	return probeDs, typingDs, failures
}

// saveServerProfiles writes the relaying server's heap profile and
// goroutine dump with n sessions open.
func (e *Env) saveServerProfiles(ctx context.Context, v Variant, n int, dir string) error {
	var base, name string
	switch v {
	case C:
		base, name = e.ConsoleURL+"/debug/pprof/", "console-apiserver"
	case H:
		base, name = e.RawhopURL+"/bench/debug/pprof/", "rawhop"
	default:
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, p := range []struct{ path, file string }{
		{"heap", fmt.Sprintf("%s.heap.%d.pprof", name, n)},
		{"goroutine?debug=1", fmt.Sprintf("%s.goroutines.%d.txt", name, n)},
	} {
		f, err := os.Create(filepath.Join(dir, p.file))
		if err != nil {
			return err
		}
		err = e.adminGet(ctx, base+p.path, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
