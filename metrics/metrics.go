// Package metrics turns what the gateway's stages report into Prometheus
// metrics, on a registry of its own, and writes the optional access log.
//
// Label sets are bounded: gRPC methods are labelled only for services the
// gateway routes, and at most MaxMethods distinct methods are labelled
// before the rest are counted as "other", so a client calling made-up
// method names cannot grow the series without end. A service or method
// name that is not valid UTF-8 or is longer than MaxLabelBytes is counted
// as "invalid": Prometheus refuses such label values (WithLabelValues
// panics), and the bytes of :path are the client's to choose.
package metrics

import (
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/healthgate/healthgate/proxy"
)

// MaxMethods bounds the distinct (service, method) label pairs.
const MaxMethods = 1000

// MaxLabelBytes bounds a service or method label value taken from a call's
// :path; longer names are counted as "invalid" rather than stored in every
// series and every scrape.
const MaxLabelBytes = 128

// Metrics owns the registry and every collector.
type Metrics struct {
	Registry *prometheus.Registry

	handled      *prometheus.CounterVec
	handling     *prometheus.HistogramVec
	inFlight     prometheus.Gauge
	payload      *prometheus.CounterVec
	transitions  *prometheus.CounterVec
	watchStarts  *prometheus.CounterVec
	rebuilds     *prometheus.CounterVec
	refused      *prometheus.CounterVec
	ejections    *prometheus.CounterVec
	consulTook   *prometheus.HistogramVec
	consulErrors *prometheus.CounterVec
	consulOK     prometheus.Gauge
	reqBytes     prometheus.Counter
	respBytes    prometheus.Counter
	attempts     *prometheus.CounterVec
	retries      *prometheus.CounterVec
	exhausted    *prometheus.CounterVec
	// routes are the retry series of each route, by route name, made on
	// its first call; as bounded as the routes are.
	routes  sync.Map // route name -> *routeSeries
	nRoutes atomic.Int64

	// methods caches the label children of each (service, method) seen,
	// so that a call costs a map load and atomic adds.
	methods  sync.Map // full method -> *methodSeries
	nMethods atomic.Int64
	other    *methodSeries
	unknown  *methodSeries
	invalid  *methodSeries

	access *slog.Logger
}

type methodSeries struct {
	handling prometheus.Observer
	codes    [17]atomic.Pointer[prometheus.Counter]
	service  string
	method   string
	m        *Metrics
}

func (s *methodSeries) count(code codes.Code) {
	if int(code) >= len(s.codes) {
		code = codes.Unknown
	}
	c := s.codes[code].Load()
	if c == nil {
		cc := s.m.handled.WithLabelValues(s.service, s.method, code.String())
		s.codes[code].Store(&cc)
		c = &cc
	}
	(*c).Inc()
}

// latencyBuckets span a gateway hop (about 100µs) to slow streams.
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// New registers every collector on a fresh registry. accessLog, if not nil,
// gets one line per proxied call.
func New(accessLog *slog.Logger) *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "healthgate_proxy_handled_total",
			Help: "Calls the gateway finished, by gRPC service, method and status code.",
		}, []string{"grpc_service", "grpc_method", "grpc_code"}),
		handling: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "healthgate_proxy_handling_seconds",
			Help:    "Time from a call's arrival to its end, by gRPC service and method.",
			Buckets: latencyBuckets,
		}, []string{"grpc_service", "grpc_method"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "healthgate_proxy_in_flight",
			Help: "Calls being forwarded now.",
		}),
		payload: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "healthgate_proxy_payload_bytes_total",
			Help: "Message payload bytes forwarded: request is client to backend, response backend to client. Counted when a call ends: request bytes a client still sends after the backend ended the call are not counted.",
		}, []string{"direction"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "healthgate_backend_health_transitions_total",
			Help: "Changes of a backend's grpc.health.v1 status, by the status reached.",
		}, []string{"backend", "health_service", "status"}),
		watchStarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "healthgate_backend_watch_starts_total",
			Help: "Health Watch streams opened, reconnects included.",
		}, []string{"backend", "health_service"}),
		rebuilds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "healthgate_balancer_picker_rebuilds_total",
			Help: "Times a route's picker was rebuilt because its routable backends changed.",
		}, []string{"route"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "healthgate_route_refused_total",
			Help: "Calls a route's limits refused before any backend saw them, by reason: max_in_flight (every backend full, UNAVAILABLE) or rate_limit (RESOURCE_EXHAUSTED).",
		}, []string{"route", "reason"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "healthgate_backend_ejections_total",
			Help: "Times passive failure detection ejected a backend whose calls kept failing at the backend itself.",
		}, []string{"backend"}),
		consulTook: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "healthgate_consul_query_duration_seconds",
			Help:    "Consul query latency, blocking wait included, by query kind (catalog, health).",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 30, 60, 300, 600},
		}, []string{"query"}),
		consulErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "healthgate_consul_query_errors_total",
			Help: "Consul queries that failed; the gateway keeps its last known backends meanwhile.",
		}, []string{"query"}),
		consulOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "healthgate_consul_last_success_timestamp_seconds",
			Help: "Unix time of the last successful Consul query; time() minus this is the sync age.",
		}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "healthgate_route_attempts_total",
			Help: "Backend attempts of the route's calls: one per call, and one more per retry or per backend that did not accept the call.",
		}, []string{"route"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "healthgate_route_retries_total",
			Help: "Retries of the route's calls after a backend answered with a status its retry policy lists (or failed before answering).",
		}, []string{"route"}),
		exhausted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "healthgate_route_retry_budget_exhausted_total",
			Help: "Retries the route's retry budget refused: the call ended with its backend's answer instead.",
		}, []string{"route"}),
		access: accessLog,
	}
	m.reqBytes = m.payload.WithLabelValues("request")
	m.respBytes = m.payload.WithLabelValues("response")
	m.other = &methodSeries{service: "other", method: "other", m: m}
	m.unknown = &methodSeries{service: "unknown", method: "unknown", m: m}
	m.invalid = &methodSeries{service: "invalid", method: "invalid", m: m}
	for _, s := range []*methodSeries{m.other, m.unknown, m.invalid} {
		s.handling = m.handling.WithLabelValues(s.service, s.method)
	}
	r.MustRegister(m.handled, m.handling, m.inFlight, m.payload, m.transitions, m.watchStarts,
		m.rebuilds, m.refused, m.ejections, m.consulTook, m.consulErrors, m.consulOK, m.attempts, m.retries, m.exhausted,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Register adds a collector of the caller's (the gateway's state).
func (m *Metrics) Register(c prometheus.Collector) { m.Registry.MustRegister(c) }

func (m *Metrics) series(fullMethod string, routed bool) *methodSeries {
	if !routed {
		return m.unknown
	}
	if s, ok := m.methods.Load(fullMethod); ok {
		return s.(*methodSeries)
	}
	if m.nMethods.Load() >= MaxMethods {
		return m.other
	}
	svc, method := splitMethod(fullMethod)
	if !labelSafe(svc) || !labelSafe(method) {
		// Not stored in methods either: a client sending junk must not
		// fill the cache or use up the MaxMethods budget.
		return m.invalid
	}
	s := &methodSeries{service: svc, method: method, m: m}
	s.handling = m.handling.WithLabelValues(svc, method)
	if prev, loaded := m.methods.LoadOrStore(fullMethod, s); loaded {
		return prev.(*methodSeries)
	}
	m.nMethods.Add(1)
	return s
}

// labelSafe reports whether s can be a label value: Prometheus panics on
// invalid UTF-8, and the length bound keeps a client from making each
// series and scrape as large as its headers.
func labelSafe(s string) bool {
	return len(s) <= MaxLabelBytes && utf8.ValidString(s)
}

func splitMethod(full string) (string, string) {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[:i], full[i+1:]
	}
	return "unknown", full
}

// WantsClientIdentity tells the proxy that the client's TLS identity is
// read only for the access log.
func (m *Metrics) WantsClientIdentity() bool { return m.access != nil }

// CallStarted implements proxy.Observer.
func (m *Metrics) CallStarted() { m.inFlight.Inc() }

// CallFinished implements proxy.Observer.
func (m *Metrics) CallFinished(c proxy.CallInfo) {
	m.inFlight.Dec()
	s := m.series(c.FullMethod, c.Routed)
	s.count(c.Code)
	s.handling.Observe(c.Duration.Seconds())
	if c.RequestBytes > 0 {
		m.reqBytes.Add(float64(c.RequestBytes))
	}
	if c.ResponseBytes > 0 {
		m.respBytes.Add(float64(c.ResponseBytes))
	}
	if c.Route != "" && c.Attempts > 0 {
		r := m.route(c.Route)
		r.attempts.Add(float64(c.Attempts))
		if c.Retries > 0 {
			r.retries.Add(float64(c.Retries))
		}
		if c.RetryBudgetExhausted {
			r.exhausted.Inc()
		}
	}
	if m.access != nil {
		attrs := []any{"method", c.FullMethod, "backend", c.Upstream, "code", c.Code.String(),
			"duration", c.Duration, "request_bytes", c.RequestBytes, "response_bytes", c.ResponseBytes}
		if c.Attempts > 1 {
			attrs = append(attrs, "attempts", c.Attempts)
		}
		if c.Retries > 0 {
			attrs = append(attrs, "retries", c.Retries)
		}
		if c.RetryBudgetExhausted {
			attrs = append(attrs, "retry_budget_exhausted", true)
		}
		if c.ClientIdentity != "" {
			attrs = append(attrs, "client", c.ClientIdentity)
		}
		if c.Peer != nil {
			attrs = append(attrs, "peer", c.Peer.String())
		}
		if c.TraceID != "" {
			attrs = append(attrs, "trace_id", c.TraceID)
		}
		m.access.Info("rpc", attrs...)
	}
}

// routeSeries are one route's retry series.
type routeSeries struct {
	attempts, retries, exhausted prometheus.Counter
}

// route is the series of route name, made on its first call. Route names
// come from the config and from Consul markers, whose services are
// gRPC service names: bounded like the methods, past MaxMethods routes
// the rest share "other".
func (m *Metrics) route(name string) *routeSeries {
	if r, ok := m.routes.Load(name); ok {
		return r.(*routeSeries)
	}
	if m.nRoutes.Load() >= MaxMethods || !labelSafe(name) {
		name = "other"
		if r, ok := m.routes.Load(name); ok {
			return r.(*routeSeries)
		}
	}
	r := &routeSeries{
		attempts:  m.attempts.WithLabelValues(name),
		retries:   m.retries.WithLabelValues(name),
		exhausted: m.exhausted.WithLabelValues(name),
	}
	if prev, loaded := m.routes.LoadOrStore(name, r); loaded {
		return prev.(*routeSeries)
	}
	m.nRoutes.Add(1)
	return r
}

// HealthChanged implements healthcheck.Events.
func (m *Metrics) HealthChanged(addr, svc string, _, to healthpb.HealthCheckResponse_ServingStatus) {
	m.transitions.WithLabelValues(label(addr), label(svc), to.String()).Inc()
}

// WatchStarted implements healthcheck.Events.
func (m *Metrics) WatchStarted(addr, svc string) {
	m.watchStarts.WithLabelValues(label(addr), label(svc)).Inc()
}

// ForgetBackend deletes every series labelled with the backend addr, so
// that a backend that has left is no longer exported and a gateway whose
// backends come and go keeps a bounded number of series. Call it once the
// backend's health watches have ended: an event reported after it would
// create the series again.
func (m *Metrics) ForgetBackend(addr string) {
	l := prometheus.Labels{"backend": label(addr)}
	m.transitions.DeletePartialMatch(l)
	m.watchStarts.DeletePartialMatch(l)
	m.ejections.DeletePartialMatch(l)
}

// PickerRebuilt is the balancer's OnRebuild.
func (m *Metrics) PickerRebuilt(route string, _ int) { m.rebuilds.WithLabelValues(route).Inc() }

// RouteRefused counts a call that a route's limits refused, and why
// (the balancer's OnRefused).
func (m *Metrics) RouteRefused(route, why string) {
	m.refused.WithLabelValues(route, why).Inc()
}

// BackendEjected implements healthcheck.Events.
func (m *Metrics) BackendEjected(addr string) { m.ejections.WithLabelValues(label(addr)).Inc() }

// ConsulQuery is the Consul source's OnQuery.
func (m *Metrics) ConsulQuery(kind string, took time.Duration, err error) {
	m.consulTook.WithLabelValues(kind).Observe(took.Seconds())
	if err != nil {
		m.consulErrors.WithLabelValues(kind).Inc()
		return
	}
	m.consulOK.Set(float64(time.Now().UnixNano()) / 1e9)
}
