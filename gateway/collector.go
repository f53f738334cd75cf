package gateway

import (
	"github.com/prometheus/client_golang/prometheus"
)

// stateCollector turns the published state into gauges at scrape time, so
// that nothing is kept in step with the state: the state is the truth.
type stateCollector struct{ g *Gateway }

var (
	routableDesc = prometheus.NewDesc("healthgate_backend_routable",
		"1 while the backend takes new calls for the route, 0 while it is out.", []string{"route", "backend"}, nil)
	backendInFlightDesc = prometheus.NewDesc("healthgate_backend_in_flight",
		"Calls in flight on the backend.", []string{"backend"}, nil)
	routeRoutableDesc = prometheus.NewDesc("healthgate_route_routable_backends",
		"Routable backends of the route.", []string{"route"}, nil)
	routeServingDesc = prometheus.NewDesc("healthgate_route_serving",
		"1 while the route has its minimum of routable backends.", []string{"route"}, nil)
	syncedDesc = prometheus.NewDesc("healthgate_discovery_synced",
		"1 once discovery has been heard from.", nil, nil)
	drainingDesc = prometheus.NewDesc("healthgate_draining",
		"1 once the gateway has begun to shut down.", nil, nil)
	stateVersionDesc = prometheus.NewDesc("healthgate_state_version",
		"Version of the published state; it grows with every change.", nil, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{routableDesc, backendInFlightDesc, routeRoutableDesc, routeServingDesc, syncedDesc, drainingDesc, stateVersionDesc} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(drainingDesc, prometheus.GaugeValue, b2f(c.g.Draining()))
	st := c.g.State()
	if st == nil {
		ch <- prometheus.MustNewConstMetric(syncedDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(syncedDesc, prometheus.GaugeValue, b2f(st.Synced))
	ch <- prometheus.MustNewConstMetric(stateVersionDesc, prometheus.GaugeValue, float64(st.Version))
	seen := map[string]bool{}
	for name, r := range st.Routes {
		n := r.Routable()
		ch <- prometheus.MustNewConstMetric(routeRoutableDesc, prometheus.GaugeValue, float64(n), name)
		ch <- prometheus.MustNewConstMetric(routeServingDesc, prometheus.GaugeValue, b2f(n >= c.g.MinHealthy(name) && !c.g.Draining()), name)
		for _, b := range r.Backends {
			ch <- prometheus.MustNewConstMetric(routableDesc, prometheus.GaugeValue, b2f(b.Routable), name, b.Addr)
			if !seen[b.Addr] {
				seen[b.Addr] = true
				ch <- prometheus.MustNewConstMetric(backendInFlightDesc, prometheus.GaugeValue, float64(c.g.InFlight(b.Conn)), b.Addr)
			}
		}
	}
}
