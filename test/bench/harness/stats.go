package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kubecube-io/console-apiserver/test/bench/rawhop"
)

// Percentile is the nearest-rank percentile p (0..100) of ds.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(k, len(s)-1))]
}

// Ms is d in milliseconds.
func Ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Summary is the median, min and max of one figure over repetitions.
type Summary struct {
	Median, Min, Max float64
	N                int
}

// Summarize summarizes xs (NaNs are skipped).
func Summarize(xs []float64) Summary {
	var s []float64
	for _, x := range xs {
		if !math.IsNaN(x) {
			s = append(s, x)
		}
	}
	if len(s) == 0 {
		return Summary{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Summary{Median: med, Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// Format prints "median (min–max)" with the given precision.
func (s Summary) Format(prec int) string {
	if math.IsNaN(s.Median) {
		return "–"
	}
	if s.N == 1 {
		return strconv.FormatFloat(s.Median, 'f', prec, 64)
	}
	return fmt.Sprintf("%s (%s–%s)", strconv.FormatFloat(s.Median, 'f', prec, 64),
		strconv.FormatFloat(s.Min, 'f', prec, 64), strconv.FormatFloat(s.Max, 'f', prec, 64))
}

// ServerStats are a Go server's runtime figures after a GC.
type ServerStats struct {
	Goroutines int
	HeapInuse  float64
	// HeapAlloc is the live heap (after the GC): objects, without the
	// unused room of the spans they sit in, which HeapInuse counts.
	HeapAlloc float64
	RSS       float64
	Threads   int
}

// ConsoleStats forces a GC in console-apiserver (through its pprof heap
// endpoint) and reads its goroutines and heap from /metrics.
func (e *Env) ConsoleStats(ctx context.Context) (ServerStats, error) {
	if err := e.adminGet(ctx, e.ConsoleURL+"/debug/pprof/heap?gc=1", io.Discard); err != nil {
		return ServerStats{}, err
	}
	var sb strings.Builder
	if err := e.adminGet(ctx, e.ConsoleURL+"/metrics", &sb); err != nil {
		return ServerStats{}, err
	}
	m := parseMetrics(sb.String(), "go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_heap_alloc_bytes")
	st := ServerStats{Goroutines: int(m["go_goroutines"]), HeapInuse: m["go_memstats_heap_inuse_bytes"], HeapAlloc: m["go_memstats_heap_alloc_bytes"]}
	rss, _ := ReadRSS(e.Console.PID())
	st.RSS = float64(rss)
	st.Threads, _ = ReadThreads(e.Console.PID())
	return st, nil
}

// RawhopStats does the same for the raw-hop server.
func (e *Env) RawhopStats(ctx context.Context) (ServerStats, error) {
	var sb strings.Builder
	if err := e.adminGet(ctx, e.RawhopURL+"/bench/stats?gc=1", &sb); err != nil {
		return ServerStats{}, err
	}
	var rs rawhop.Stats
	if err := json.Unmarshal([]byte(sb.String()), &rs); err != nil {
		return ServerStats{}, err
	}
	rss, _ := ReadRSS(e.Rawhop.PID())
	th, _ := ReadThreads(e.Rawhop.PID())
	return ServerStats{Goroutines: rs.Goroutines, HeapInuse: float64(rs.HeapInuse), HeapAlloc: float64(rs.HeapAlloc), RSS: float64(rss), Threads: th}, nil
}

// KubeAPIServerStats reads kube-apiserver's goroutines and heap from its
// /metrics (no GC: it has no profiling endpoint here).
func (e *Env) KubeAPIServerStats(ctx context.Context) (ServerStats, error) {
	var sb strings.Builder
	if err := e.adminGet(ctx, e.CP.URL+"/metrics", &sb); err != nil {
		return ServerStats{}, err
	}
	m := parseMetrics(sb.String(), "go_goroutines", "go_memstats_heap_inuse_bytes")
	st := ServerStats{Goroutines: int(m["go_goroutines"]), HeapInuse: m["go_memstats_heap_inuse_bytes"]}
	pid := e.CP.Processes()["kube-apiserver"]
	rss, _ := ReadRSS(pid)
	st.RSS = float64(rss)
	st.Threads, _ = ReadThreads(pid)
	return st, nil
}

func (e *Env) adminGet(ctx context.Context, url string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	client := e.Admin
	if strings.HasPrefix(url, e.CP.URL) {
		// kube-apiserver's serving certificate is the plane's CA's.
		if client, err = e.kubeAdminClient(); err != nil {
			return err
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

func parseMetrics(text string, names ...string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, n := range names {
			if rest, ok := strings.CutPrefix(line, n+" "); ok {
				if v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64); err == nil {
					out[n] = v
				}
			}
		}
	}
	return out
}
