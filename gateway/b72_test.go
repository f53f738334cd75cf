package gateway_test

// B72: a route's max_in_flight per backend (circuit breaking), through each
// engine to real backends.

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/admin"
	"github.com/healthgate/healthgate/balancer/balancercfg"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/internal/testutil"
)

// heldCall is a call to Block that a backend holds until it is cancelled.
type heldCall struct {
	on     *testutil.Backend
	cancel context.CancelFunc
	done   chan error
}

// hold starts a call to Block and waits until one of backends has begun
// it: that one holds it.
func hold(t *testing.T, cc *grpc.ClientConn, backends ...*testutil.Backend) *heldCall {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	hc := &heldCall{cancel: cancel, done: make(chan error, 1)}
	t.Cleanup(cancel)
	go func() {
		_, err := testutil.Unary(ctx, cc, "/test.Svc/Block", nil)
		hc.done <- err
	}()
	started := make(chan *testutil.Backend, len(backends))
	stop := make(chan struct{})
	defer close(stop)
	for _, b := range backends {
		go func() {
			select {
			case <-b.Started():
				started <- b
			case <-stop:
			}
		}()
	}
	select {
	case hc.on = <-started:
	case err := <-hc.done:
		t.Fatalf("a call to Block ended before a backend held it: %v", err)
	case <-ctx.Done():
		t.Fatal("no backend began a call to Block within 30s")
	}
	return hc
}

// noStart fails if b began a call.
func noStart(t *testing.T, b *testutil.Backend, when string) {
	t.Helper()
	select {
	case <-b.Started():
		t.Fatalf("%s: backend %s began a call", when, b.Addr)
	default:
	}
}

// TestB72_FullBackendSkippedAllFullFailsFast: with max_in_flight 2 over two
// backends, four held calls fill both; a fifth fails at once with
// UNAVAILABLE naming the route, reaches no backend and is counted; a
// backend that is full is skipped while the other takes every call; and a
// reload changes the limit live.
func TestB72_FullBackendSkippedAllFullFailsFast(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		a, b := testutil.StartBackend(t), testutil.StartBackend(t)
		cfg := routeTo(a.Addr, b.Addr)
		cfg.Routes[0].Limits = balancercfg.Limits{MaxInFlight: 2}
		h := e.start(t, cfg)
		h.routable(t, testutil.TestService, 2)
		admin := adminServer(t, h)
		cc := testutil.Dial(t, h.addr)
		inFlight := func(be *testutil.Backend) int64 {
			t.Helper()
			got, ok := h.backendIn(testutil.TestService, be.Addr)
			if !ok {
				t.Fatalf("backend %s is not in the route", be.Addr)
			}
			return got.Handle.InFlight()
		}

		var held []*heldCall
		on := map[*testutil.Backend]int{}
		for range 4 {
			hc := hold(t, cc, a, b)
			held = append(held, hc)
			on[hc.on]++
		}
		if on[a] != 2 || on[b] != 2 {
			t.Fatalf("four held calls: %d on a, %d on b, want 2 each", on[a], on[b])
		}

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		_, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x"))
		took := time.Since(start)
		want := `healthgate: every backend of route "test.Svc" is at max_in_flight (2 calls)`
		if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != want {
			t.Fatalf("a call with every backend full got %v, want UNAVAILABLE %q", err, want)
		}
		if took > 2*time.Second {
			t.Fatalf("the refusal took %s: the call waited", took)
		}
		noStart(t, a, "every backend full")
		noStart(t, b, "every backend full")
		if got := sample(t, scrape(t, admin), "healthgate_route_refused_total", "route", "test.Svc", "reason", "max_in_flight"); got != 1 {
			t.Fatalf("healthgate_route_refused_total{max_in_flight} = %v, want 1", got)
		}

		// b's calls end: a, still full, is skipped, and b takes every call.
		for _, hc := range held {
			if hc.on == b {
				hc.cancel()
				<-hc.done
			}
		}
		testutil.WaitFor(t, 10*time.Second, "b's held calls to be done", func() bool { return inFlight(b) == 0 })
		for i := range 20 {
			if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x")); err != nil {
				t.Fatalf("call %d with a full and b free: %v", i, err)
			}
		}
		noStart(t, a, "a full, b free")
		if n := inFlight(a); n != 2 {
			t.Fatalf("a has %d calls in flight, want its 2 held ones", n)
		}

		// A reload raises the limit: a takes calls again.
		cfg.Routes[0].Limits.MaxInFlight = 3
		if _, err := h.g.Reload(e.config(cfg)); err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x")); err != nil {
				t.Fatalf("call %d after the reload: %v", i, err)
			}
		}
		select {
		case <-a.Started():
		default:
			t.Fatal("after max_in_flight went up to 3, a took none of 10 calls")
		}
		for _, hc := range held {
			hc.cancel()
		}
	})
}

// TestB72_ConsulMetaMaxInFlight: an instance registered in Consul with the
// meta healthgate_max_in_flight takes no more calls at once than it says,
// on a route learned from its route tag with no limit of its own, while
// another instance takes the rest; a new value in Consul applies live.
func TestB72_ConsulMetaMaxInFlight(t *testing.T) {
	c := testutil.StartConsul(t)
	a, b := testutil.StartBackend(t), testutil.StartBackend(t)
	regA := testutil.RouteReg("a", "svc", a.Addr, testutil.TestService)
	c.Register(t, "", testutil.RouteReg("b", "svc", b.Addr, testutil.TestService))
	forEachEngine(t, func(t *testing.T, e *engine) {
		// What the previous engine's run left unread.
		a.Drain()
		b.Drain()
		regA.Meta = map[string]string{healthcheck.MetaMaxInFlight: "1"}
		c.Register(t, "", regA)
		h := e.start(t, consulCfg(c.Addr))
		h.routable(t, testutil.TestService, 2)
		limitOfA := func(n int) func() bool {
			return func() bool {
				be, ok := h.backendIn(testutil.TestService, a.Addr)
				return ok && be.MaxInFlight == n
			}
		}
		testutil.WaitFor(t, 10*time.Second, "a's limit of 1 to be known", limitOfA(1))
		if got := backendsMaxInFlight(t, adminServer(t, h), a.Addr); got != 1 {
			t.Fatalf("/backends shows max_in_flight %d for a, want its meta's 1", got)
		}
		cc := testutil.Dial(t, h.addr)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()

		var held []*heldCall
		defer func() {
			for _, hc := range held {
				hc.cancel()
			}
		}()
		for len(held) == 0 || held[len(held)-1].on != a {
			if len(held) > 10 {
				t.Fatal("ten held calls and none on a")
			}
			held = append(held, hold(t, cc, a, b))
		}
		for i := range 10 {
			if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x")); err != nil {
				t.Fatalf("call %d with a at its limit: %v", i, err)
			}
		}
		noStart(t, a, "a at its own max_in_flight")

		regA.Meta[healthcheck.MetaMaxInFlight] = "2"
		c.Register(t, "", regA)
		testutil.WaitFor(t, 10*time.Second, "a's limit of 2 to be known", limitOfA(2))
		tookOne := false
		for range 10 {
			if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x")); err != nil {
				t.Fatal(err)
			}
			select {
			case <-a.Started():
				tookOne = true
			default:
			}
			if tookOne {
				break
			}
		}
		if !tookOne {
			t.Fatal("with its limit raised to 2 in Consul, a took none of 10 calls")
		}
	})
}

// backendsMaxInFlight is the max_in_flight /backends shows for addr.
func backendsMaxInFlight(t *testing.T, srv *httptest.Server, addr string) int {
	t.Helper()
	code, body := get(t, srv, "/backends")
	if code != http.StatusOK {
		t.Fatalf("/backends: %d %s", code, body)
	}
	var v admin.View
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("/backends: %v", err)
	}
	for _, r := range v.Routes {
		for _, b := range r.Backends {
			if b.Addr == addr {
				return b.MaxInFlight
			}
		}
	}
	t.Fatalf("/backends does not list %s", addr)
	return 0
}
