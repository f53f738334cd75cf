package gateway_test

import (
	"context"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/internal/testutil"
)

func TestB40_RouteHealthFollowsMinHealthy(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		a, b := testutil.StartBackend(t), testutil.StartBackend(t)
		h := e.start(t, config.Config{Routes: []config.Route{
			{Service: testutil.TestService, Backends: []string{a.Addr, b.Addr}, Health: healthcheck.RouteConfig{MinHealthy: 2}},
		}})
		hc := healthpb.NewHealthClient(testutil.Dial(t, h.addr))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: testutil.TestService})
		if err != nil {
			t.Fatal(err)
		}
		next := func(want healthpb.HealthCheckResponse_ServingStatus) {
			t.Helper()
			watchUntil(t, w, want)
		}
		check := func(want healthpb.HealthCheckResponse_ServingStatus) {
			t.Helper()
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: testutil.TestService})
			if err != nil || resp.Status != want {
				t.Fatalf("Check: %v, %v; want %v", resp, err, want)
			}
		}

		next(healthpb.HealthCheckResponse_SERVING)
		check(healthpb.HealthCheckResponse_SERVING)

		// One of two routable is below the minimum of 2.
		a.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
		next(healthpb.HealthCheckResponse_NOT_SERVING)
		check(healthpb.HealthCheckResponse_NOT_SERVING)

		a.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_SERVING)
		next(healthpb.HealthCheckResponse_SERVING)
		check(healthpb.HealthCheckResponse_SERVING)
	})
}

func TestB42_WholeGatewayAndList(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		a, b := testutil.StartBackend(t), testutil.StartBackend(t)
		b.Health.SetServingStatus("other.Svc", healthpb.HealthCheckResponse_SERVING)
		h := e.start(t, config.Config{Routes: []config.Route{
			{Service: testutil.TestService, Backends: []string{a.Addr}},
			{Service: "other.Svc", Backends: []string{b.Addr}},
		}})
		hc := healthpb.NewHealthClient(testutil.Dial(t, h.addr))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: ""})
		if err != nil {
			t.Fatal(err)
		}
		next := func(want healthpb.HealthCheckResponse_ServingStatus) {
			t.Helper()
			watchUntil(t, w, want)
		}
		next(healthpb.HealthCheckResponse_SERVING)
		h.routable(t, testutil.TestService, 1)
		h.routable(t, "other.Svc", 1)

		list, err := hc.List(ctx, &healthpb.HealthListRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, svc := range []string{"", testutil.TestService, "other.Svc"} {
			if st, ok := list.Statuses[svc]; !ok || st.Status != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("List: %q is %v, want SERVING (all: %v)", svc, st, list.Statuses)
			}
		}
		if len(list.Statuses) != 3 {
			t.Fatalf("List has %d entries, want 3: %v", len(list.Statuses), list.Statuses)
		}

		// Policy: "" is the gateway's readiness: it stays SERVING while routes
		// go down (B44); they say so themselves.
		a.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
		testutil.WaitFor(t, 10*time.Second, "test.Svc to report NOT_SERVING", func() bool {
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: testutil.TestService})
			return err == nil && resp.Status == healthpb.HealthCheckResponse_NOT_SERVING
		})
		if resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf(`"" with one route down: %v, %v; want SERVING`, resp, err)
		}
		b.Health.SetServingStatus("other.Svc", healthpb.HealthCheckResponse_NOT_SERVING)
		testutil.WaitFor(t, 10*time.Second, "other.Svc to report NOT_SERVING", func() bool {
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "other.Svc"})
			return err == nil && resp.Status == healthpb.HealthCheckResponse_NOT_SERVING
		})
		if resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf(`"" with every route down: %v, %v; want SERVING: the gateway itself can take traffic`, resp, err)
		}
	})
}

// watchUntil reads a health Watch stream until it reports want.
func watchUntil(t *testing.T, w healthpb.Health_WatchClient, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	for {
		resp, err := w.Recv()
		if err != nil {
			t.Fatalf("Watch ended before %v: %v", want, err)
		}
		if resp.Status == want {
			return
		}
	}
}
