package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/internal/testutil"
)

// adminServer serves the gateway's admin handler until the test ends.
func adminServer(t *testing.T, h *harness) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h.g.AdminHandler())
	t.Cleanup(srv.Close)
	return srv
}

// get fetches path from the admin server.
func get(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

// waitReadyz waits until /readyz answers code with a body containing want.
func waitReadyz(t *testing.T, srv *httptest.Server, code int, want string) {
	t.Helper()
	deadline := time.NewTimer(15 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		gotCode, gotBody := get(t, srv, "/readyz")
		if gotCode == code && strings.Contains(gotBody, want) {
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("/readyz: got %d %q, want %d with %q", gotCode, gotBody, code, want)
		case <-tick.C:
		}
	}
}

// TestB44_ReadyzFollowsSyncAndDrainNotRoutes: /readyz is the gateway's
// readiness (synced, not draining, listener up); routes short of backends
// are NOT_SERVING on their own.
func TestB44_ReadyzFollowsSyncAndDrainNotRoutes(t *testing.T) {
	c := testutil.StartConsul(t)
	// Consul is down when the gateway starts: discovery cannot sync until
	// it comes back.
	c.Stop()
	a, b := testutil.StartBackend(t), testutil.StartBackend(t)
	cfg := consulCfg(c.Addr)
	cfg.Consul.DisableAutoRoutes = true
	cfg.Routes = []config.Route{{Service: testutil.TestService, ConsulService: "svc", Health: healthcheck.RouteConfig{MinHealthy: 2}}}
	const drainDelay = time.Second
	cfg.Shutdown.DrainDelay = drainDelay
	rec, logger := testutil.NewLogRecorder(t)
	h := startGatewayLog(t, cfg, logger)
	srv := adminServer(t, h)

	testutil.WaitFor(t, 10*time.Second, "the gateway to fail a Consul query", func() bool {
		return rec.Count(slog.LevelWarn, "consul query failed") > 0
	})
	if code, body := get(t, srv, "/readyz"); code != http.StatusServiceUnavailable || body != "not ready: discovery has not synced\n" {
		t.Fatalf("/readyz before discovery synced: %d %q, want 503 naming the sync", code, body)
	}
	if code, body := get(t, srv, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz: %d %q, want 200 ok: liveness does not depend on discovery", code, body)
	}
	select {
	case <-h.g.Synced():
		t.Fatal("the gateway says it synced while Consul is down")
	default:
	}

	c.Start()
	select {
	case <-h.g.Synced():
	case <-time.After(20 * time.Second):
		t.Fatal("the gateway did not sync once Consul was back")
	}
	// Synced with no backend at all: the gateway is ready, the route is
	// not SERVING.
	waitReadyz(t, srv, http.StatusOK, "ready")
	routeServing := func() bool {
		for _, r := range getBackends(t, srv).Routes {
			if r.Route == testutil.TestService {
				return r.Serving
			}
		}
		return false
	}
	if routeServing() {
		t.Fatal("/backends: test.Svc SERVING with 0 of 2 backends")
	}

	c.Register(t, "", testutil.RouteReg("a", "svc", a.Addr, testutil.TestService))
	c.Register(t, "", testutil.RouteReg("b", "svc", b.Addr, testutil.TestService))
	testutil.WaitFor(t, 10*time.Second, "test.Svc SERVING with 2 of 2", routeServing)

	// One of the two goes NOT_SERVING: the route is short of its minimum
	// and says so; the gateway stays ready for its other routes.
	b.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
	testutil.WaitFor(t, 10*time.Second, "test.Svc NOT_SERVING with 1 of 2", func() bool { return !routeServing() })
	if code, body := get(t, srv, "/readyz"); code != http.StatusOK || body != "ready\n" {
		t.Fatalf("/readyz with one route short: %d %q, want 200 ready", code, body)
	}
	b.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_SERVING)
	testutil.WaitFor(t, 10*time.Second, "test.Svc SERVING again", routeServing)

	// The gateway's context ends: while it waits out the drain delay the
	// admin endpoint says it is draining.
	cancelled := time.Now()
	h.stop()
	waitReadyz(t, srv, http.StatusServiceUnavailable, "not ready: draining")
	saw := time.Since(cancelled)
	select {
	case <-h.done:
		t.Fatal("Run returned before /readyz was seen draining; the drain delay was not observed")
	default:
	}
	if saw >= drainDelay {
		t.Fatalf("/readyz said draining %v after the cancel, not within the %v drain delay", saw, drainDelay)
	}
	if code, _ := get(t, srv, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz during the drain: %d, want 200", code)
	}
	mfs := scrape(t, srv)
	if got := sample(t, mfs, "healthgate_draining"); got != 1 {
		t.Fatalf("healthgate_draining = %v during the drain, want 1", got)
	}
	if got := sample(t, mfs, "healthgate_route_serving", "route", testutil.TestService); got != 0 {
		t.Fatalf("healthgate_route_serving = %v during the drain, want 0", got)
	}
	select {
	case <-h.done:
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after the drain")
	}
	if d := time.Since(cancelled); d < drainDelay {
		t.Fatalf("Run returned %v after the cancel, before the %v drain delay", d, drainDelay)
	}
}

func TestB44_ReadyzNotServingBackend(t *testing.T) {
	be := testutil.StartBackend(t)
	be.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
	h := startGateway(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{be.Addr}}}})
	srv := adminServer(t, h)
	testutil.WaitFor(t, 10*time.Second, "the backend's NOT_SERVING to be known", func() bool {
		b, ok := h.backendIn(testutil.TestService, be.Addr)
		return ok && b.Status == healthpb.HealthCheckResponse_NOT_SERVING
	})
	if code, body := get(t, srv, "/readyz"); code != http.StatusOK || body != "ready\n" {
		t.Fatalf("/readyz with a NOT_SERVING backend: %d %q, want 200: one route down is that route's business", code, body)
	}
	if doc := getBackends(t, srv); doc.Routes[0].Serving || doc.Routes[0].Routable != 0 {
		t.Fatalf("/backends: route serving %v routable %d, want NOT_SERVING with 0", doc.Routes[0].Serving, doc.Routes[0].Routable)
	}
}

// backendsDoc is the /backends JSON as a consumer reads it: field names are
// part of the contract, so they are spelled out here rather than taken from
// the admin package's types.
type backendsDoc struct {
	Version  uint64 `json:"version"`
	Synced   bool   `json:"synced"`
	Draining bool   `json:"draining"`
	Ready    bool   `json:"ready"`
	Why      string `json:"not_ready_reason"`
	Routes   []struct {
		Route         string `json:"route"`
		HealthService string `json:"health_service"`
		Serving       bool   `json:"serving"`
		Routable      int    `json:"routable"`
		MinHealthy    int    `json:"min_healthy"`
		Gone          bool   `json:"gone"`
		Backends      []struct {
			Addr          string     `json:"addr"`
			Discovery     string     `json:"discovery"`
			Weight        int        `json:"weight"`
			HealthService string     `json:"health_service"`
			Health        string     `json:"health"`
			Routable      bool       `json:"routable"`
			Reason        string     `json:"reason"`
			Since         time.Time  `json:"since"`
			InFlight      int64      `json:"in_flight"`
			EjectedUntil  *time.Time `json:"ejected_until"`
			Leaving       bool       `json:"leaving"`
		} `json:"backends"`
	} `json:"routes"`
}

func getBackends(t *testing.T, srv *httptest.Server) backendsDoc {
	t.Helper()
	code, body := get(t, srv, "/backends")
	if code != http.StatusOK {
		t.Fatalf("/backends: %d %s", code, body)
	}
	var doc backendsDoc
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("/backends is not the documented JSON: %v\n%s", err, body)
	}
	return doc
}

func TestAdminBackendsAgainstConsul(t *testing.T) {
	start := time.Now()
	c := testutil.StartConsul(t)
	a, b := testutil.StartBackend(t), testutil.StartBackend(t)
	b.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
	c.Register(t, "", testutil.RouteReg("a", "svc", a.Addr, testutil.TestService))
	c.Register(t, "", testutil.RouteReg("b", "svc", b.Addr, testutil.TestService))
	h := startGateway(t, consulCfg(c.Addr))
	srv := adminServer(t, h)
	testutil.WaitFor(t, 15*time.Second, "a routable and b known NOT_SERVING", func() bool {
		ba, okA := h.backendIn(testutil.TestService, a.Addr)
		bb, okB := h.backendIn(testutil.TestService, b.Addr)
		return okA && ba.Routable && okB && bb.Status == healthpb.HealthCheckResponse_NOT_SERVING
	})

	// Two calls held open on a (b takes none: it is not routable).
	cc := testutil.Dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var streams []grpc.ClientStream
	var cancels []context.CancelFunc
	for range 2 {
		sctx, scancel := context.WithCancel(ctx)
		cancels = append(cancels, scancel)
		s, err := testutil.RawStream(sctx, cc, "/test.Svc/Block")
		if err != nil {
			t.Fatal(err)
		}
		m := []byte("hold")
		if err := s.SendMsg(&m); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	for i := range 2 {
		select {
		case <-a.Started():
		case <-b.Started():
			t.Fatal("a call reached the NOT_SERVING backend")
		case <-time.After(10 * time.Second):
			t.Fatalf("call %d did not reach backend a", i)
		}
	}

	doc := getBackends(t, srv)
	if !doc.Synced || !doc.Ready || doc.Draining || doc.Why != "" || doc.Version == 0 {
		t.Fatalf("/backends header: synced %v ready %v draining %v why %q version %d; want synced, ready, not draining",
			doc.Synced, doc.Ready, doc.Draining, doc.Why, doc.Version)
	}
	if len(doc.Routes) != 1 {
		t.Fatalf("/backends has %d routes, want 1: %+v", len(doc.Routes), doc.Routes)
	}
	r := doc.Routes[0]
	if r.Route != testutil.TestService || r.HealthService != testutil.TestService || !r.Serving || r.Routable != 1 || r.MinHealthy != 1 {
		t.Fatalf("route: got %q health_service %q serving %v routable %d min_healthy %d; want test.Svc, test.Svc, true, 1, 1",
			r.Route, r.HealthService, r.Serving, r.Routable, r.MinHealthy)
	}
	if len(r.Backends) != 2 {
		t.Fatalf("route has %d backends, want 2: %+v", len(r.Backends), r.Backends)
	}
	for _, be := range r.Backends {
		if be.Discovery != "passing" || be.Weight != 1 {
			t.Errorf("backend %s: discovery %q weight %d, want passing, 1", be.Addr, be.Discovery, be.Weight)
		}
		if be.Since.Before(start) || be.Since.After(time.Now()) {
			t.Errorf("backend %s: since %v, want a time during this test", be.Addr, be.Since)
		}
		switch be.Addr {
		case a.Addr:
			if be.Health != "SERVING" || !be.Routable || be.Reason != "" || be.InFlight != 2 {
				t.Errorf("backend a: health %q routable %v reason %q in_flight %d; want SERVING, true, no reason, 2",
					be.Health, be.Routable, be.Reason, be.InFlight)
			}
		case b.Addr:
			if be.Health != "NOT_SERVING" || be.Routable || !strings.Contains(be.Reason, "NOT_SERVING") || be.InFlight != 0 {
				t.Errorf("backend b: health %q routable %v reason %q in_flight %d; want NOT_SERVING, false, a reason naming it, 0",
					be.Health, be.Routable, be.Reason, be.InFlight)
			}
		default:
			t.Errorf("unexpected backend %s", be.Addr)
		}
	}

	// a goes NOT_SERVING with the two calls still open on it: it leaves the
	// rotation, and /backends still counts the calls it is finishing.
	a.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
	h.routable(t, testutil.TestService, 0)
	doc = getBackends(t, srv)
	if !doc.Ready || doc.Routes[0].Serving || doc.Routes[0].Routable != 0 {
		t.Fatalf("with nothing routable: ready %v why %q serving %v routable %d; want ready, the route NOT_SERVING with 0",
			doc.Ready, doc.Why, doc.Routes[0].Serving, doc.Routes[0].Routable)
	}
	for _, be := range doc.Routes[0].Backends {
		if be.Addr == a.Addr && (be.Routable || be.InFlight != 2) {
			t.Fatalf("backend a out of rotation: routable %v in_flight %d, want false, 2 (its calls are still open)", be.Routable, be.InFlight)
		}
	}

	for _, cancel := range cancels {
		cancel()
	}
	for _, s := range streams {
		var m []byte
		if err := s.RecvMsg(&m); status.Code(err) != codes.Canceled {
			t.Fatalf("held call ended with %v, want CANCELED", err)
		}
	}
	testutil.WaitFor(t, 10*time.Second, "in_flight to drop to 0 on a", func() bool {
		for _, be := range getBackends(t, srv).Routes[0].Backends {
			if be.Addr == a.Addr {
				return be.InFlight == 0
			}
		}
		return false
	})
}

// scrape reads /metrics.
func scrape(t *testing.T, srv *httptest.Server) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := get(t, srv, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return mfs
}

// series returns the metrics of family name whose labels include every
// label/value pair of kv.
func series(mfs map[string]*dto.MetricFamily, name string, kv ...string) []*dto.Metric {
	mf := mfs[name]
	if mf == nil {
		return nil
	}
	var out []*dto.Metric
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i+1 < len(kv); i += 2 {
			if v, ok := labels[kv[i]]; !ok || v != kv[i+1] {
				match = false
				break
			}
		}
		if match {
			out = append(out, m)
		}
	}
	return out
}

// sample is the value of the one series of name with the labels kv: a
// counter's or gauge's value, a histogram's count.
func sample(t *testing.T, mfs map[string]*dto.MetricFamily, name string, kv ...string) float64 {
	t.Helper()
	ms := series(mfs, name, kv...)
	if len(ms) != 1 {
		t.Fatalf("%s%v: %d series, want exactly 1", name, kv, len(ms))
	}
	m := ms[0]
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	t.Fatalf("%s%v: unsupported metric type", name, kv)
	return 0
}

// wantSample is the value one series should have.
type wantSample struct {
	name  string
	kv    []string
	value float64
}

// checkSamples checks every wanted value, so that a failure shows every
// mismatch at once.
func checkSamples(t *testing.T, mfs map[string]*dto.MetricFamily, wants []wantSample) {
	t.Helper()
	for _, w := range wants {
		ms := series(mfs, w.name, w.kv...)
		if len(ms) != 1 {
			t.Errorf("%s%v: %d series, want 1", w.name, w.kv, len(ms))
			continue
		}
		if got := sample(t, mfs, w.name, w.kv...); got != w.value {
			t.Errorf("%s%v = %v, want %v", w.name, w.kv, got, w.value)
		}
	}
}

func TestAdminMetricsAfterKnownCalls(t *testing.T) {
	start := time.Now()
	c := testutil.StartConsul(t)
	a := testutil.StartBackend(t)
	c.Register(t, "", testutil.RouteReg("a", "svc", a.Addr, testutil.TestService))
	h := startGateway(t, consulCfg(c.Addr))
	h.routable(t, testutil.TestService, 1)
	srv := adminServer(t, h)
	cc := testutil.Dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	payload := []byte("0123456789") // 10 bytes
	for i := range 5 {
		got, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", payload)
		if err != nil || string(got) != string(payload) {
			t.Fatalf("OK call %d: %q, %v", i, got, err)
		}
	}
	failCtx := metadata.AppendToOutgoingContext(ctx, "x-status-code", fmt.Sprint(int(codes.NotFound)))
	for i := range 2 {
		if _, err := testutil.Unary(failCtx, cc, "/test.Svc/Echo", payload); status.Code(err) != codes.NotFound {
			t.Fatalf("failing call %d: %v, want NOT_FOUND from the backend", i, err)
		}
	}
	if _, err := testutil.Unary(ctx, cc, "/nope.Svc/Echo", payload); status.Code(err) != codes.Unimplemented {
		t.Fatalf("unrouted call: %v, want UNIMPLEMENTED", err)
	}

	mfs := scrape(t, srv)
	be := a.Addr
	checkSamples(t, mfs, []wantSample{
		{"healthgate_proxy_handled_total", []string{"grpc_service", "test.Svc", "grpc_method", "Echo", "grpc_code", "OK"}, 5},
		{"healthgate_proxy_handled_total", []string{"grpc_service", "test.Svc", "grpc_method", "Echo", "grpc_code", "NotFound"}, 2},
		{"healthgate_proxy_handled_total", []string{"grpc_service", "unknown", "grpc_method", "unknown", "grpc_code", "Unimplemented"}, 1},
		{"healthgate_proxy_handling_seconds", []string{"grpc_service", "test.Svc", "grpc_method", "Echo"}, 7},
		{"healthgate_proxy_handling_seconds", []string{"grpc_service", "unknown", "grpc_method", "unknown"}, 1},
		// 7 calls sent 10 bytes each; the backend echoed each message,
		// the failing ones too, before its status.
		{"healthgate_proxy_payload_bytes_total", []string{"direction", "request"}, 70},
		{"healthgate_proxy_payload_bytes_total", []string{"direction", "response"}, 70},
		{"healthgate_proxy_in_flight", nil, 0},
		{"healthgate_backend_in_flight", []string{"backend", be}, 0},
		{"healthgate_backend_routable", []string{"route", "test.Svc", "backend", be}, 1},
		{"healthgate_route_routable_backends", []string{"route", "test.Svc"}, 1},
		{"healthgate_route_serving", []string{"route", "test.Svc"}, 1},
		{"healthgate_discovery_synced", nil, 1},
		{"healthgate_draining", nil, 0},
		{"healthgate_backend_health_transitions_total", []string{"backend", be, "health_service", "test.Svc", "status", "SERVING"}, 1},
		{"healthgate_backend_watch_starts_total", []string{"backend", be, "health_service", "test.Svc"}, 1},
	})
	if n := len(series(mfs, "healthgate_proxy_handled_total")); n != 3 {
		t.Errorf("healthgate_proxy_handled_total has %d series, want 3", n)
	}
	if n := len(series(mfs, "healthgate_backend_health_transitions_total")); n != 1 {
		t.Errorf("healthgate_backend_health_transitions_total has %d series before any flip, want 1", n)
	}
	if got := sample(t, mfs, "healthgate_state_version"); got < 1 {
		t.Errorf("healthgate_state_version = %v, want at least 1", got)
	}
	rebuilds := sample(t, mfs, "healthgate_balancer_picker_rebuilds_total", "route", "test.Svc")
	if rebuilds < 1 {
		t.Errorf("healthgate_balancer_picker_rebuilds_total{route=test.Svc} = %v, want at least 1", rebuilds)
	}
	// Consul was queried, successfully, during this test.
	var queries float64
	for _, m := range series(mfs, "healthgate_consul_query_duration_seconds") {
		queries += float64(m.GetHistogram().GetSampleCount())
	}
	if queries == 0 {
		t.Error("healthgate_consul_query_duration_seconds_count is 0 for a Consul-backed gateway")
	}
	for _, q := range []string{"catalog", "health"} {
		if len(series(mfs, "healthgate_consul_query_duration_seconds", "query", q)) != 1 {
			t.Errorf("no healthgate_consul_query_duration_seconds{query=%q}", q)
		}
	}
	last := sample(t, mfs, "healthgate_consul_last_success_timestamp_seconds")
	if lastT := time.Unix(0, int64(last*1e9)); lastT.Before(start.Add(-time.Second)) || lastT.After(time.Now().Add(time.Second)) {
		t.Errorf("healthgate_consul_last_success_timestamp_seconds = %v (%v), want a time during this test", last, lastT)
	}
	if n := len(series(mfs, "healthgate_consul_query_errors_total")); n != 0 {
		t.Errorf("healthgate_consul_query_errors_total has %d series with Consul up all along, want none", n)
	}

	// Cardinality: made-up methods on a service the gateway does not route
	// add no series; they all count as unknown/unknown.
	before := map[string]int{}
	for _, name := range []string{"healthgate_proxy_handled_total", "healthgate_proxy_handling_seconds"} {
		before[name] = len(series(mfs, name))
	}
	for i := range 5 {
		method := fmt.Sprintf("/made.Up%d/Method%d", i, i)
		if _, err := testutil.Unary(ctx, cc, method, payload); status.Code(err) != codes.Unimplemented {
			t.Fatalf("%s: %v, want UNIMPLEMENTED", method, err)
		}
	}
	mfs = scrape(t, srv)
	checkSamples(t, mfs, []wantSample{
		{"healthgate_proxy_handled_total", []string{"grpc_service", "unknown", "grpc_method", "unknown", "grpc_code", "Unimplemented"}, 6},
		{"healthgate_proxy_handling_seconds", []string{"grpc_service", "unknown", "grpc_method", "unknown"}, 6},
	})
	for _, name := range []string{"healthgate_proxy_handled_total", "healthgate_proxy_handling_seconds"} {
		if n := len(series(mfs, name)); n != before[name] {
			t.Errorf("%s has %d series after calls to made-up services, %d before: the made-up names grew the label set", name, n, before[name])
		}
		for _, m := range series(mfs, name) {
			for _, l := range m.GetLabel() {
				if strings.Contains(l.GetValue(), "made.Up") || strings.Contains(l.GetValue(), "nope.Svc") || strings.HasPrefix(l.GetValue(), "Method") {
					t.Errorf("%s has a series labelled with the unrouted name %q", name, l.GetValue())
				}
			}
		}
	}

	// A health flip, out and back: transitions, rebuilds and gauges follow.
	a.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
	h.routable(t, testutil.TestService, 0)
	mfs = scrape(t, srv)
	checkSamples(t, mfs, []wantSample{
		{"healthgate_backend_health_transitions_total", []string{"backend", be, "health_service", "test.Svc", "status", "NOT_SERVING"}, 1},
		{"healthgate_backend_health_transitions_total", []string{"backend", be, "health_service", "test.Svc", "status", "SERVING"}, 1},
		{"healthgate_backend_routable", []string{"route", "test.Svc", "backend", be}, 0},
		{"healthgate_route_routable_backends", []string{"route", "test.Svc"}, 0},
		{"healthgate_route_serving", []string{"route", "test.Svc"}, 0},
		{"healthgate_balancer_picker_rebuilds_total", []string{"route", "test.Svc"}, rebuilds + 1},
	})
	a.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_SERVING)
	h.routable(t, testutil.TestService, 1)
	mfs = scrape(t, srv)
	checkSamples(t, mfs, []wantSample{
		{"healthgate_backend_health_transitions_total", []string{"backend", be, "health_service", "test.Svc", "status", "NOT_SERVING"}, 1},
		{"healthgate_backend_health_transitions_total", []string{"backend", be, "health_service", "test.Svc", "status", "SERVING"}, 2},
		{"healthgate_backend_routable", []string{"route", "test.Svc", "backend", be}, 1},
		{"healthgate_route_routable_backends", []string{"route", "test.Svc"}, 1},
		{"healthgate_route_serving", []string{"route", "test.Svc"}, 1},
		{"healthgate_balancer_picker_rebuilds_total", []string{"route", "test.Svc"}, rebuilds + 2},
		// The flips travelled on the Watch stream opened at the start.
		{"healthgate_backend_watch_starts_total", []string{"backend", be, "health_service", "test.Svc"}, 1},
		{"healthgate_proxy_in_flight", nil, 0},
	})
}

func TestAdminHealthzStatusPageAndPprof(t *testing.T) {
	be := testutil.StartBackend(t)
	route := []config.Route{{Service: testutil.TestService, Backends: []string{be.Addr}}}
	for _, pprof := range []bool{false, true} {
		t.Run(fmt.Sprintf("pprof=%v", pprof), func(t *testing.T) {
			h := startGateway(t, config.Config{Pprof: pprof, Routes: route})
			srv := adminServer(t, h)
			if code, body := get(t, srv, "/healthz"); code != http.StatusOK || body != "ok\n" {
				t.Fatalf("/healthz: %d %q, want 200 ok", code, body)
			}
			if code, body := get(t, srv, "/"); code != http.StatusOK || !strings.Contains(strings.ToLower(body), "<html") {
				t.Fatalf("status page: %d, %d bytes; want 200 and HTML", code, len(body))
			}
			if code, _ := get(t, srv, "/no-such-page"); code != http.StatusNotFound {
				t.Fatalf("/no-such-page: %d, want 404", code)
			}
			for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline"} {
				code, body := get(t, srv, path)
				switch {
				case !pprof && code != http.StatusNotFound:
					t.Errorf("%s with pprof off: %d, want 404", path, code)
				case pprof && code != http.StatusOK:
					t.Errorf("%s with pprof on: %d, want 200", path, code)
				case pprof && path == "/debug/pprof/" && !strings.Contains(body, "goroutine"):
					t.Errorf("%s with pprof on does not list the goroutine profile", path)
				}
			}
		})
	}
}
