package gateway

import (
	"github.com/prometheus/client_golang/prometheus"
)

// stateCollector turns the routing table into gauges at scrape time, so
// that nothing is kept in step with it: the table is the truth, and a
// backend that left it leaves /metrics with it.
type stateCollector struct{ g *Gateway }

var (
	routableDesc = prometheus.NewDesc("healthgate_backend_routable",
		"1 while the backend takes new calls for the route, 0 while it is out.", []string{"route", "backend"}, nil)
	backendInFlightDesc = prometheus.NewDesc("healthgate_backend_in_flight",
		"Calls in flight on the backend.", []string{"backend"}, nil)
	backendEjectedDesc = prometheus.NewDesc("healthgate_backend_ejected",
		"1 while passive failure detection keeps the backend out of the route.", []string{"route", "backend"}, nil)
	routeRoutableDesc = prometheus.NewDesc("healthgate_route_routable_backends",
		"Routable backends of the route.", []string{"route"}, nil)
	routeServingDesc = prometheus.NewDesc("healthgate_route_serving",
		"1 while the route reports SERVING: its minimum of routable backends, and the gateway is not draining.", []string{"route"}, nil)
	readyDesc = prometheus.NewDesc("healthgate_ready",
		"1 while the gateway is ready to take traffic (/readyz).", nil, nil)
	syncedDesc = prometheus.NewDesc("healthgate_discovery_synced",
		"1 once discovery has been heard from.", nil, nil)
	drainingDesc = prometheus.NewDesc("healthgate_draining",
		"1 once the gateway has begun to shut down.", nil, nil)
	stateVersionDesc = prometheus.NewDesc("healthgate_state_version",
		"Version of the routing table; it grows with every change.", nil, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{routableDesc, backendInFlightDesc, backendEjectedDesc, routeRoutableDesc, routeServingDesc, readyDesc, syncedDesc, drainingDesc, stateVersionDesc} {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.g.State()
	ready, _ := c.g.ready()
	ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, b2f(ready))
	if st == nil {
		ch <- prometheus.MustNewConstMetric(syncedDesc, prometheus.GaugeValue, 0)
		ch <- prometheus.MustNewConstMetric(drainingDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(syncedDesc, prometheus.GaugeValue, b2f(st.Synced))
	ch <- prometheus.MustNewConstMetric(drainingDesc, prometheus.GaugeValue, b2f(st.Draining))
	ch <- prometheus.MustNewConstMetric(stateVersionDesc, prometheus.GaugeValue, float64(st.Version))
	seen := map[string]bool{}
	for name, r := range st.Routes {
		ch <- prometheus.MustNewConstMetric(routeRoutableDesc, prometheus.GaugeValue, float64(r.Routable), name)
		ch <- prometheus.MustNewConstMetric(routeServingDesc, prometheus.GaugeValue, b2f(r.Serving), name)
		for _, b := range r.Backends {
			ch <- prometheus.MustNewConstMetric(routableDesc, prometheus.GaugeValue, b2f(b.Routable), name, b.Addr)
			ch <- prometheus.MustNewConstMetric(backendEjectedDesc, prometheus.GaugeValue, b2f(!b.EjectedUntil.IsZero()), name, b.Addr)
			if !seen[b.Addr] && b.Handle != nil {
				seen[b.Addr] = true
				ch <- prometheus.MustNewConstMetric(backendInFlightDesc, prometheus.GaugeValue, float64(b.Handle.InFlight()), b.Addr)
			}
		}
	}
}
