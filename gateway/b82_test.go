package gateway_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
)

// healthWatch is a gateway health Watch read in the background: every status
// it sends lands on updates, in order, so that a test can both wait for the
// next one and, at the end, see that none it did not expect came.
type healthWatch struct {
	updates chan healthpb.HealthCheckResponse_ServingStatus
	// err is the error that ended the stream; read it after done.
	err  error
	done chan struct{}
}

// startWatch opens a Watch for svc on hc until ctx ends; the test's cleanup
// waits for its reader.
func startWatch(ctx context.Context, t *testing.T, hc healthpb.HealthClient, svc string) *healthWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: svc})
	if err != nil {
		cancel()
		t.Fatalf("Watch(%q): %v", svc, err)
	}
	w := &healthWatch{updates: make(chan healthpb.HealthCheckResponse_ServingStatus, 64), done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(w.done)
		for {
			resp, err := stream.Recv()
			if err != nil {
				w.err = err
				return
			}
			select {
			case w.updates <- resp.Status:
			case <-ctx.Done():
			}
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return w
}

// next waits for the Watch's next status and fails unless it is want.
func (w *healthWatch) next(t *testing.T, svc string, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	select {
	case got := <-w.updates:
		if got != want {
			t.Fatalf("Watch(%q) sent %v, want %v", svc, got, want)
		}
	case <-w.done:
		t.Fatalf("Watch(%q) ended before %v: %v", svc, want, w.err)
	case <-time.After(15 * time.Second):
		t.Fatalf("Watch(%q) sent nothing in 15s, want %v", svc, want)
	}
}

// quiet fails if the Watch has sent a status the test has not read.
func (w *healthWatch) quiet(t *testing.T, svc string) {
	t.Helper()
	select {
	case got := <-w.updates:
		t.Fatalf("Watch(%q) sent %v unasked", svc, got)
	case <-w.done:
		t.Fatalf("Watch(%q) ended: %v", svc, w.err)
	default:
	}
}

// TestB82_GatewayHealthBesideProxiedCalls: the gateway's own grpc.health.v1
// answers Check, Watch and List on the listener and the client connection
// that carry proxied calls, through each engine; a Watch on a route sees it
// go NOT_SERVING and back when its only backend does, "" stays SERVING, and
// calls to another route keep succeeding on that connection throughout.
//
// from_first_call: the health service answers the first calls on the first
// connection, made as soon as the gateway listens (the relay opens its
// listener only once its in-memory connection to the gateway's own
// grpc.Server is up).
func TestB82_GatewayHealthBesideProxiedCalls(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		t.Run("from_first_call", func(t *testing.T) { healthFromFirstCall(t, e) })
		t.Run("route_flip", func(t *testing.T) { healthBesideProxiedCalls(t, e) })
	})
}

// healthFromFirstCall: Check, Watch and List answer on a connection made
// as soon as the gateway listens, whatever the status they give.
func healthFromFirstCall(t *testing.T, e *engine) {
	a := testutil.StartBackend(t)
	h := e.start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{a.Addr}}}})
	hc := healthpb.NewHealthClient(testutil.Dial(t, h.addr))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf(`first Check(""): %v`, err)
	}
	w := startWatch(ctx, t, hc, testutil.TestService)
	select {
	case <-w.updates:
	case <-w.done:
		t.Fatalf("first Watch(%q) ended: %v", testutil.TestService, w.err)
	case <-ctx.Done():
		t.Fatalf("first Watch(%q) sent nothing: %v", testutil.TestService, ctx.Err())
	}
	if _, err := hc.List(ctx, &healthpb.HealthListRequest{}); err != nil {
		t.Fatalf("first List: %v", err)
	}
}

// healthBesideProxiedCalls is B82's route flip, on one client connection.
func healthBesideProxiedCalls(t *testing.T, e *engine) {
	const other = "other.Svc"
	a, b := testutil.StartBackend(t), testutil.StartBackend(t)
	b.Health.SetServingStatus(other, healthpb.HealthCheckResponse_SERVING)
	h := e.start(t, config.Config{Routes: []config.Route{
		{Service: testutil.TestService, Backends: []string{a.Addr}},
		{Service: other, Backends: []string{b.Addr}},
	}})
	cc := testutil.Dial(t, h.addr)
	hc := healthpb.NewHealthClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	check := func(svc string, want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.Status != want {
			t.Fatalf("Check(%q): %v, %v; want %v", svc, resp, err, want)
		}
	}
	list := func(want map[string]healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		resp, err := hc.List(ctx, &healthpb.HealthListRequest{})
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		got := map[string]healthpb.HealthCheckResponse_ServingStatus{}
		for svc, st := range resp.Statuses {
			got[svc] = st.Status
		}
		if len(got) != len(want) {
			t.Fatalf("List: %v, want %v", got, want)
		}
		for svc, st := range want {
			if g, ok := got[svc]; !ok || g != st {
				t.Fatalf("List: %v, want %v", got, want)
			}
		}
	}
	call := func(svc string) error {
		t.Helper()
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		got, err := testutil.Unary(cctx, cc, "/"+svc+"/Echo", []byte("x"))
		if err == nil && string(got) != "x" {
			t.Fatalf("/%s/Echo answered %q, want %q", svc, got, "x")
		}
		return err
	}

	// On the relay, the gateway's own health is reachable a moment
	// after the gateway listens (see from_first_call).
	testutil.WaitFor(t, 10*time.Second, "the gateway's health to answer", func() bool {
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil
	})
	// Opened before the routes are known to be SERVING: the first status
	// each sends may be NOT_SERVING, then SERVING.
	route, all := startWatch(ctx, t, hc, testutil.TestService), startWatch(ctx, t, hc, "")
	unknown := startWatch(ctx, t, hc, "nope.Svc")
	for _, w := range []struct {
		w   *healthWatch
		svc string
	}{{route, testutil.TestService}, {all, ""}} {
		for got := healthpb.HealthCheckResponse_UNKNOWN; got != healthpb.HealthCheckResponse_SERVING; {
			select {
			case got = <-w.w.updates:
			case <-w.w.done:
				t.Fatalf("Watch(%q) ended before SERVING: %v", w.svc, w.w.err)
			case <-ctx.Done():
				t.Fatalf("Watch(%q) not SERVING: %v", w.svc, ctx.Err())
			}
		}
	}
	unknown.next(t, "nope.Svc", healthpb.HealthCheckResponse_SERVICE_UNKNOWN)
	h.routable(t, testutil.TestService, 1)
	h.routable(t, other, 1)

	check("", healthpb.HealthCheckResponse_SERVING)
	check(testutil.TestService, healthpb.HealthCheckResponse_SERVING)
	check(other, healthpb.HealthCheckResponse_SERVING)
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope.Svc"}); status.Code(err) != codes.NotFound {
		t.Fatalf(`Check("nope.Svc"): %v, want NOT_FOUND`, err)
	}
	list(map[string]healthpb.HealthCheckResponse_ServingStatus{
		"": healthpb.HealthCheckResponse_SERVING, testutil.TestService: healthpb.HealthCheckResponse_SERVING, other: healthpb.HealthCheckResponse_SERVING,
	})
	if err := call(testutil.TestService); err != nil {
		t.Fatalf("proxied call to %s: %v", testutil.TestService, err)
	}

	// Calls to the other route flow on the same connection for the rest
	// of the test, paced so that the backend's call log stays short.
	load := testutil.StartLoad(t, cc, testutil.LoadConfig{Method: "/" + other + "/Echo", Workers: 2, Interval: 10 * time.Millisecond, Timeout: 5 * time.Second})
	flowing := func(what string) {
		t.Helper()
		n := load.Counts()[codes.OK]
		testutil.WaitFor(t, 10*time.Second, "calls to "+other+" to succeed "+what, func() bool {
			return load.Counts()[codes.OK] >= n+5
		})
	}
	flowing("before the flip")

	a.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
	route.next(t, testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
	check(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
	check("", healthpb.HealthCheckResponse_SERVING)
	list(map[string]healthpb.HealthCheckResponse_ServingStatus{
		"": healthpb.HealthCheckResponse_SERVING, testutil.TestService: healthpb.HealthCheckResponse_NOT_SERVING, other: healthpb.HealthCheckResponse_SERVING,
	})
	testutil.WaitFor(t, 10*time.Second, testutil.TestService+" calls to be refused", func() bool {
		err := call(testutil.TestService)
		return status.Code(err) == codes.Unavailable && strings.Contains(status.Convert(err).Message(), "no healthy upstream")
	})
	flowing("while " + testutil.TestService + " is down")

	a.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_SERVING)
	route.next(t, testutil.TestService, healthpb.HealthCheckResponse_SERVING)
	check(testutil.TestService, healthpb.HealthCheckResponse_SERVING)
	list(map[string]healthpb.HealthCheckResponse_ServingStatus{
		"": healthpb.HealthCheckResponse_SERVING, testutil.TestService: healthpb.HealthCheckResponse_SERVING, other: healthpb.HealthCheckResponse_SERVING,
	})
	testutil.WaitFor(t, 10*time.Second, testutil.TestService+" calls to pass again", func() bool {
		return call(testutil.TestService) == nil
	})
	flowing("after the flip back")

	load.Stop()
	for code, n := range load.Counts() {
		if code != codes.OK {
			t.Fatalf("%d calls to %s ended %v (latest failure: %v); want every one OK", n, other, code, func() error { _, err := load.LastFailure(); return err }())
		}
	}
	// "" never left SERVING, the route said nothing more, and the
	// unknown service stays unknown.
	all.quiet(t, "")
	route.quiet(t, testutil.TestService)
	unknown.quiet(t, "nope.Svc")
}
