package metrics

import "github.com/prometheus/client_golang/prometheus"

// BackendRemoved implements healthcheck.Events: a backend the gateway
// forgets takes its series with it, so that churn in Consul does not grow
// /metrics without end.
func (m *Metrics) BackendRemoved(addr string) {
	l := prometheus.Labels{"backend": addr}
	m.transitions.DeletePartialMatch(l)
	m.watchStarts.DeletePartialMatch(l)
	m.ejections.DeletePartialMatch(l)
}
