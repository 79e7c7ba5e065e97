package harness

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Config is one benchmark run.
type Config struct {
	Bins Binaries
	Logf func(string, ...any)

	// Reps is how many times each figure is measured per variant, the
	// variants taking turns (round robin, the order rotating each time).
	Reps         int
	BulkBytes    int64
	EchoSamples  int
	SetupSamples int

	// ScaleSteps are the session counts of the scale ramp (empty: none),
	// for each of ScaleVariants, each on a fresh plane.
	ScaleSteps    []int
	ScaleVariants []Variant
	// ScaleProbe is how many keystroke round trips the probe session
	// measures at each step, while every other session types one key per
	// ScaleInterval.
	ScaleProbe    int
	ScaleInterval time.Duration
	// ScaleParallel bounds concurrent opens during the ramp.
	ScaleParallel int

	// ProfileDir, when set, receives CPU profiles of console-apiserver and
	// of the raw-hop server taken during bulk TTY output.
	ProfileDir     string
	ProfileSeconds int

	// Baseline names the git revision Bins.BaselineConsole was built at:
	// the interleaved figures and C's scale ramp are measured again with
	// it, on fresh planes, for before/after.
	Baseline string

	// Only, when not empty, limits the interleaved figures to these
	// groups: "bulk", "echo", "setup".
	Only map[string]bool

	// SkipMain skips the interleaved figures (scale only).
	SkipMain bool
	// ConsoleArgs are extra console-apiserver flags.
	ConsoleArgs []string
}

// Results is everything measured.
type Results struct {
	Config   Config
	Started  time.Time
	Duration time.Duration
	// Per figure, per variant: one value per repetition.
	Figures map[string]map[Variant][]float64
	// CPU s/GiB of TTY bulk output, per variant, per process: one value
	// per repetition.
	CPU map[Variant]map[string][]float64
	// Read and write system calls per MiB of TTY output, per variant, per
	// relaying process.
	Syscalls   map[Variant]map[string][]float64
	Scale      map[Variant][]ScaleStep
	LoadBefore string
	LoadAfter  string
	Profiles   []string
	// Before holds the same figures measured with the baseline
	// console-apiserver (nil without one); ScaleBefore its C ramp.
	Before      *Results
	ScaleBefore []ScaleStep
	Errors      []string
	MachineInfo string
}

// Figure names.
const (
	FigBulkTTY = "bulk-tty"
	FigBulkRaw = "bulk-notty"
	FigEcho50  = "echo-p50"
	FigEcho99  = "echo-p99"
	FigSetup50 = "setup-p50"
	FigSetup99 = "setup-p99"
	// C's setup with the create request on a kept-alive connection.
	FigSetupWarm50 = "setup-warm-p50"
	FigSetupWarm99 = "setup-warm-p99"
	// C's setup, by phase (p50).
	FigSetupCreate = "setup-create"
	FigSetupDial   = "setup-dial"
	FigSetupBind   = "setup-bind"
	bytesPerGiB    = 1 << 30
	maxRunErrors   = 10
)

func (r *Results) add(fig string, v Variant, x float64) {
	if r.Figures[fig] == nil {
		r.Figures[fig] = map[Variant][]float64{}
	}
	r.Figures[fig][v] = append(r.Figures[fig][v], x)
}

// Run runs the benchmark.
func Run(ctx context.Context, cfg Config) (*Results, error) {
	logf := cfg.Logf
	res := newResults(cfg)
	res.LoadBefore = LoadAvg()
	defer func() {
		res.Duration = time.Since(res.Started)
		res.LoadAfter = LoadAvg()
	}()
	if !cfg.SkipMain {
		if err := runMain(ctx, cfg, res); err != nil {
			return res, err
		}
	}
	before := cfg
	if cfg.Baseline != "" {
		before.Bins.Console = cfg.Bins.BaselineConsole
		if cfg.ProfileDir != "" {
			before.ProfileDir = filepath.Join(cfg.ProfileDir, "before")
		}
		if !cfg.SkipMain {
			logf("the same with console-apiserver at %s", cfg.Baseline)
			res.Before = newResults(before)
			if err := runMain(ctx, before, res.Before); err != nil {
				return res, err
			}
		}
	}
	for _, v := range cfg.ScaleVariants {
		if len(cfg.ScaleSteps) == 0 {
			break
		}
		logf("scale ramp %s: %v sessions (fresh plane)", v, cfg.ScaleSteps)
		env, err := StartEnv(ctx, EnvOptions{Bins: cfg.Bins, Logf: logf, ConsoleArgs: cfg.ConsoleArgs})
		if err != nil {
			return res, err
		}
		steps, err := env.Ramp(ctx, v, RampOptions{
			Steps: cfg.ScaleSteps, Probe: cfg.ScaleProbe, Interval: cfg.ScaleInterval, Parallel: cfg.ScaleParallel, Logf: logf,
			ProfileDir: cfg.ProfileDir,
		})
		env.Stop()
		res.Scale[v] = steps
		if err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("scale %s: %v", v, err))
			logf("scale %s: %v", v, err)
		}
		if v != C || cfg.Baseline == "" {
			continue
		}
		logf("scale ramp C with console-apiserver at %s (fresh plane)", cfg.Baseline)
		env, err = StartEnv(ctx, EnvOptions{Bins: before.Bins, Logf: logf, ConsoleArgs: cfg.ConsoleArgs})
		if err != nil {
			return res, err
		}
		res.ScaleBefore, err = env.Ramp(ctx, C, RampOptions{
			Steps: cfg.ScaleSteps, Probe: cfg.ScaleProbe, Interval: cfg.ScaleInterval, Parallel: cfg.ScaleParallel, Logf: logf,
			ProfileDir: before.ProfileDir,
		})
		env.Stop()
		if err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("scale C before: %v", err))
		}
	}
	return res, nil
}

func newResults(cfg Config) *Results {
	return &Results{
		Config: cfg, Started: time.Now(),
		Figures:  map[string]map[Variant][]float64{},
		CPU:      map[Variant]map[string][]float64{},
		Syscalls: map[Variant]map[string][]float64{},
		Scale:    map[Variant][]ScaleStep{},
	}
}

func runMain(ctx context.Context, cfg Config, res *Results) error {
	logf := cfg.Logf
	env, err := StartEnv(ctx, EnvOptions{Bins: cfg.Bins, Logf: logf, ConsoleArgs: cfg.ConsoleArgs})
	if err != nil {
		return err
	}
	defer env.Stop()

	// Warm up every path (connections, caches, lazily built clients).
	for _, v := range Variants {
		if _, err := env.Setup(ctx, v); err != nil {
			return fmt.Errorf("warm-up %s: %w", v, err)
		}
		if _, err := env.Bulk(ctx, v, true, min(cfg.BulkBytes, 4<<20)); err != nil {
			return fmt.Errorf("warm-up %s: %w", v, err)
		}
	}
	fail := func(err error) error {
		res.Errors = append(res.Errors, err.Error())
		logf("error: %v", err)
		if len(res.Errors) > maxRunErrors {
			return fmt.Errorf("too many errors, last: %w", err)
		}
		return nil
	}
	gib := float64(cfg.BulkBytes) / bytesPerGiB
	for rep := 0; rep < cfg.Reps; rep++ {
		order := make([]Variant, len(Variants))
		for i := range Variants {
			order[i] = Variants[(i+rep)%len(Variants)]
		}
		logf("repetition %d/%d, order %v, load %s", rep+1, cfg.Reps, order, LoadAvg())
		if cfg.want("bulk") {
			for _, v := range order {
				r, err := env.Bulk(ctx, v, true, cfg.BulkBytes)
				if err != nil {
					if err := fail(err); err != nil {
						return err
					}
					res.add(FigBulkTTY, v, math.NaN())
					continue
				}
				res.add(FigBulkTTY, v, r.MiBps)
				if res.CPU[v] == nil {
					res.CPU[v] = map[string][]float64{}
				}
				for name, s := range r.CPU {
					res.CPU[v][name] = append(res.CPU[v][name], s/gib)
				}
				if res.Syscalls[v] == nil {
					res.Syscalls[v] = map[string][]float64{}
				}
				for name, n := range r.Syscalls {
					res.Syscalls[v][name] = append(res.Syscalls[v][name], n/float64(cfg.BulkBytes>>20))
				}
				mib := float64(cfg.BulkBytes >> 20)
				logf("  %s bulk tty   %7.1f MiB/s  cpu s/GiB: console %.2f rawhop %.2f kube-apiserver %.2f kwok %.2f commands %.2f bench %.2f other %.2f; syscalls/MiB: console %.0f rawhop %.0f kube-apiserver %.0f",
					v, r.MiBps, r.CPU["console-apiserver"]/gib, r.CPU["rawhop"]/gib, r.CPU["kube-apiserver"]/gib,
					r.CPU["kwok"]/gib, r.CPU["kwok-commands"]/gib, r.CPU["bench"]/gib, r.CPU["other"]/gib,
					r.Syscalls["console-apiserver"]/mib, r.Syscalls["rawhop"]/mib, r.Syscalls["kube-apiserver"]/mib)
			}
			for _, v := range order {
				r, err := env.Bulk(ctx, v, false, cfg.BulkBytes)
				if err != nil {
					if err := fail(err); err != nil {
						return err
					}
					res.add(FigBulkRaw, v, math.NaN())
					continue
				}
				res.add(FigBulkRaw, v, r.MiBps)
				logf("  %s bulk notty %7.1f MiB/s", v, r.MiBps)
			}
		}
		if cfg.want("echo") {
			for _, v := range order {
				ds, err := env.Echo(ctx, v, cfg.EchoSamples)
				if err != nil {
					if err := fail(err); err != nil {
						return err
					}
					res.add(FigEcho50, v, math.NaN())
					res.add(FigEcho99, v, math.NaN())
					continue
				}
				res.add(FigEcho50, v, Ms(Percentile(ds, 50)))
				res.add(FigEcho99, v, Ms(Percentile(ds, 99)))
				logf("  %s echo  p50 %.3f ms p99 %.3f ms", v, Ms(Percentile(ds, 50)), Ms(Percentile(ds, 99)))
			}
		}
		if cfg.want("setup") {
			// Setup samples take turns one by one, so that a burst of load on
			// the machine hits every variant alike.
			setups := map[Variant][]time.Duration{}
			var create, dial, bind, warm []time.Duration
			for i := 0; i < cfg.SetupSamples; i++ {
				for _, v := range order {
					d, ph, err := env.SetupPhased(ctx, v, false)
					if err != nil {
						if err := fail(err); err != nil {
							return err
						}
						continue
					}
					setups[v] = append(setups[v], d)
					if v == C {
						create, dial, bind = append(create, ph.Create), append(dial, ph.Dial), append(bind, ph.Bind)
						// And once more with the create request on a kept-alive
						// connection.
						if d, _, err := env.SetupPhased(ctx, v, true); err == nil {
							warm = append(warm, d)
						} else if err := fail(err); err != nil {
							return err
						}
					}
				}
			}
			res.add(FigSetupWarm50, C, Ms(Percentile(warm, 50)))
			res.add(FigSetupWarm99, C, Ms(Percentile(warm, 99)))
			logf("  C setup with a kept-alive create connection: p50 %.1f ms p99 %.1f ms", Ms(Percentile(warm, 50)), Ms(Percentile(warm, 99)))
			res.add(FigSetupCreate, C, Ms(Percentile(create, 50)))
			res.add(FigSetupDial, C, Ms(Percentile(dial, 50)))
			res.add(FigSetupBind, C, Ms(Percentile(bind, 50)))
			logf("  C setup phases p50: create %.1f ms, WebSocket %.1f ms, bind to first byte %.1f ms",
				Ms(Percentile(create, 50)), Ms(Percentile(dial, 50)), Ms(Percentile(bind, 50)))
			for _, v := range order {
				res.add(FigSetup50, v, Ms(Percentile(setups[v], 50)))
				res.add(FigSetup99, v, Ms(Percentile(setups[v], 99)))
				logf("  %s setup p50 %.1f ms p99 %.1f ms (%d samples)", v, Ms(Percentile(setups[v], 50)), Ms(Percentile(setups[v], 99)), len(setups[v]))
			}
		}
	}
	if cfg.ProfileDir != "" {
		if err := profile(ctx, env, cfg, res); err != nil {
			_ = fail(fmt.Errorf("profiling: %w", err))
		}
	}
	return nil
}

// profile takes CPU profiles of console-apiserver (during C bulk TTY
// output) and of the raw hop (during H's), repeating the bulk transfer for
// the profile's duration.
func profile(ctx context.Context, env *Env, cfg Config, res *Results) error {
	if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
		return err
	}
	secs := cfg.ProfileSeconds
	for _, p := range []struct {
		v    Variant
		url  string
		file string
	}{
		{C, env.ConsoleURL + fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), "console-apiserver.cpu.pprof"},
		{H, env.RawhopURL + fmt.Sprintf("/bench/debug/pprof/profile?seconds=%d", secs), "rawhop.cpu.pprof"},
	} {
		path := filepath.Join(cfg.ProfileDir, p.file)
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		var wg sync.WaitGroup
		var perr error
		done := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done)
			perr = env.adminGet(ctx, p.url, f)
		}()
		runs := 0
		for {
			select {
			case <-done:
			default:
				if _, err := env.Bulk(ctx, p.v, true, cfg.BulkBytes); err != nil {
					cfg.Logf("profile run: %v", err)
				}
				runs++
				continue
			}
			break
		}
		wg.Wait()
		f.Close()
		if perr != nil {
			return perr
		}
		cfg.Logf("profile of %s during %d bulk TTY runs: %s", p.v, runs, path)
		res.Profiles = append(res.Profiles, path)
	}
	return nil
}

func (c Config) want(group string) bool { return len(c.Only) == 0 || c.Only[group] }
