package peers

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

// Results of a forwarded request.
const (
	resultOK       = "ok"
	resultGone     = "gone"
	resultError    = "error"
	resultCanceled = "canceled"
)

var (
	forwarded = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace:      "console_apiserver",
		Subsystem:      "peers",
		Name:           "forwarded_requests_total",
		Help:           "Terminal requests this replica forwarded to the replica holding their SockJS session, by transport and result (ok, gone: that replica could not be reached, error, canceled).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"transport", "result"})
	served = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace:      "console_apiserver",
		Subsystem:      "peers",
		Name:           "served_requests_total",
		Help:           "Terminal requests other replicas forwarded to this one, by transport.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"transport"})
	routesCreated = metrics.NewCounter(&metrics.CounterOpts{
		Namespace:      "console_apiserver",
		Subsystem:      "peers",
		Name:           "routes_created_total",
		Help:           "SockJS sessions of the fallback transports this replica took on (and published a route for).",
		StabilityLevel: metrics.ALPHA,
	})
	ownedRoutes = metrics.NewGauge(&metrics.GaugeOpts{
		Namespace:      "console_apiserver",
		Subsystem:      "peers",
		Name:           "owned_sessions",
		Help:           "SockJS sessions of the fallback transports this replica holds.",
		StabilityLevel: metrics.ALPHA,
	})

	registerOnce sync.Once
)

// registerMetrics registers once per process, however many Peers (tests
// build several) there are.
func registerMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(forwarded, served, routesCreated, ownedRoutes)
	})
}
