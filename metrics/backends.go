package metrics

// BackendRemoved implements healthcheck.Events: a backend the gateway
// forgets takes its series with it, so that churn in Consul does not grow
// /metrics without end. The checker reports it after the backend's Watches
// have ended, so no event recreates them.
func (m *Metrics) BackendRemoved(addr string) { m.ForgetBackend(addr) }

// label is s as a label value: names that come from discovery (a Consul
// registration's health-service meta) are as unchecked as a client's.
func label(s string) string {
	if labelSafe(s) {
		return s
	}
	return "invalid"
}
