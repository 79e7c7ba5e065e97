// Command bench measures console-apiserver (C) against direct exec (D) and a
// raw aggregated hop (H) on one local control plane, and prints markdown
// tables (see docs/benchmarks.md). make bench runs it.
//
//	go run ./test/bench/cmd/bench [-quick] [-reps 5] [-scale 1,10,100,1000] [-baseline REV] ...
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kubecube-io/console-apiserver/test/bench/harness"
	"github.com/kubecube-io/console-apiserver/test/framework"
)

func main() {
	var (
		quick       = flag.Bool("quick", false, "a short smoke run: 2 repetitions, 8 MiB, 200 echo and 10 setup samples, scale 1,10,50")
		reps        = flag.Int("reps", 5, "repetitions of each figure per variant (interleaved)")
		bulkMiB     = flag.Int("bulk-mib", 64, "MiB of bulk output per transfer")
		echo        = flag.Int("echo-samples", 2000, "keystroke round trips per repetition and variant")
		setup       = flag.Int("setup-samples", 100, "fresh session setups per repetition and variant")
		scale       = flag.String("scale", "1,10,100,1000", "session counts of the scale ramp (empty: skip)")
		scaleVars   = flag.String("scale-variants", "C,H,D", "variants ramped, each on a fresh plane")
		probe       = flag.Int("scale-probe", 1000, "probe keystrokes at each scale step")
		interval    = flag.Duration("scale-interval", time.Second, "each other session types one key this often during a scale step")
		parallel    = flag.Int("scale-parallel", 16, "sessions opened at once during the ramp")
		profileDir  = flag.String("profile-dir", "", "write CPU profiles of console-apiserver and the raw hop during bulk TTY output here")
		profileSecs = flag.Int("profile-seconds", 10, "length of each CPU profile")
		skipMain    = flag.Bool("scale-only", false, "skip the interleaved figures")
		out         = flag.String("o", "", "also write the markdown to this file")
		verbose     = flag.Bool("v", true, "log progress to stderr")
		consoleArgs = flag.String("console-args", "", "extra console-apiserver flags, comma-separated")
		baseline    = flag.String("baseline", "", "also measure console-apiserver as built at this git revision (before/after), on fresh planes")
		only        = flag.String("only", "", "measure only these groups of interleaved figures: bulk,echo,setup (default all)")
	)
	flag.Parse()
	cfg := harness.Config{
		Reps:           *reps,
		BulkBytes:      int64(*bulkMiB) << 20,
		EchoSamples:    *echo,
		SetupSamples:   *setup,
		ScaleProbe:     *probe,
		ScaleInterval:  *interval,
		ScaleParallel:  *parallel,
		ProfileDir:     *profileDir,
		ProfileSeconds: *profileSecs,
		SkipMain:       *skipMain,
	}
	scaleStr := *scale
	if *quick {
		cfg.Reps, cfg.BulkBytes, cfg.EchoSamples, cfg.SetupSamples, cfg.ScaleProbe = 2, 8<<20, 200, 10, 100
		scaleStr = "1,10,50"
	}
	if *only != "" {
		cfg.Only = map[string]bool{}
		for _, g := range strings.Split(*only, ",") {
			switch g = strings.TrimSpace(g); g {
			case "bulk", "echo", "setup":
				cfg.Only[g] = true
			default:
				fatal(fmt.Errorf("-only: unknown group %q", g))
			}
		}
	}
	if *consoleArgs != "" {
		cfg.ConsoleArgs = strings.Split(*consoleArgs, ",")
	}
	for _, s := range strings.Split(scaleStr, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			fatal(fmt.Errorf("-scale: bad count %q", s))
		}
		cfg.ScaleSteps = append(cfg.ScaleSteps, n)
	}
	for _, s := range strings.Split(*scaleVars, ",") {
		switch v := harness.Variant(strings.TrimSpace(s)); v {
		case harness.C, harness.H, harness.D:
			cfg.ScaleVariants = append(cfg.ScaleVariants, v)
		case "":
		default:
			fatal(fmt.Errorf("-scale-variants: unknown variant %q", s))
		}
	}
	start := time.Now()
	cfg.Logf = func(f string, a ...any) {
		if *verbose {
			fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(f, a...))
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	binDir := filepath.Join(framework.RepoRoot(), "_output", "bench")
	bins, err := harness.BuildBinaries(ctx, binDir, cfg.Logf)
	if err != nil {
		fatal(err)
	}
	if *baseline != "" {
		if bins.BaselineConsole, err = harness.BuildBaseline(ctx, binDir, *baseline, cfg.Logf); err != nil {
			fatal(err)
		}
		cfg.Baseline = *baseline
	}
	cfg.Bins = bins
	res, err := harness.Run(ctx, cfg)
	if res == nil {
		fatal(err)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "Machine: %s, GOMAXPROCS %d.\n\n", harness.MachineInfo(), runtime.GOMAXPROCS(0))
	res.WriteMarkdown(&sb)
	fmt.Print(sb.String())
	if *out != "" {
		if werr := os.WriteFile(*out, []byte(sb.String()), 0o644); werr != nil {
			fmt.Fprintln(os.Stderr, werr)
		}
	}
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}
