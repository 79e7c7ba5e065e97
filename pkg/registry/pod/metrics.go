package pod

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

var (
	sessionsCreated = metrics.NewCounter(&metrics.CounterOpts{
		Namespace:      "console_apiserver",
		Subsystem:      "shell",
		Name:           "sessions_created_total",
		Help:           "Shell sessions created (pods/shell create answered 201).",
		StabilityLevel: metrics.ALPHA,
	})
	registerOnce sync.Once
)

// RegisterMetrics registers the registry's metrics; calling it again is a no-op.
func RegisterMetrics() {
	registerOnce.Do(func() { legacyregistry.MustRegister(sessionsCreated) })
}
