package gateway_test

// B73: a route's rate limit, through each engine to real backends.

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/balancer/balancercfg"
	"github.com/healthgate/healthgate/internal/testutil"
)

// TestB73_BurstThenRefusedThenRefilled: a route with rate {per_second:
// 0.5, burst: 3} lets three calls through at once and refuses the fourth
// with RESOURCE_EXHAUSTED naming the route, before any backend sees it; a
// reload that leaves the rate as it was keeps the empty bucket, one that
// changes it starts a full one; the bucket refills with time; every
// refusal is counted.
func TestB73_BurstThenRefusedThenRefilled(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		be := testutil.StartBackend(t)
		cfg := routeTo(be.Addr)
		// One token every 2s: far slower than the calls that empty the
		// bucket, even on a busy machine.
		cfg.Routes[0].Limits = balancercfg.Limits{Rate: balancercfg.Rate{PerSecond: 0.5, Burst: 3}}
		h := e.start(t, cfg)
		h.routable(t, testutil.TestService, 1)
		admin := adminServer(t, h)
		cc := testutil.Dial(t, h.addr)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		refused := 0
		call := func() error {
			_, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x"))
			if status.Code(err) == codes.ResourceExhausted {
				refused++
			}
			return err
		}
		wantRefused := func(when string) {
			t.Helper()
			err := call()
			const want = "healthgate: rate limit of route test.Svc exceeded"
			if st := status.Convert(err); st.Code() != codes.ResourceExhausted || st.Message() != want {
				t.Fatalf("%s: got %v, want RESOURCE_EXHAUSTED %q", when, err, want)
			}
		}
		burst := func(n int, when string) {
			t.Helper()
			for i := range n {
				if err := call(); err != nil {
					t.Fatalf("%s: call %d of a burst of %d: %v", when, i+1, n, err)
				}
			}
			wantRefused(when)
		}

		burst(3, "first burst")
		be.Drain()
		wantRefused("a second refusal")
		noStart(t, be, "refused calls")

		// The same rate, another timeout: the bucket stays empty.
		cfg.Routes[0].Traffic.Timeout = time.Minute
		if _, err := h.g.Reload(e.config(cfg)); err != nil {
			t.Fatal(err)
		}
		wantRefused("after a reload that kept the rate")

		// Another burst: a full bucket of the new size.
		cfg.Routes[0].Limits.Rate.Burst = 4
		if _, err := h.g.Reload(e.config(cfg)); err != nil {
			t.Fatal(err)
		}
		burst(4, "after a reload that changed the rate")

		// The bucket refills: a call passes again within the 2s a token
		// takes, plus room for a busy machine.
		refill := refusedUntilPass(t, cc, 10*time.Second)
		refused += refill

		if got := sample(t, scrape(t, admin), "healthgate_route_refused_total", "route", "test.Svc", "reason", "rate_limit"); got != float64(refused) {
			t.Fatalf("healthgate_route_refused_total{rate_limit} = %v, want the %d refusals the client saw", got, refused)
		}
	})
}

// refusedUntilPass calls until a call passes, at most within d, and
// returns how many were refused meanwhile. Calls are spaced, not to flood
// the limit it waits on.
func refusedUntilPass(t *testing.T, cc *grpc.ClientConn, d time.Duration) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	refused := 0
	for {
		_, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x"))
		switch status.Code(err) {
		case codes.OK:
			return refused
		case codes.ResourceExhausted:
			refused++
		default:
			t.Fatalf("waiting for the bucket to refill: %v", err)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("no call passed within %s: the bucket did not refill", d)
		}
	}
}
