package healthserver

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// state is a routing table whose routes are serving or not as given.
func state(synced, draining bool, serving map[string]bool) *healthcheck.State {
	st := &healthcheck.State{Synced: synced, Draining: draining, Routes: map[string]*healthcheck.Route{}}
	for name, ok := range serving {
		st.Routes[name] = &healthcheck.Route{Name: name, Serving: ok}
	}
	return st
}

func check(t *testing.T, s *Server, svc string) (healthpb.HealthCheckResponse_ServingStatus, codes.Code) {
	t.Helper()
	resp, err := s.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
	return resp.GetStatus(), status.Code(err)
}

// TestB42_ReportsTheTable: the server says what the table says, no more:
// a route's status is its Serving, "" is the table's readiness.
func TestB42_ReportsTheTable(t *testing.T) {
	s := New(nil)
	if got, _ := check(t, s, ""); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf(`"" before any state: %v`, got)
	}
	s.Update(state(true, false, map[string]bool{"a.S": true, "b.S": false, discovery.DefaultRoute: false}))
	cases := []struct {
		svc  string
		want healthpb.HealthCheckResponse_ServingStatus
		code codes.Code
	}{
		{"a.S", healthpb.HealthCheckResponse_SERVING, codes.OK},
		{"b.S", healthpb.HealthCheckResponse_NOT_SERVING, codes.OK},
		// One route down does not take the gateway down (B44).
		{"", healthpb.HealthCheckResponse_SERVING, codes.OK},
		{discovery.DefaultRoute, healthpb.HealthCheckResponse_SERVICE_UNKNOWN, codes.NotFound},
		{"nope.S", healthpb.HealthCheckResponse_SERVICE_UNKNOWN, codes.NotFound},
	}
	for _, tc := range cases {
		got, code := check(t, s, tc.svc)
		if code != tc.code || (code == codes.OK && got != tc.want) {
			t.Errorf("Check(%q) = %v, %v; want %v, %v", tc.svc, got, code, tc.want, tc.code)
		}
	}
	s.Update(state(false, false, map[string]bool{"a.S": true}))
	if got, _ := check(t, s, ""); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf(`"" before discovery synced: %v`, got)
	}
	list, _ := s.List(context.Background(), &healthpb.HealthListRequest{})
	if len(list.Statuses) != 2 {
		t.Fatalf("List: %v, want a.S and \"\"", list.Statuses)
	}
	s.Update(state(true, true, map[string]bool{"a.S": false}))
	if got, _ := check(t, s, ""); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf(`"" while draining: %v, want NOT_SERVING`, got)
	}
}

// watchStream is a Health_WatchServer that hands each response to a channel.
type watchStream struct {
	grpc.ServerStream
	ctx context.Context
	out chan healthpb.HealthCheckResponse_ServingStatus
}

func (w *watchStream) Context() context.Context { return w.ctx }
func (w *watchStream) Send(r *healthpb.HealthCheckResponse) error {
	w.out <- r.GetStatus()
	return nil
}

func TestWatchFollowsChangesAndEndsOnClose(t *testing.T) {
	s := New(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w := &watchStream{ctx: ctx, out: make(chan healthpb.HealthCheckResponse_ServingStatus, 16)}
	done := make(chan error, 1)
	go func() { done <- s.Watch(&healthpb.HealthCheckRequest{Service: "late.S"}, w) }()
	next := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		select {
		case got := <-w.out:
			if got != want {
				t.Fatalf("Watch sent %v, want %v", got, want)
			}
		case <-ctx.Done():
			t.Fatalf("Watch sent nothing, want %v", want)
		}
	}
	next(healthpb.HealthCheckResponse_SERVICE_UNKNOWN)
	s.Update(state(true, false, map[string]bool{"late.S": true}))
	next(healthpb.HealthCheckResponse_SERVING)
	s.Update(state(true, false, map[string]bool{"late.S": false}))
	next(healthpb.HealthCheckResponse_NOT_SERVING)
	s.Close()
	select {
	case err := <-done:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("Watch ended with %v, want UNAVAILABLE on close", err)
		}
	case <-ctx.Done():
		t.Fatal("Watch did not end on Close")
	}
}
