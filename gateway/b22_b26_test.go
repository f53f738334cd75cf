package gateway_test

// Backend health (B22-B26) through a whole gateway, against each forwarding
// engine: the Watch streams share each backend's connection with the
// forwarded calls, so an engine that relays frames on those connections
// must leave health checking as it found it. healthcheck's own tests prove
// the finer points (timings of the backoff, a rapid sequence of statuses)
// on the checker alone.

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/internal/testutil"
)

// watchCounter counts the health Watches a backend receives, by the
// service they ask for, and can fail them.
type watchCounter struct {
	// fail, if set, is asked for the n-th Watch of svc (from 1) once its
	// request is read: a non-nil error ends that Watch with it.
	fail func(svc string, n int) error

	mu sync.Mutex // guards the field below
	n  map[string]int
}

func newWatchCounter() *watchCounter { return &watchCounter{n: map[string]int{}} }

// option is the backend's server option that does the counting.
func (w *watchCounter) option() grpc.ServerOption {
	return grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if info.FullMethod != healthpb.Health_Watch_FullMethodName {
			return h(srv, ss)
		}
		return h(srv, &countedWatch{ServerStream: ss, w: w})
	})
}

// count is how many Watches for svc the backend has received.
func (w *watchCounter) count(svc string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n[svc]
}

type countedWatch struct {
	grpc.ServerStream
	w    *watchCounter
	done bool
}

func (c *countedWatch) RecvMsg(m any) error {
	err := c.ServerStream.RecvMsg(m)
	req, ok := m.(*healthpb.HealthCheckRequest)
	if err != nil || !ok || c.done {
		return err
	}
	c.done = true
	c.w.mu.Lock()
	c.w.n[req.GetService()]++
	n := c.w.n[req.GetService()]
	c.w.mu.Unlock()
	if c.w.fail != nil {
		return c.w.fail(req.GetService(), n)
	}
	return nil
}

// call makes one unary Echo call to svc through cc.
func call(t *testing.T, cc *grpc.ClientConn, svc string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := testutil.Unary(ctx, cc, "/"+svc+"/Echo", []byte("x"))
	return err
}

func wantUnavailable(t *testing.T, err error, when string) {
	t.Helper()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("%s: %v, want UNAVAILABLE", when, err)
	}
}

func TestB22_ServingAgainThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		h := e.start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}}})
		h.routable(t, testutil.TestService, 1)
		cc := testutil.Dial(t, h.addr)
		for round := range 2 {
			if err := call(t, cc, testutil.TestService); err != nil {
				t.Fatalf("round %d, SERVING: %v", round, err)
			}
			b.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
			h.routable(t, testutil.TestService, 0)
			wantUnavailable(t, call(t, cc, testutil.TestService), "NOT_SERVING")
			b.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_SERVING)
			h.routable(t, testutil.TestService, 1)
		}
		if err := call(t, cc, testutil.TestService); err != nil {
			t.Fatalf("SERVING again: %v", err)
		}
	})
}

// startWithoutHealth starts a backend that echoes one message on any
// method, and whose server never registered grpc.health.v1: grpc-go
// answers its Watch UNIMPLEMENTED. It returns its address.
func startWithoutHealth(t *testing.T, w *watchCounter) string {
	t.Helper()
	lis := listenOn(t, "127.0.0.1:0")
	srv := grpc.NewServer(w.option(), grpc.ForceServerCodecV2(testutil.RawCodec{}), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(ss)
		if method == healthpb.Health_Watch_FullMethodName {
			// Read the request, so that w counts it.
			var req healthpb.HealthCheckRequest
			if err := ss.RecvMsg(&req); err != nil {
				return err
			}
			return status.Errorf(codes.Unimplemented, "unknown service grpc.health.v1.Health")
		}
		var m []byte
		if err := ss.RecvMsg(&m); err != nil {
			return err
		}
		return ss.SendMsg(&m)
	}))
	go srv.Serve(lis) //nolint:errcheck // ends with Stop
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// listenOn listens on addr until the test ends.
func listenOn(t *testing.T, addr string) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	return lis
}

func TestB23_NoHealthServiceIsServingThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		w := newWatchCounter()
		addr := startWithoutHealth(t, w)
		rec, logger := testutil.NewLogRecorder(t)
		cfg := config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{addr}}}}
		cfg.Health.BackoffBase, cfg.Health.BackoffMax = 10*time.Millisecond, 40*time.Millisecond
		h := e.startLog(t, cfg, logger)
		h.routable(t, testutil.TestService, 1)
		cc := testutil.Dial(t, h.addr)
		// Calls that take far longer than many backoffs: a retry loop
		// would have asked again meanwhile.
		for i := range 50 {
			if err := call(t, cc, testutil.TestService); err != nil {
				t.Fatalf("call %d to a backend without a health service: %v", i, err)
			}
		}
		if n := w.count(testutil.TestService); n != 1 {
			t.Fatalf("the backend was asked to Watch %d times, want once", n)
		}
		if n := rec.Count(slog.LevelError, "does not implement"); n != 1 {
			t.Fatalf("%d error records say the health service is not implemented, want 1", n)
		}
	})
}

func TestB24_FailedWatchRetriedThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		release := make(chan struct{})
		w := newWatchCounter()
		w.fail = func(svc string, n int) error {
			switch {
			case svc != testutil.TestService || n > 3:
				return nil
			case n == 3:
				// The third fails when the test says.
				<-release
			}
			return status.Error(codes.Internal, "scripted failure")
		}
		b := testutil.StartBackend(t, w.option())
		cfg := config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}}}
		cfg.Health.BackoffBase, cfg.Health.BackoffMax = 10*time.Millisecond, 40*time.Millisecond
		h := e.start(t, cfg)
		t.Cleanup(func() {
			select {
			case <-release:
			default:
				close(release)
			}
		})
		testutil.WaitFor(t, 10*time.Second, "the third Watch, the backend unroutable and saying why", func() bool {
			be, ok := h.backendIn(testutil.TestService, b.Addr)
			return w.count(testutil.TestService) == 3 && ok && !be.Routable && strings.Contains(be.Reason, "health watch failed")
		})
		cc := testutil.Dial(t, h.addr)
		wantUnavailable(t, call(t, cc, testutil.TestService), "while the Watch fails")
		close(release)
		h.routable(t, testutil.TestService, 1)
		if n := w.count(testutil.TestService); n != 4 {
			t.Fatalf("%d Watches, want 4: three failed, then one that works", n)
		}
		if err := call(t, cc, testutil.TestService); err != nil {
			t.Fatalf("once the Watch works: %v", err)
		}
	})
}

func TestB25_GracefulStopThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		addr := b.Addr
		h := e.start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{addr}}}})
		h.routable(t, testutil.TestService, 1)
		cc := testutil.Dial(t, h.addr)
		// Calls first, so that the engine has used the connection.
		for i := range 10 {
			if err := call(t, cc, testutil.TestService); err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
		}

		// The server waits for its open streams, the Watch among them:
		// it can finish only if the gateway cancels the Watch.
		stopped := make(chan struct{})
		go func() { b.Server.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			b.Server.Stop()
			<-stopped
			t.Fatal("GracefulStop did not return within 10s: the gateway kept a stream open")
		}
		h.routable(t, testutil.TestService, 0)
		wantUnavailable(t, call(t, cc, testutil.TestService), "backend stopped")

		// It comes back on the same address.
		b2 := testutil.StartBackendOn(listenOn(t, addr))
		t.Cleanup(b2.Stop)
		h.routable(t, testutil.TestService, 1)
		if err := call(t, cc, testutil.TestService); err != nil {
			t.Fatalf("after the backend came back: %v", err)
		}
		if c := b2.NextCall(t); c.Method != "/test.Svc/Echo" {
			t.Fatalf("the restarted backend got %s", c.Method)
		}
	})
}

func TestB26_OneWatchPerBackendAndHealthServiceThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		shared := "shared.Health"
		counters := []*watchCounter{newWatchCounter(), newWatchCounter()}
		b1, b2 := testutil.StartBackend(t, counters[0].option()), testutil.StartBackend(t, counters[1].option())
		for _, b := range []*testutil.Backend{b1, b2} {
			b.Health.SetServingStatus(shared, healthpb.HealthCheckResponse_SERVING)
		}
		both := []string{b1.Addr, b2.Addr}
		h := e.start(t, config.Config{Routes: []config.Route{
			{Service: "a.Svc", Backends: both, Health: healthcheck.RouteConfig{HealthService: &shared}},
			{Service: "b.Svc", Backends: both, Health: healthcheck.RouteConfig{HealthService: &shared}},
			{Service: testutil.TestService, Backends: both},
		}})
		routes := []string{"a.Svc", "b.Svc", testutil.TestService}
		for _, r := range routes {
			h.routable(t, r, 2)
		}
		cc := testutil.Dial(t, h.addr)
		for _, r := range routes {
			for range 4 {
				if err := call(t, cc, r); err != nil {
					t.Fatalf("%s: %v", r, err)
				}
			}
		}

		// Each health service is watched on its own: shared's NOT_SERVING
		// on b1 takes it out of the routes that watch shared only.
		b1.Health.SetServingStatus(shared, healthpb.HealthCheckResponse_NOT_SERVING)
		h.routable(t, "a.Svc", 1)
		h.routable(t, "b.Svc", 1)
		if n := h.g.State().Routes[testutil.TestService].Routable; n != 2 {
			t.Fatalf("%s has %d routable backends after %s went NOT_SERVING on b1, want 2", testutil.TestService, n, shared)
		}
		for _, r := range routes {
			if err := call(t, cc, r); err != nil {
				t.Fatalf("%s after b1 left it: %v", r, err)
			}
		}

		// One Watch per (backend, health service), for the whole test.
		for i, w := range counters {
			for _, svc := range []string{shared, testutil.TestService} {
				if n := w.count(svc); n != 1 {
					t.Errorf("backend %d: %d Watches for %q, want 1", i+1, n, svc)
				}
			}
		}
	})
}
