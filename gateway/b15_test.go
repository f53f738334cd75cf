package gateway_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
)

// TestB15_UnavailableBeforeSync: with Consul unreachable at start, a route
// configured with consul_service and an unknown service both answer
// UNAVAILABLE naming the reason, never UNIMPLEMENTED; once Consul answers,
// the unknown service is UNIMPLEMENTED.
func TestB15_UnavailableBeforeSync(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		c := testutil.StartConsul(t)
		c.Stop()
		cfg := consulCfg(c.Addr)
		cfg.Routes = []config.Route{{Service: testutil.TestService, ConsulService: "svc"}}
		rec, logger := testutil.NewLogRecorder(t)
		h := e.startLog(t, cfg, logger)
		testutil.WaitFor(t, 10*time.Second, "a failed Consul query", func() bool {
			return rec.Count(slog.LevelWarn, "consul query failed") > 0
		})
		cc := testutil.Dial(t, h.addr)
		for _, svc := range []string{testutil.TestService, "unknown.Svc"} {
			_, err := testutil.Unary(t.Context(), cc, "/"+svc+"/Echo", nil)
			if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "discovery has not synced") {
				t.Fatalf("%s before sync: %v, want UNAVAILABLE naming the reason", svc, err)
			}
		}
		c.Start()
		select {
		case <-h.g.Synced():
		case <-time.After(20 * time.Second):
			t.Fatal("the gateway did not sync once Consul was up")
		}
		if _, err := testutil.Unary(t.Context(), cc, "/unknown.Svc/Echo", nil); status.Code(err) != codes.Unimplemented {
			t.Fatalf("unknown service after sync: %v, want UNIMPLEMENTED", err)
		}
		if _, err := testutil.Unary(t.Context(), cc, "/"+testutil.TestService+"/Echo", nil); status.Code(err) != codes.Unavailable {
			t.Fatalf("configured route with no instance after sync: %v, want UNAVAILABLE", err)
		}
	})
}

// TestB33_ConsulRestartedEmptyKeepsKnownBackends: a Consul agent that comes
// back without its state (index gone backwards) is not news that every
// backend left: the backends it knew keep serving, health-checked, for the
// drain grace while they register again; one that does not register again
// goes, and its route answers UNAVAILABLE for the grace before it is
// forgotten.
func TestB33_ConsulRestartedEmptyKeepsKnownBackends(t *testing.T) {
	c := testutil.StartConsul(t)
	a, b := testutil.StartBackend(t), testutil.StartBackend(t)
	b.Health.SetServingStatus("other.Svc", healthpb.HealthCheckResponse_SERVING)
	c.Register(t, "", testutil.RouteReg("a", "svc-a", a.Addr, testutil.TestService))
	c.Register(t, "", testutil.RouteReg("b", "svc-b", b.Addr, "other.Svc"))
	const grace = 3 * time.Second
	cfg := consulCfg(c.Addr)
	cfg.Health.DrainGrace = grace
	rec, logger := testutil.NewLogRecorder(t)
	h := startGatewayLog(t, cfg, logger)
	h.routable(t, testutil.TestService, 1)
	h.routable(t, "other.Svc", 1)
	cc := testutil.Dial(t, h.addr)

	c.Stop()
	c.Start()
	testutil.WaitFor(t, 20*time.Second, "the gateway to see Consul back without its state", func() bool {
		return rec.Count(slog.LevelInfo, "first answer after an outage") > 0
	})
	restarted := time.Now()
	// Only a comes back within the grace.
	c.Register(t, "", testutil.RouteReg("a", "svc-a", a.Addr, testutil.TestService))
	for time.Since(restarted) < grace/2 {
		for _, svc := range []string{testutil.TestService, "other.Svc"} {
			if _, err := testutil.Unary(t.Context(), cc, "/"+svc+"/Echo", nil); err != nil {
				t.Fatalf("%s %v after Consul came back empty: %v, want the known backend to keep serving", svc, time.Since(restarted), err)
			}
		}
	}
	testutil.WaitFor(t, 3*grace, "b to leave after the grace", func() bool {
		r, ok := h.g.State().Routes["other.Svc"]
		return !ok || r.Routable == 0
	})
	if _, err := testutil.Unary(t.Context(), cc, "/other.Svc/Echo", nil); status.Code(err) != codes.Unavailable {
		t.Fatalf("other.Svc just after it left Consul: %v, want UNAVAILABLE for the grace, not UNIMPLEMENTED", err)
	}
	if _, err := testutil.Unary(t.Context(), cc, "/"+testutil.TestService+"/Echo", nil); err != nil {
		t.Fatalf("test.Svc, registered again: %v", err)
	}
	testutil.WaitFor(t, 3*grace, "other.Svc to be forgotten", func() bool {
		_, ok := h.g.State().Routes["other.Svc"]
		return !ok
	})
	if _, err := testutil.Unary(t.Context(), cc, "/other.Svc/Echo", nil); status.Code(err) != codes.Unimplemented {
		t.Fatalf("other.Svc after the grace: %v, want UNIMPLEMENTED", err)
	}
}
