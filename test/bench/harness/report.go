package harness

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// ratios divides a figure's per-repetition values of v by D's (the same
// repetition, so the machine's load of the moment mostly cancels).
func (r *Results) ratios(fig string, v, ref Variant) []float64 {
	a, b := r.Figures[fig][v], r.Figures[fig][ref]
	out := make([]float64, 0, len(a))
	for i := range min(len(a), len(b)) {
		out = append(out, a[i]/b[i])
	}
	return out
}

// ratios2 divides C's figure fig by D's figure ref, repetition by
// repetition.
func (r *Results) ratios2(fig, ref string) []float64 {
	a, b := r.Figures[fig][C], r.Figures[ref][D]
	out := make([]float64, 0, len(a))
	for i := range min(len(a), len(b)) {
		out = append(out, a[i]/b[i])
	}
	return out
}

func (r *Results) cpuRatios(v, ref Variant, proc, refProc string) []float64 {
	a, b := r.CPU[v][proc], r.CPU[ref][refProc]
	out := make([]float64, 0, len(a))
	for i := range min(len(a), len(b)) {
		out = append(out, a[i]/b[i])
	}
	return out
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

// WriteMarkdown prints the results as markdown tables.
func (r *Results) WriteMarkdown(w io.Writer) {
	cfg := r.Config
	fmt.Fprintf(w, "Run %s, %s; %d repetitions, variants interleaved (order rotating); load average before %s, after %s.\n\n",
		r.Started.Format("2006-01-02 15:04 MST"), r.Duration.Round(1e9), cfg.Reps, r.LoadBefore, r.LoadAfter)
	if len(r.Figures) > 0 {
		r.writeMain(w)
		r.writeCPU(w)
	}
	if b := r.Before; b != nil && len(b.Figures) > 0 {
		fmt.Fprintf(w, "Before: the same figures with console-apiserver built at %s (C), on a fresh plane right after.\n\n", r.Config.Baseline)
		b.writeMain(w)
		b.writeCPU(w)
	}
	if len(r.Scale) > 0 {
		r.writeScale(w)
	}
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "\nErrors during the run (%d):\n", len(r.Errors))
		for _, e := range r.Errors {
			fmt.Fprintf(w, "- %s\n", strings.ReplaceAll(e, "\n", " "))
		}
	}
	for _, p := range r.Profiles {
		fmt.Fprintf(w, "\nCPU profile: %s (go tool pprof -top %s)\n", p, p)
	}
}

func (r *Results) writeMain(w io.Writer) {
	cfg := r.Config
	mib := cfg.BulkBytes >> 20
	fmt.Fprintf(w, "Median (min–max) over repetitions; ratios are per repetition, then summarized.\n\n")
	fmt.Fprintf(w, "| figure | D direct | H raw hop | C console | H/D | C/D | target | |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|\n")
	row := func(name, fig string, prec int, target string, ok func(h, c Summary) bool) {
		d, h, c := Summarize(r.Figures[fig][D]), Summarize(r.Figures[fig][H]), Summarize(r.Figures[fig][C])
		hd, cd := Summarize(r.ratios(fig, H, D)), Summarize(r.ratios(fig, C, D))
		v := "–"
		if ok != nil && !math.IsNaN(cd.Median) {
			v = verdict(ok(hd, cd))
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", name, d.Format(prec), h.Format(prec), c.Format(prec), hd.Format(2), cd.Format(2), target, v)
	}
	// C/D ≥ H/D is C/H ≥ 1: judged on C/H of each repetition.
	for _, b := range []struct{ name, fig string }{
		{fmt.Sprintf("bulk output, TTY, MiB/s (%d MiB, counted)", mib), FigBulkTTY},
		{fmt.Sprintf("bulk output, no TTY, MiB/s (%d MiB, counted)", mib), FigBulkRaw},
	} {
		ch := Summarize(r.ratios(b.fig, C, H))
		row(b.name, b.fig, 1, "C/D ≥ H/D (C/H "+ch.Format(2)+")", func(_, _ Summary) bool { return ch.Median >= 1 })
	}
	row(fmt.Sprintf("keystroke echo p50, ms (%d samples)", cfg.EchoSamples), FigEcho50, 3, "C/D ≤ 1.7", func(_, c Summary) bool { return c.Median <= 1.7 })
	row(fmt.Sprintf("keystroke echo p99, ms (%d samples)", cfg.EchoSamples), FigEcho99, 3, "C/D ≤ 1.8", func(_, c Summary) bool { return c.Median <= 1.8 })
	row(fmt.Sprintf("setup to first byte p50, ms (%d fresh samples; C: create+bind)", cfg.SetupSamples), FigSetup50, 1, "C/D ≤ 2.0", func(_, c Summary) bool { return c.Median <= 2.0 })
	row(fmt.Sprintf("setup to first byte p99, ms (%d fresh samples; C: create+bind)", cfg.SetupSamples), FigSetup99, 1, "C/D ≤ 2.0", func(_, c Summary) bool { return c.Median <= 2.0 })
	if len(r.Figures[FigSetupWarm50][C]) > 0 {
		// Against D's (fresh) setup of the same repetition.
		w50, w99 := Summarize(r.ratios2(FigSetupWarm50, FigSetup50)), Summarize(r.ratios2(FigSetupWarm99, FigSetup99))
		fmt.Fprintf(w, "| setup p50 / p99, ms, C's create request on a kept-alive connection (as a browser's) | | | %s / %s | | %s / %s | C/D ≤ 2.0 | %s |\n",
			Summarize(r.Figures[FigSetupWarm50][C]).Format(1), Summarize(r.Figures[FigSetupWarm99][C]).Format(1),
			w50.Format(2), w99.Format(2), verdict(w50.Median <= 2 && w99.Median <= 2))
	}
	if len(r.Figures[FigSetupCreate][C]) > 0 {
		fmt.Fprintf(w, "| C's setup p50 by phase, ms: create request / WebSocket open / bind to first byte | | | %s / %s / %s | | | | |\n",
			Summarize(r.Figures[FigSetupCreate][C]).Format(1), Summarize(r.Figures[FigSetupDial][C]).Format(1), Summarize(r.Figures[FigSetupBind][C]).Format(1))
	}
	hs, cs := Summarize(r.CPU[H]["rawhop"]), Summarize(r.CPU[C]["console-apiserver"])
	ch := Summarize(r.cpuRatios(C, H, "console-apiserver", "rawhop"))
	v := "–"
	if !math.IsNaN(ch.Median) {
		v = verdict(ch.Median <= 1)
	}
	fmt.Fprintf(w, "| relaying server's CPU s/GiB, TTY output | – | %s | %s | | C/H %s | C ≤ H | %s |\n", hs.Format(2), cs.Format(2), ch.Format(2), v)
	fmt.Fprintln(w)
}

func (r *Results) writeCPU(w io.Writer) {
	procs := map[string]bool{}
	for _, m := range r.CPU {
		for p := range m {
			procs[p] = true
		}
	}
	order := []string{"kube-apiserver", "kwok", "kwok-commands", "console-apiserver", "rawhop", "bench", "etcd", "other"}
	fmt.Fprintf(w, "CPU seconds per GiB of TTY output, per process (median (min–max)); kwok-commands is the commands' own CPU (yes, head, the pty), bench the load generator's clients, other whatever else ran on the machine meanwhile.\n\n")
	fmt.Fprintf(w, "| process | D | H | C |\n|---|---|---|---|\n")
	total := map[Variant][]float64{}
	for _, p := range order {
		if !procs[p] {
			continue
		}
		fmt.Fprintf(w, "| %s |", p)
		for _, v := range Variants {
			fmt.Fprintf(w, " %s |", Summarize(r.CPU[v][p]).Format(2))
			if p != "other" {
				for i, x := range r.CPU[v][p] {
					if len(total[v]) <= i {
						total[v] = append(total[v], 0)
					}
					total[v][i] += x
				}
			}
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "| all but other |")
	for _, v := range Variants {
		fmt.Fprintf(w, " %s |", Summarize(total[v]).Format(2))
	}
	fmt.Fprintf(w, "\n")
	for _, p := range []string{"kube-apiserver", "rawhop", "console-apiserver"} {
		fmt.Fprintf(w, "| %s read+write syscalls per MiB |", p)
		for _, v := range Variants {
			fmt.Fprintf(w, " %s |", Summarize(r.Syscalls[v][p]).Format(0))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
}

func (r *Results) writeScale(w io.Writer) {
	fmt.Fprintf(w, "Scale: sessions open at once (TTY, `stty raw -echo` then copying keystrokes back), each variant on a fresh plane. Per-session figures are (figure at N − figure with none open) / N, idle, after a GC for the relaying server. Echo: a probe session's %d back-to-back keystrokes while every other session types one key every %s.\n\n",
		r.Config.ScaleProbe, r.Config.ScaleInterval)
	fmt.Fprintf(w, "| variant | sessions | open s | server goroutines/session | server heap in use (live) KiB/session | server RSS KiB/session | kube-apiserver goroutines/session | kube-apiserver RSS KiB/session | kwok RSS KiB/session | probe echo p50 / p99 ms | typing echo p50 / p99 ms (samples) | failures |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	vs := make([]Variant, 0, len(r.Scale))
	for v := range r.Scale {
		vs = append(vs, v)
	}
	slices.SortFunc(vs, func(a, b Variant) int { return slices.Index(Variants, a) - slices.Index(Variants, b) })
	f := func(x float64, prec int) string {
		if math.IsNaN(x) {
			return "–"
		}
		return fmt.Sprintf("%.*f", prec, x)
	}
	type row struct {
		name  string
		steps []ScaleStep
	}
	var rows []row
	for _, v := range vs {
		rows = append(rows, row{string(v), r.Scale[v]})
		if v == C && len(r.ScaleBefore) > 0 {
			rows = append(rows, row{"C before (" + r.Config.Baseline + ")", r.ScaleBefore})
		}
	}
	for _, rw := range rows {
		v := rw.name
		for _, s := range rw.steps {
			fmt.Fprintf(w, "| %s | %d | %.1f | %s | %s (%s) | %s | %s | %s | %s | %s / %s | %s / %s (%d) | %d |\n",
				v, s.N, s.OpenSeconds, f(s.ServerGoroutines, 1), f(s.ServerHeapKiB, 1), f(s.ServerLiveKiB, 1), f(s.ServerRSSKiB, 1),
				f(s.KubeGoroutines, 1), f(s.KubeRSSKiB, 1), f(s.KwokRSSKiB, 1),
				f(s.ProbeP50, 2), f(s.ProbeP99, 2), f(s.TypingP50, 2), f(s.TypingP99, 2), s.TypingSamples, s.Failures)
		}
	}
	fmt.Fprintln(w)
	if steps := r.Scale[C]; len(steps) > 0 {
		fmt.Fprintf(w, "| console-apiserver per idle session | sessions | goroutines | heap in use KiB | live heap KiB | RSS KiB | ≤ 8 goroutines | ≤ 64 KiB (live heap) |\n|---|---|---|---|---|---|---|---|\n")
		for _, s := range steps {
			if s.N < 100 {
				continue
			}
			fmt.Fprintf(w, "| | %d | %.1f | %.1f | %.1f | %.1f | %s | %s |\n", s.N, s.ServerGoroutines, s.ServerHeapKiB, s.ServerLiveKiB, s.ServerRSSKiB,
				verdict(s.ServerGoroutines <= 8), verdict(s.ServerLiveKiB <= 64))
		}
		fmt.Fprintln(w)
	}
}
