package gateway_test

import (
	"testing"
	"time"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
)

// TestConfiguredRouteIsAuthoritative: a route the config file defines takes
// its backends from the file (static or its consul_service) only; a Consul
// service that anyone registers with that route's tag does not join it,
// while auto routes keep working for routes the file does not define.
func TestConfiguredRouteIsAuthoritative(t *testing.T) {
	c := testutil.StartConsul(t)
	owned, listed, stranger, other := testutil.StartBackend(t), testutil.StartBackend(t), testutil.StartBackend(t), testutil.StartBackend(t)
	go drainCalls(t, stranger)
	cfg := consulCfg(c.Addr)
	cfg.Routes = []config.Route{
		{Service: testutil.TestService, Backends: []string{owned.Addr}},
		{Service: "listed.Svc", ConsulService: "listed"},
	}
	listed.Health.SetServingStatus("listed.Svc", 1)
	other.Health.SetServingStatus("other.Svc", 1)
	stranger.Health.SetServingStatus("listed.Svc", 1)
	stranger.Health.SetServingStatus("other.Svc", 1)
	h := startGateway(t, cfg)
	c.Register(t, "", testutil.RouteReg("listed", "listed", listed.Addr, "listed.Svc"))
	c.Register(t, "", testutil.RouteReg("stranger", "stranger", stranger.Addr, testutil.TestService, "listed.Svc"))
	c.Register(t, "", testutil.RouteReg("other", "other", other.Addr, "other.Svc"))
	h.routable(t, "other.Svc", 1) // auto routes still work
	h.routable(t, "listed.Svc", 1)
	h.routable(t, testutil.TestService, 1)
	// Consul has answered everything by now: the stranger would be in the
	// table if tags could add it.
	testutil.WaitFor(t, 10*time.Second, "the catalog to list the stranger's tags", func() bool {
		svcs, _, err := c.Client(t, "").Catalog().Services(nil)
		return err == nil && len(svcs["stranger"]) > 0
	})
	for _, route := range []string{testutil.TestService, "listed.Svc"} {
		if _, ok := h.g.State().Backend(route, stranger.Addr); ok {
			t.Fatalf("the stranger joined %s, a route the config file defines", route)
		}
	}
	cc := testutil.Dial(t, h.addr)
	for range 12 {
		for _, m := range []string{"/" + testutil.TestService + "/Echo", "/listed.Svc/Echo"} {
			if _, err := testutil.Unary(t.Context(), cc, m, []byte("x")); err != nil {
				t.Fatalf("%s: %v", m, err)
			}
		}
	}
	select {
	case <-stranger.Started():
		t.Fatal("a call reached the stranger")
	default:
	}
}

// TestAutoRouteServicesLimitWhoJoins: with consul.auto_route_services set,
// only the Consul services matching a pattern join routes by their tags.
func TestAutoRouteServicesLimitWhoJoins(t *testing.T) {
	c := testutil.StartConsul(t)
	allowed, stranger := testutil.StartBackend(t), testutil.StartBackend(t)
	go drainCalls(t, stranger)
	cfg := consulCfg(c.Addr)
	cfg.Consul.AutoRouteServices = []string{"team-a-*"}
	h := startGateway(t, cfg)
	c.Register(t, "", testutil.RouteReg("stranger", "intruder", stranger.Addr, testutil.TestService))
	c.Register(t, "", testutil.RouteReg("allowed", "team-a-auth", allowed.Addr, testutil.TestService))
	h.routable(t, testutil.TestService, 1)
	testutil.WaitFor(t, 10*time.Second, "the catalog to list the intruder", func() bool {
		svcs, _, err := c.Client(t, "").Catalog().Services(nil)
		return err == nil && len(svcs["intruder"]) > 0
	})
	if _, ok := h.g.State().Backend(testutil.TestService, stranger.Addr); ok {
		t.Fatal("a service outside auto_route_services joined the route")
	}
	if _, ok := h.g.State().Backend(testutil.TestService, allowed.Addr); !ok {
		t.Fatal("the allowed service is not in the route")
	}
}
