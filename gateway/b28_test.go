package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/internal/gatewaytest"
	"github.com/healthgate/healthgate/internal/testutil"
)

// minRoute is the second route of B28: two backends, min_healthy 2.
const minRoute = "test.Min"

// oneTruth compares what the five readers of the routing table show with
// the table itself: the gateway's gRPC health, /backends, /readyz,
// /metrics and the balancer (calls through the gateway).
type oneTruth struct {
	t   *testing.T
	g   *gatewaytest.Gateway
	srv *httptest.Server
	cc  *grpc.ClientConn
	hc  healthpb.HealthClient
	// all is every backend server started, replaced ones included: a call
	// that landed anywhere is found.
	all []*testutil.Backend
	// versions are the table versions the five were found to agree at.
	versions []uint64
}

func servingStatus(ok bool) healthpb.HealthCheckResponse_ServingStatus {
	if ok {
		return healthpb.HealthCheckResponse_SERVING
	}
	return healthpb.HealthCheckResponse_NOT_SERVING
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// agree waits until the table shows what (cond), then checks that the five
// readers show that very table. The readers take the table asynchronously,
// so each attempt reads the State, then the five, then the State again: an
// attempt during which the version moved is made again. A disagreement at a
// version that stays put is a failure; so that a publish caught halfway
// (the balancer and gRPC health take a new table a moment before the
// State pointer does) is not mistaken for one, a disagreement fails only
// once the version has stayed put for a second more.
func (o *oneTruth) agree(what string, cond func(*healthcheck.State) bool) *healthcheck.State {
	o.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for attempt := 1; ; attempt++ {
		testutil.WaitFor(o.t, 15*time.Second, "the table to show "+what, func() bool { return cond(o.g.State()) })
		st := o.g.State()
		if !cond(st) {
			continue
		}
		bad := o.compare(st)
		if o.g.State().Version != st.Version || len(bad) > 0 && versionMoves(o.g, st.Version, time.Second) {
			if time.Now().After(deadline) {
				o.t.Fatalf("%s: the table kept changing for 20s (%d attempts); cannot compare at one version", what, attempt)
			}
			continue
		}
		if len(bad) > 0 {
			o.t.Fatalf("%s: at table version %d the readers disagree with the table:\n  %s\ntable: %s",
				what, st.Version, strings.Join(bad, "\n  "), describeState(st))
		}
		o.t.Logf("B28 %s: gRPC health, /backends, /readyz, /metrics and the balancer agree with table version %d (attempt %d)", what, st.Version, attempt)
		o.versions = append(o.versions, st.Version)
		return st
	}
}

// versionMoves waits up to within for the table to leave version v. A
// publish in progress ends within microseconds: a table that stays at v
// that long is the one the readers were compared with.
func versionMoves(g *gatewaytest.Gateway, v uint64, within time.Duration) bool {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for g.State().Version == v {
		select {
		case <-deadline.C:
			return false
		case <-tick.C:
		}
	}
	return true
}

// compare reads the five and lists every way they differ from st.
func (o *oneTruth) compare(st *healthcheck.State) []string {
	o.t.Helper()
	var bad []string
	badf := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }
	ready, why := st.Ready()
	routes := slices.Sorted(maps.Keys(st.Routes))

	// The listener is up: what /readyz says is the table's, not the
	// listener's.
	if !o.g.Listening() {
		badf("the gateway's listener is not serving; the checks need it up")
	}

	// (a) gRPC health on the gateway's listener.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	wantList := map[string]healthpb.HealthCheckResponse_ServingStatus{"": servingStatus(ready)}
	for _, name := range routes {
		if name != discovery.DefaultRoute {
			wantList[name] = servingStatus(st.Routes[name].Serving)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(wantList)) {
		resp, err := o.hc.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
		if err != nil || resp.GetStatus() != wantList[name] {
			badf("gRPC health Check(%q): got %v, %v; want %v", name, resp.GetStatus(), err, wantList[name])
		}
	}
	if list, err := o.hc.List(ctx, &healthpb.HealthListRequest{}); err != nil {
		badf("gRPC health List: %v", err)
	} else {
		got := map[string]healthpb.HealthCheckResponse_ServingStatus{}
		for k, v := range list.GetStatuses() {
			got[k] = v.GetStatus()
		}
		if !maps.Equal(got, wantList) {
			badf("gRPC health List: got %v, want %v", got, wantList)
		}
	}

	// (b) /backends.
	code, body := get(o.t, o.srv, "/backends")
	var doc backendsDoc
	if err := json.Unmarshal([]byte(body), &doc); code != http.StatusOK || err != nil {
		badf("/backends: %d %v", code, err)
	}
	if doc.Version != st.Version {
		badf("/backends: version %d, want %d", doc.Version, st.Version)
	}
	if doc.Ready != ready || doc.Why != why || doc.Synced != st.Synced || doc.Draining != st.Draining {
		badf("/backends: ready %v (%q) synced %v draining %v; want %v (%q) %v %v",
			doc.Ready, doc.Why, doc.Synced, doc.Draining, ready, why, st.Synced, st.Draining)
	}
	var docRoutes []string
	for _, rv := range doc.Routes {
		docRoutes = append(docRoutes, rv.Route)
		r, ok := st.Routes[rv.Route]
		if !ok {
			continue
		}
		if rv.Serving != r.Serving || rv.Routable != r.Routable || rv.MinHealthy != r.MinHealthy ||
			rv.HealthService != r.HealthService || rv.Gone != r.Gone {
			badf("/backends route %s: serving %v routable %d min %d health_service %q gone %v; want %v %d %d %q %v",
				rv.Route, rv.Serving, rv.Routable, rv.MinHealthy, rv.HealthService, rv.Gone,
				r.Serving, r.Routable, r.MinHealthy, r.HealthService, r.Gone)
		}
		if len(rv.Backends) != len(r.Backends) {
			badf("/backends route %s: %d backends, want %d", rv.Route, len(rv.Backends), len(r.Backends))
			continue
		}
		for i, bv := range rv.Backends {
			b := r.Backends[i]
			ejected := bv.EjectedUntil != nil
			if bv.Addr != b.Addr || bv.Routable != b.Routable || bv.Reason != b.Reason || bv.Leaving != b.Leaving ||
				bv.Health != b.Status.String() || bv.HealthService != b.HealthService || ejected != !b.EjectedUntil.IsZero() ||
				ejected && !bv.EjectedUntil.Equal(b.EjectedUntil) {
				badf("/backends route %s backend %d: %+v; want addr %s routable %v reason %q leaving %v health %s health_service %q ejected_until %v",
					rv.Route, i, bv, b.Addr, b.Routable, b.Reason, b.Leaving, b.Status, b.HealthService, b.EjectedUntil)
			}
		}
	}
	if !slices.Equal(docRoutes, routes) {
		badf("/backends routes %v, want %v", docRoutes, routes)
	}

	// (c) /readyz.
	code, body = get(o.t, o.srv, "/readyz")
	wantCode, wantBody := http.StatusOK, "ready\n"
	if !ready {
		wantCode, wantBody = http.StatusServiceUnavailable, "not ready: "+why+"\n"
	}
	if code != wantCode || body != wantBody {
		badf("/readyz: %d %q, want %d %q", code, body, wantCode, wantBody)
	}

	// (d) /metrics.
	mfs := scrape(o.t, o.srv)
	one := func(name string, want float64, kv ...string) {
		ms := series(mfs, name, kv...)
		if len(ms) != 1 {
			badf("%s%v: %d series, want 1", name, kv, len(ms))
			return
		}
		if got := metricValue(ms[0]); got != want {
			badf("%s%v = %v, want %v", name, kv, got, want)
		}
	}
	one("healthgate_state_version", float64(st.Version))
	one("healthgate_ready", b2f(ready))
	one("healthgate_draining", b2f(st.Draining))
	one("healthgate_discovery_synced", b2f(st.Synced))
	nBackends := 0
	for _, name := range routes {
		r := st.Routes[name]
		one("healthgate_route_serving", b2f(r.Serving), "route", name)
		one("healthgate_route_routable_backends", float64(r.Routable), "route", name)
		for _, b := range r.Backends {
			nBackends++
			one("healthgate_backend_routable", b2f(b.Routable), "route", name, "backend", b.Addr)
			one("healthgate_backend_ejected", b2f(!b.EjectedUntil.IsZero()), "route", name, "backend", b.Addr)
		}
	}
	for _, name := range []string{"healthgate_backend_routable", "healthgate_backend_ejected"} {
		if n := len(series(mfs, name)); n != nBackends {
			badf("%s: %d series, want one per backend of each route in the table: %d", name, n, nBackends)
		}
	}
	for _, name := range []string{"healthgate_route_serving", "healthgate_route_routable_backends"} {
		if n := len(series(mfs, name)); n != len(routes) {
			badf("%s: %d series, want one per route in the table: %d", name, n, len(routes))
		}
	}

	// (e) The balancer: calls land only on routable backends, each of them
	// takes some (round robin, 2 calls per routable backend), and a route
	// with none fails at once, UNAVAILABLE, without a backend stream.
	for _, name := range routes {
		bad = append(bad, o.calls(st.Routes[name])...)
	}
	return bad
}

// calls sends calls for r through the gateway and checks where they went.
func (o *oneTruth) calls(r *healthcheck.Route) []string {
	o.t.Helper()
	var bad []string
	method := "/" + r.Name + "/Echo"
	for _, b := range o.all {
		b.Drain()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r.Routable == 0 {
		for i := range 2 {
			start := time.Now()
			_, err := testutil.Unary(ctx, o.cc, method, []byte("x"))
			took := time.Since(start)
			if s := status.Convert(err); s.Code() != codes.Unavailable || !strings.Contains(s.Message(), "no healthy upstream") {
				bad = append(bad, fmt.Sprintf("balancer: call %d to %s with no routable backend: %v, want UNAVAILABLE no healthy upstream", i, r.Name, err))
			}
			// At once: no wait for a backend to come back (generous bound
			// for -race on a loaded machine; it takes well under 10ms).
			if took > time.Second {
				bad = append(bad, fmt.Sprintf("balancer: call %d to %s with no routable backend took %v, want at once (< 1s)", i, r.Name, took))
			}
		}
		for _, b := range o.all {
			if got := callsTo(b, method); len(got) > 0 {
				bad = append(bad, fmt.Sprintf("balancer: %s with no routable backend: backend %s got %d calls", r.Name, b.Addr, len(got)))
			}
		}
		return bad
	}
	n := 2 * r.Routable
	for i := range n {
		if _, err := testutil.Unary(ctx, o.cc, method, []byte("x")); err != nil {
			bad = append(bad, fmt.Sprintf("balancer: call %d to %s with %d routable: %v", i, r.Name, r.Routable, err))
		}
	}
	landed := map[string]int{}
	total := 0
	for _, b := range o.all {
		if got := len(callsTo(b, method)); got > 0 {
			landed[b.Addr] += got
			total += got
		}
	}
	if total != n {
		bad = append(bad, fmt.Sprintf("balancer: %d calls to %s reached backends, want %d", total, r.Name, n))
	}
	for addr, k := range landed {
		if b, ok := findBackend(r, addr); !ok || !b.Routable {
			bad = append(bad, fmt.Sprintf("balancer: %d calls to %s landed on %s, which the table does not mark routable", k, r.Name, addr))
		}
	}
	for _, b := range r.Backends {
		if b.Routable && landed[b.Addr] == 0 {
			bad = append(bad, fmt.Sprintf("balancer: routable backend %s of %s got none of %d round-robin calls", b.Addr, r.Name, n))
		}
	}
	return bad
}

func findBackend(r *healthcheck.Route, addr string) (healthcheck.Backend, bool) {
	for _, b := range r.Backends {
		if b.Addr == addr {
			return *b, true
		}
	}
	return healthcheck.Backend{}, false
}

// callsTo takes the finished calls to method that b has recorded.
func callsTo(b *testutil.Backend, method string) []testutil.Call {
	var out []testutil.Call
	for {
		select {
		case c := <-b.Calls():
			if c.Method == method {
				out = append(out, c)
			}
		default:
			return out
		}
	}
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	return -1
}

// describeState is a one-line summary of a table for failure messages.
func describeState(st *healthcheck.State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "v%d synced=%v draining=%v; ", st.Version, st.Synced, st.Draining)
	for _, name := range slices.Sorted(maps.Keys(st.Routes)) {
		r := st.Routes[name]
		fmt.Fprintf(&b, "%s serving=%v routable=%d/%d:", name, r.Serving, r.Routable, r.MinHealthy)
		for _, be := range r.Backends {
			fmt.Fprintf(&b, " %s=%s routable=%v leaving=%v ejected=%v (%s)", be.Addr, be.Status, be.Routable, be.Leaving, !be.EjectedUntil.IsZero(), be.Reason)
		}
		b.WriteString("; ")
	}
	return b.String()
}

// backendIs tests one backend of one route in a table.
func backendIs(route, addr string, f func(healthcheck.Backend) bool) func(*healthcheck.State) bool {
	return func(st *healthcheck.State) bool {
		b, ok := st.Backend(route, addr)
		return ok && f(b)
	}
}

func all(conds ...func(*healthcheck.State) bool) func(*healthcheck.State) bool {
	return func(st *healthcheck.State) bool {
		if st == nil {
			return false
		}
		for _, c := range conds {
			if !c(st) {
				return false
			}
		}
		return true
	}
}

func routableIs(route, addr string, want bool) func(*healthcheck.State) bool {
	return backendIs(route, addr, func(b healthcheck.Backend) bool { return b.Routable == want })
}

func ejected(route, addr string) func(*healthcheck.State) bool {
	return backendIs(route, addr, func(b healthcheck.Backend) bool { return !b.Routable && !b.EjectedUntil.IsZero() })
}

// restartOn starts a new backend on the address of one that was stopped.
func restartOn(t *testing.T, addr string) *testutil.Backend {
	t.Helper()
	var lis net.Listener
	testutil.WaitFor(t, 10*time.Second, "the port "+addr+" to be free again", func() bool {
		var err error
		lis, err = net.Listen("tcp", addr)
		return err == nil
	})
	b := testutil.StartBackendOn(lis)
	t.Cleanup(b.Stop)
	return b
}

// TestB28_OneTruthAgreesAtEveryVersion drives every cause of routability
// in turn (a health flip, a refused connection, ejection of one and then of
// every backend, a route short of min_healthy, a backend draining out after
// a reload drops it, and the gateway's own drain) and, at the table version
// that shows each, checks that the gateway's gRPC health, /backends,
// /readyz, /metrics and the balancer all say what the table says.
func TestB28_OneTruthAgreesAtEveryVersion(t *testing.T) {
	b1, b2, b3 := testutil.StartBackend(t), testutil.StartBackend(t), testutil.StartBackend(t)
	m1, m2 := testutil.StartBackend(t), testutil.StartBackend(t)
	for _, m := range []*testutil.Backend{m1, m2} {
		m.Health.SetServingStatus(minRoute, healthpb.HealthCheckResponse_SERVING)
	}
	const (
		ejection   = 3 * time.Second
		drainDelay = 3 * time.Second
	)
	svc := testutil.TestService
	cfg := config.Config{
		Routes: []config.Route{
			{Service: svc, Backends: []string{b1.Addr, b2.Addr, b3.Addr}},
			{Service: minRoute, Backends: []string{m1.Addr, m2.Addr}, Health: healthcheck.RouteConfig{MinHealthy: 2}},
		},
		Outlier: healthcheck.OutlierConfig{
			ConsecutiveFailures: 2, Ejection: ejection, MaxEjectionPercent: 100, Codes: []string{"UNAVAILABLE"},
		},
		// A backend a reload drops stays in the table, draining, for the
		// rest of the test.
		Health:   healthcheck.Settings{DrainGrace: time.Minute},
		Shutdown: config.Shutdown{DrainDelay: drainDelay},
	}
	g := gatewaytest.Start(t, cfg, nil)
	srv := httptest.NewServer(g.AdminHandler())
	t.Cleanup(srv.Close)
	cc := testutil.Dial(t, g.Addr)
	o := &oneTruth{t: t, g: g, srv: srv, cc: cc, hc: healthpb.NewHealthClient(cc), all: []*testutil.Backend{b1, b2, b3, m1, m2}}

	allRoutable := all(
		routableIs(svc, b1.Addr, true), routableIs(svc, b2.Addr, true), routableIs(svc, b3.Addr, true),
		routableIs(minRoute, m1.Addr, true), routableIs(minRoute, m2.Addr, true),
		func(st *healthcheck.State) bool { ok, _ := st.Ready(); return ok },
	)
	st := o.agree("every backend routable", allRoutable)
	if !st.Routes[svc].Serving || !st.Routes[minRoute].Serving {
		t.Fatalf("both routes should be SERVING with every backend routable: %s", describeState(st))
	}

	// Health: b1 says NOT_SERVING.
	b1.Health.SetServingStatus(svc, healthpb.HealthCheckResponse_NOT_SERVING)
	o.agree("b1 NOT_SERVING", backendIs(svc, b1.Addr, func(b healthcheck.Backend) bool {
		return !b.Routable && b.Status == healthpb.HealthCheckResponse_NOT_SERVING
	}))
	b1.Health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	o.agree("b1 SERVING again", allRoutable)

	// Connection: b2 stops; its address refuses connections.
	b2.Stop()
	o.agree("b2's connection refused", backendIs(svc, b2.Addr, func(b healthcheck.Backend) bool {
		return !b.Routable && strings.Contains(b.Reason, "TRANSIENT_FAILURE")
	}))
	b2 = restartOn(t, b2.Addr)
	o.all = append(o.all, b2)
	o.agree("b2 back", allRoutable)

	// Ejection of one backend: b1 answers UNAVAILABLE until it is ejected,
	// then answers well again (it stays out until its ejection ends).
	callUntil := func(what string, cond func(*healthcheck.State) bool) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		testutil.WaitFor(t, 15*time.Second, what, func() bool {
			if cond(g.State()) {
				return true
			}
			_, err := testutil.Unary(ctx, cc, "/"+svc+"/Echo", []byte("x"))
			if c := status.Code(err); c != codes.OK && c != codes.Unavailable {
				t.Fatalf("a call while driving ejections failed with %v", err)
			}
			return false
		})
	}
	b1.FailWith.Store(int32(codes.Unavailable))
	callUntil("b1 to be ejected", ejected(svc, b1.Addr))
	b1.FailWith.Store(0)
	o.agree("b1 ejected", all(ejected(svc, b1.Addr), routableIs(svc, b2.Addr, true), routableIs(svc, b3.Addr, true)))

	// Ejection of every backend of the route (max_ejection_percent 100).
	for _, b := range []*testutil.Backend{b1, b2, b3} {
		b.FailWith.Store(int32(codes.Unavailable))
	}
	everyEjected := all(ejected(svc, b1.Addr), ejected(svc, b2.Addr), ejected(svc, b3.Addr))
	callUntil("every backend of test.Svc to be ejected", everyEjected)
	st = o.agree("every backend of test.Svc ejected", everyEjected)
	if r := st.Routes[svc]; r.Serving || r.Routable != 0 {
		t.Fatalf("test.Svc with every backend ejected: serving %v routable %d, want NOT_SERVING with 0", r.Serving, r.Routable)
	}
	if ok, _ := st.Ready(); !ok || !st.Routes[minRoute].Serving {
		t.Fatalf("every backend of test.Svc ejected took the gateway or the other route down: %s", describeState(st))
	}
	for _, b := range []*testutil.Backend{b1, b2, b3} {
		b.FailWith.Store(0)
	}
	o.agree("the ejections over", allRoutable)

	// min_healthy: test.Min keeps one routable backend of the 2 it needs.
	m1.Health.SetServingStatus(minRoute, healthpb.HealthCheckResponse_NOT_SERVING)
	st = o.agree("test.Min short of min_healthy", all(routableIs(minRoute, m1.Addr, false), routableIs(minRoute, m2.Addr, true)))
	if r := st.Routes[minRoute]; r.Serving || r.Routable != 1 {
		t.Fatalf("test.Min with 1 of min 2 routable: serving %v routable %d, want NOT_SERVING with 1", r.Serving, r.Routable)
	}
	m1.Health.SetServingStatus(minRoute, healthpb.HealthCheckResponse_SERVING)
	o.agree("test.Min back to its minimum", allRoutable)

	// Discovery: a reload drops b3; it drains out of the route.
	cfg2 := cfg
	cfg2.Routes = slices.Clone(cfg.Routes)
	cfg2.Routes[0].Backends = []string{b1.Addr, b2.Addr}
	if restart, err := g.Reload(cfg2); err != nil || len(restart) > 0 {
		t.Fatalf("reload: %v, needs restart %v; want it applied live", err, restart)
	}
	o.agree("b3 draining", all(routableIs(svc, b1.Addr, true), routableIs(svc, b2.Addr, true),
		backendIs(svc, b3.Addr, func(b healthcheck.Backend) bool {
			return !b.Routable && b.Leaving && strings.HasPrefix(b.Reason, "draining")
		})))

	// The gateway drains: every route NOT_SERVING, /readyz and "" not
	// ready, while the listener still takes calls for the drain delay.
	g.Stop()
	st = o.agree("the gateway draining", func(st *healthcheck.State) bool { return st.Draining })
	for name, r := range st.Routes {
		if r.Serving {
			t.Errorf("route %s SERVING while the gateway drains", name)
		}
	}
	if ok, why := st.Ready(); ok || why != "draining" {
		t.Errorf("State.Ready() while draining: %v %q, want false \"draining\"", ok, why)
	}
	// Each step was a table of its own, later than the one before.
	if len(o.versions) != 12 {
		t.Fatalf("agreement checked at %d versions %v, want 12 steps", len(o.versions), o.versions)
	}
	for i := 1; i < len(o.versions); i++ {
		if o.versions[i] <= o.versions[i-1] {
			t.Fatalf("agreement checked at versions %v, want each step at a later version than the one before", o.versions)
		}
	}
}
