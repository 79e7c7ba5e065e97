package sockjs

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

const (
	metricsNamespace = "console_apiserver"
	metricsSubsystem = "terminal"
)

var (
	activeSessions = metrics.NewGauge(&metrics.GaugeOpts{
		Namespace:      metricsNamespace,
		Subsystem:      metricsSubsystem,
		Name:           "active_sessions",
		Help:           "SockJS terminal sessions currently open, bound or not.",
		StabilityLevel: metrics.ALPHA,
	})
	endedSessions = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace:      metricsNamespace,
		Subsystem:      metricsSubsystem,
		Name:           "sessions_ended_total",
		Help:           "Terminal sessions that ended, by reason.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"reason"})
	transferredBytes = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace:      metricsNamespace,
		Subsystem:      metricsSubsystem,
		Name:           "bytes_total",
		Help:           "Terminal payload bytes: in is keystrokes to the command, out is its output.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"direction"})
	bindLatency = metrics.NewHistogram(&metrics.HistogramOpts{
		Namespace:      metricsNamespace,
		Subsystem:      metricsSubsystem,
		Name:           "bind_latency_seconds",
		Help:           "Time from the SockJS session's opening to the command's exec stream being up.",
		Buckets:        []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30},
		StabilityLevel: metrics.ALPHA,
	})

	registerOnce sync.Once
)

// registerMetrics registers once per process, however many Terminals (tests
// build many) there are: legacyregistry panics on a second registration.
func registerMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(activeSessions, endedSessions, transferredBytes, bindLatency)
	})
}

// terminalMetrics holds the children a session updates per frame, resolved
// once rather than by label on every write.
type terminalMetrics struct {
	active      metrics.GaugeMetric
	ended       *metrics.CounterVec
	bytesIn     metrics.CounterMetric
	bytesOut    metrics.CounterMetric
	bindLatency metrics.ObserverMetric
}

func newTerminalMetrics() terminalMetrics {
	registerMetrics()
	return terminalMetrics{
		active:      activeSessions,
		ended:       endedSessions,
		bytesIn:     transferredBytes.WithLabelValues("in"),
		bytesOut:    transferredBytes.WithLabelValues("out"),
		bindLatency: bindLatency,
	}
}
