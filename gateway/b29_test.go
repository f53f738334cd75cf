package gateway_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/hashicorp/consul/api"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/internal/gatewaytest"
	"github.com/healthgate/healthgate/internal/testutil"
)

// linesWith returns the lines of log that contain every one of subs.
func linesWith(log string, subs ...string) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// b29Backend is one backend of one route in /backends.
type b29Backend struct {
	HealthService string `json:"health_service"`
	Health        string `json:"health"`
	Routable      bool   `json:"routable"`
	Reason        string `json:"reason"`
}

// backendDoc finds addr in route in /backends.
func backendDoc(t *testing.T, srv *httptest.Server, route, addr string) (b29Backend, bool) {
	t.Helper()
	doc := getBackends(t, srv)
	for _, r := range doc.Routes {
		if r.Route != route {
			continue
		}
		for _, b := range r.Backends {
			if b.Addr == addr {
				return b29Backend{HealthService: b.HealthService, Health: b.Health, Routable: b.Routable, Reason: b.Reason}, true
			}
		}
	}
	return b29Backend{}, false
}

// TestB29_PerInstanceHealthServiceName: a zero-config route asks each
// backend about the route's gRPC service unless the instance's Consul meta
// healthgate.health_service names another ("" included); a backend that
// does not know the name it is asked is out, and /backends and the log say
// which name and how to set it; a route's explicit health_service
// overrides the meta.
func TestB29_PerInstanceHealthServiceName(t *testing.T) {
	const svc = testutil.TestService
	c := testutil.StartConsul(t)
	agent := c.Client(t, "").Agent()
	register := func(reg *api.AgentServiceRegistration) {
		t.Helper()
		// Consul's own answer, not a retry loop: it is what refuses a meta
		// key it does not accept.
		if err := agent.ServiceRegister(reg); err != nil {
			t.Fatalf("register %s with meta %v: %v", reg.ID, reg.Meta, err)
		}
	}
	logs := &testutil.SyncBuffer{}
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(logs, tlog{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	g := gatewaytest.Start(t, consulCfg(c.Addr), logger)
	srv := httptest.NewServer(g.AdminHandler())
	t.Cleanup(srv.Close)
	cc := testutil.Dial(t, g.Addr)

	// bare's health server knows only "": asked for test.Svc, it answers
	// SERVICE_UNKNOWN.
	bare := testutil.StartOverallHealthBackend(t)
	bareReg := testutil.RouteReg("bare", "svc", bare.Addr, svc)
	register(bareReg)
	testutil.WaitFor(t, 15*time.Second, "bare to answer SERVICE_UNKNOWN for test.Svc", func() bool {
		b, ok := g.State().Backend(svc, bare.Addr)
		return ok && b.Status == healthpb.HealthCheckResponse_SERVICE_UNKNOWN
	})
	if b, _ := g.State().Backend(svc, bare.Addr); b.Routable || b.HealthService != svc {
		t.Fatalf("bare in the table: routable %v health service %q; want out, asked for %q", b.Routable, b.HealthService, svc)
	}
	doc, ok := backendDoc(t, srv, svc, bare.Addr)
	switch {
	case !ok:
		t.Fatalf("/backends does not list bare in %s", svc)
	case doc.Routable || doc.Health != "SERVICE_UNKNOWN" || doc.HealthService != svc:
		t.Fatalf("/backends bare: %+v; want not routable, SERVICE_UNKNOWN, health_service %q", doc, svc)
	case !strings.Contains(doc.Reason, `"`+svc+`"`) || !strings.Contains(doc.Reason, healthcheck.MetaHealthService):
		t.Fatalf("/backends bare's reason %q: want it to name the health service it was asked for (%q) and how to set another (%s)",
			doc.Reason, svc, healthcheck.MetaHealthService)
	}
	// The log line may land a moment after the table shows the status.
	testutil.WaitFor(t, 10*time.Second, fmt.Sprintf("a log line naming bare, the health service %q it was asked for and %s", svc, healthcheck.MetaHealthService), func() bool {
		return len(linesWith(logs.String(), "does not know the health-service name", "addr="+bare.Addr, "health_service="+svc, healthcheck.MetaHealthService+"=<name>")) > 0
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := testutil.Unary(ctx, cc, "/"+svc+"/Echo", []byte("x")); status.Code(err) != codes.Unavailable {
		t.Fatalf("call with bare out of rotation: %v, want UNAVAILABLE", err)
	}

	// The instance names "" in its meta: asked for its overall health, it
	// is SERVING, and routed.
	bareReg.Meta = map[string]string{healthcheck.MetaHealthService: ""}
	register(bareReg)
	testutil.WaitFor(t, 15*time.Second, `bare routable, asked for ""`, func() bool {
		b, ok := g.State().Backend(svc, bare.Addr)
		return ok && b.Routable && b.HealthService == ""
	})
	if doc, _ := backendDoc(t, srv, svc, bare.Addr); !doc.Routable || doc.HealthService != "" || doc.Health != "SERVING" || doc.Reason != "" {
		t.Fatalf(`/backends bare with meta "": %+v; want routable, health_service "", SERVING, no reason`, doc)
	}
	bare.Drain()
	if _, err := testutil.Unary(ctx, cc, "/"+svc+"/Echo", []byte("x")); err != nil {
		t.Fatalf("call with bare routable: %v", err)
	}
	if got := len(callsTo(bare, "/"+svc+"/Echo")); got != 1 {
		t.Fatalf("bare got %d calls, want the 1 made", got)
	}

	// A second instance names a service its server does not know, with the
	// tag form (the spelling of the route tag).
	full := testutil.StartBackend(t) // knows "" and test.Svc
	fullReg := testutil.RouteReg("full", "svc", full.Addr, svc)
	fullReg.Tags = append(fullReg.Tags, healthcheck.TagHealthService+"no.Such")
	register(fullReg)
	testutil.WaitFor(t, 15*time.Second, `full to answer SERVICE_UNKNOWN for "no.Such"`, func() bool {
		b, ok := g.State().Backend(svc, full.Addr)
		return ok && b.Status == healthpb.HealthCheckResponse_SERVICE_UNKNOWN && b.HealthService == "no.Such"
	})
	if doc, _ := backendDoc(t, srv, svc, full.Addr); doc.Routable || doc.HealthService != "no.Such" || !strings.Contains(doc.Reason, `"no.Such"`) {
		t.Fatalf(`/backends full with meta "no.Such": %+v; want not routable, asked for and naming "no.Such"`, doc)
	}

	// The route's own health_service wins over both instances' meta: bare
	// is asked for test.Svc again (and is out), full for test.Svc (and is
	// in).
	hs := svc
	cfg := consulCfg(c.Addr)
	cfg.Consul.DisableAutoRoutes = true
	cfg.Routes = []config.Route{{Service: svc, ConsulService: "svc", Health: healthcheck.RouteConfig{HealthService: &hs}}}
	cfg.Shutdown.DrainDelay = time.Millisecond // as gatewaytest.Start set it
	if restart, err := g.Reload(cfg); err != nil || len(restart) > 0 {
		t.Fatalf("reload: %v, needs restart %v; want it applied live", err, restart)
	}
	testutil.WaitFor(t, 15*time.Second, "the route's health_service to override the meta", func() bool {
		st := g.State()
		b, okB := st.Backend(svc, bare.Addr)
		f, okF := st.Backend(svc, full.Addr)
		return okB && okF && b.HealthService == svc && f.HealthService == svc &&
			b.Status == healthpb.HealthCheckResponse_SERVICE_UNKNOWN && !b.Routable && f.Routable
	})
	for _, tc := range []struct {
		name     string
		addr     string
		routable bool
		health   string
	}{
		{"bare (meta \"\")", bare.Addr, false, "SERVICE_UNKNOWN"},
		{"full (meta \"no.Such\")", full.Addr, true, "SERVING"},
	} {
		doc, ok := backendDoc(t, srv, svc, tc.addr)
		if !ok || doc.HealthService != svc || doc.Routable != tc.routable || doc.Health != tc.health {
			t.Errorf("/backends %s under health_service %q: %+v (listed %v); want health_service %q routable %v %s",
				tc.name, svc, doc, ok, svc, tc.routable, tc.health)
		}
	}
	for _, r := range getBackends(t, srv).Routes {
		if r.Route == svc && r.HealthService != svc {
			t.Errorf("/backends route health_service %q, want the configured %q", r.HealthService, svc)
		}
	}
	bare.Drain()
	full.Drain()
	for i := range 4 {
		if _, err := testutil.Unary(ctx, cc, "/"+svc+"/Echo", []byte("x")); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if b, f := len(callsTo(bare, "/"+svc+"/Echo")), len(callsTo(full, "/"+svc+"/Echo")); b != 0 || f != 4 {
		t.Fatalf("calls: bare %d, full %d; want all 4 on full, the only routable backend", b, f)
	}
}
