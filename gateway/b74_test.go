package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/balancer/balancercfg"
	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
)

// tally counts the calls each backend has finished, as its record of
// calls reports them; it keeps those records from filling up.
type tally struct {
	mu sync.Mutex // guards n
	n  map[string]int
}

func countCalls(t *testing.T, backends ...*testutil.Backend) *tally {
	c := &tally{n: map[string]int{}}
	for _, b := range backends {
		go func() {
			for {
				select {
				case <-b.Calls():
					c.mu.Lock()
					c.n[b.Addr]++
					c.mu.Unlock()
				case <-t.Context().Done():
					return
				}
			}
		}()
	}
	return c
}

func (c *tally) get(b *testutil.Backend) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[b.Addr]
}

func (c *tally) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.n {
		n += v
	}
	return n
}

// callWith makes a unary call with the request metadata kv through the
// gateway and says which of backends took it (-1: none).
func callWith(t *testing.T, cc *grpc.ClientConn, kv []string, backends ...*testutil.Backend) (int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if len(kv) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, kv...)
	}
	_, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x"))
	for i, b := range backends {
		select {
		case <-b.Started():
			return i, err
		default:
		}
	}
	return -1, err
}

// spread makes n calls with metadata kv and counts them by the index of
// the backend that took them; a failed call fails the test.
func spread(t *testing.T, cc *grpc.ClientConn, n int, kv []string, backends ...*testutil.Backend) []int {
	t.Helper()
	got := make([]int, len(backends))
	for range n {
		i, err := callWith(t, cc, kv, backends...)
		if err != nil || i < 0 {
			t.Fatalf("call with %q: backend %d, %v", kv, i, err)
		}
		got[i]++
	}
	return got
}

func subset(tags ...string) balancercfg.Subset { return balancercfg.Subset{Tags: tags} }

func canaryMatch() []balancercfg.Match {
	return []balancercfg.Match{{Header: "x-canary", Value: "true", Subset: subset("canary")}}
}

func weights(v1, v2 int) []balancercfg.Split {
	return []balancercfg.Split{{Subset: subset("v1"), Weight: v1}, {Subset: subset("v2"), Weight: v2}}
}

var canaryHeader = []string{"x-canary", "true"}

// TestB74_HeaderMatchGoesToCanary: calls whose metadata match a rule go to
// the rule's subset, the first rule matching winning; the others to the
// split, never to a backend outside it.
func TestB74_HeaderMatchGoesToCanary(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		stable, canary, beta := testutil.StartBackend(t), testutil.StartBackend(t), testutil.StartBackend(t)
		for _, b := range []*testutil.Backend{stable, canary, beta} {
			go drainCalls(t, b)
		}
		h := e.start(t, config.Config{Routes: []config.Route{{
			Service:  testutil.TestService,
			Backends: []string{stable.Addr, canary.Addr, beta.Addr},
			BackendOptions: map[string]config.BackendOptions{
				stable.Addr: {Tags: []string{"v1"}},
				canary.Addr: {Tags: []string{"v2", "canary"}},
				beta.Addr:   {Tags: []string{"v2", "beta"}},
			},
			Routing: balancercfg.Routing{
				Match: append(canaryMatch(),
					balancercfg.Match{Header: "x-tenant", Prefix: "beta-", Subset: subset("beta")},
					balancercfg.Match{Header: "x-debug", Present: true, Subset: subset("v2")}),
				Split: weights(100, 0),
			},
		}}})
		h.routable(t, testutil.TestService, 3)
		cc := testutil.Dial(t, h.addr)
		bs := []*testutil.Backend{stable, canary, beta}
		for _, tc := range []struct {
			kv   []string
			want []int
		}{
			{canaryHeader, []int{0, 20, 0}},
			{[]string{"x-canary", "false"}, []int{20, 0, 0}},
			{nil, []int{20, 0, 0}},
			{[]string{"x-tenant", "beta-42"}, []int{0, 0, 20}},
			{[]string{"x-tenant", "gamma"}, []int{20, 0, 0}},
			// The first rule that matches wins.
			{[]string{"x-tenant", "beta-1", "x-canary", "true"}, []int{0, 20, 0}},
			{[]string{"x-debug", "1"}, []int{0, 10, 10}},
		} {
			if got := spread(t, cc, 20, tc.kv, bs...); !slices.Equal(got, tc.want) {
				t.Errorf("20 calls with %q went to stable/canary/beta %v, want %v", tc.kv, got, tc.want)
			}
		}
	})
}

// TestB74_SplitByWeight: the calls no rule takes are shared between the
// split's subsets by weight; a subset of weight 0 takes none.
func TestB74_SplitByWeight(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		v1, v2, v3 := testutil.StartBackend(t), testutil.StartBackend(t), testutil.StartBackend(t)
		calls := countCalls(t, v1, v2, v3)
		split := append(weights(3, 1), balancercfg.Split{Subset: subset("v3"), Weight: 0})
		h := e.start(t, config.Config{Routes: []config.Route{{
			Service:  testutil.TestService,
			Backends: []string{v1.Addr, v2.Addr, v3.Addr},
			BackendOptions: map[string]config.BackendOptions{
				v1.Addr: {Tags: []string{"v1"}}, v2.Addr: {Tags: []string{"v2"}}, v3.Addr: {Tags: []string{"v3"}},
			},
			Routing: balancercfg.Routing{Split: split},
		}}})
		h.routable(t, testutil.TestService, 3)
		cc := testutil.Dial(t, h.addr)
		const n = 2000
		load := testutil.StartLoad(t, cc, testutil.LoadConfig{Workers: 4, Timeout: 5 * time.Second})
		testutil.WaitFor(t, 30*time.Second, fmt.Sprintf("%d calls", n), func() bool { return calls.total() >= n })
		load.Stop()
		total := calls.total()
		share := float64(calls.get(v2)) / float64(total)
		t.Logf("3:1:0 split over %d calls: v1 %d, v2 %d, v3 %d (v2 share %.3f, want 0.25)", total, calls.get(v1), calls.get(v2), calls.get(v3), share)
		// The standard deviation of the share is under 0.01 at n=2000.
		if math.Abs(share-0.25) > 0.05 {
			t.Errorf("v2 took %.3f of the calls, want 0.25±0.05", share)
		}
		if calls.get(v3) != 0 {
			t.Errorf("v3, of weight 0, took %d calls", calls.get(v3))
		}
		for code, k := range load.Counts() {
			if code != codes.OK {
				t.Errorf("%d calls ended %v", k, code)
			}
		}
	})
}

// TestB74_EmptySubsetFallbackOrFail: a subset with no routable backend
// sends its calls to the whole route by default, or fails them
// UNAVAILABLE naming the subset when the route says so; health gating
// applies inside the subset, and it takes calls again once a backend in it
// is SERVING.
func TestB74_EmptySubsetFallbackOrFail(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		stable, canary := testutil.StartBackend(t), testutil.StartBackend(t)
		go drainCalls(t, stable)
		go drainCalls(t, canary)
		canary.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
		route := config.Route{
			Service:        testutil.TestService,
			Backends:       []string{stable.Addr, canary.Addr},
			BackendOptions: map[string]config.BackendOptions{stable.Addr: {Tags: []string{"v1"}}, canary.Addr: {Tags: []string{"v2", "canary"}}},
			Routing:        balancercfg.Routing{Match: canaryMatch(), Split: weights(0, 1)},
		}
		cfg := config.Config{Routes: []config.Route{route}}
		h := e.start(t, cfg)
		h.routable(t, testutil.TestService, 1)
		cc := testutil.Dial(t, h.addr)
		bs := []*testutil.Backend{stable, canary}
		for _, kv := range [][]string{canaryHeader, nil} {
			if got := spread(t, cc, 10, kv, bs...); got[0] != 10 {
				t.Fatalf("empty subset with the default fallback: calls with %q went to stable/canary %v, want all on the whole route's routable backend", kv, got)
			}
		}

		route.Routing.OnEmptySubset = balancercfg.Fail
		cfg.Routes = []config.Route{route}
		if _, err := h.g.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			kv     []string
			subset string
		}{{canaryHeader, "[canary]"}, {nil, "[v2]"}} {
			i, err := callWith(t, cc, tc.kv, bs...)
			st := status.Convert(err)
			want := fmt.Sprintf("healthgate: no healthy upstream in subset %s of route %q", tc.subset, testutil.TestService)
			if st.Code() != codes.Unavailable || st.Message() != want || i != -1 {
				t.Fatalf("empty subset with fail, metadata %q: backend %d, %v; want UNAVAILABLE %q and no backend", tc.kv, i, err, want)
			}
		}

		canary.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_SERVING)
		h.routable(t, testutil.TestService, 2)
		for _, kv := range [][]string{canaryHeader, nil} {
			if got := spread(t, cc, 10, kv, bs...); got[1] != 10 {
				t.Fatalf("canary SERVING: calls with %q went to stable/canary %v, want all on canary", kv, got)
			}
		}
	})
}

// reregister registers a Consul instance again under the same ID with new
// tags, as a deploy that retags an instance does.
func reregister(t *testing.T, c *testutil.Consul, id, name string, b *testutil.Backend, tags ...string) {
	t.Helper()
	c.Register(t, "", testutil.RouteReg(id, name, b.Addr, testutil.TestService, tags...))
}

// hasTags waits until the routing table shows the backend at addr with
// tags among its tags: the balancer has them by then.
func hasTags(t *testing.T, h *harness, addr string, tags ...string) {
	t.Helper()
	testutil.WaitFor(t, 15*time.Second, fmt.Sprintf("%s to carry %q", addr, tags), func() bool {
		b, ok := h.g.State().Backend(testutil.TestService, addr)
		if !ok || !b.Routable {
			return false
		}
		for _, tag := range tags {
			if !slices.Contains(b.Tags, tag) {
				return false
			}
		}
		return true
	})
}

// TestB74_TagsFromConsulMoveTrafficLive: subsets follow the Consul tags of
// the route's instances; re-registering an instance with other tags moves
// the calls at once, and a stream in flight on a backend that changes
// subset goes on.
func TestB74_TagsFromConsulMoveTrafficLive(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		c := testutil.StartConsul(t)
		a, b := testutil.StartBackend(t), testutil.StartBackend(t)
		go drainCalls(t, a)
		go drainCalls(t, b)
		reregister(t, c, "a", "svc", a, "v1")
		reregister(t, c, "b", "svc", b, "v1")
		cfg := consulCfg(c.Addr)
		cfg.Routes = []config.Route{{
			Service: testutil.TestService, ConsulService: "svc",
			Routing: balancercfg.Routing{Match: canaryMatch(), Split: weights(0, 100)},
		}}
		h := e.start(t, cfg)
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		bs := []*testutil.Backend{a, b}
		// No v2 instance yet: the whole route takes the calls.
		if got := spread(t, cc, 20, nil, bs...); got[0] == 0 || got[1] == 0 {
			t.Fatalf("no v2 instance: calls went to a/b %v, want both (the whole route)", got)
		}

		// A stream in flight on b.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var stream grpc.ClientStream
		for stream == nil {
			s, err := testutil.RawStream(ctx, cc, "/test.Svc/Echo")
			if err != nil {
				t.Fatal(err)
			}
			if err := testutil.Echo(s, "hello"); err != nil {
				t.Fatal(err)
			}
			select {
			case <-b.Started():
				stream = s
			case <-a.Started():
				s.CloseSend()
			}
		}

		reregister(t, c, "b", "svc", b, "v2")
		hasTags(t, h, b.Addr, "v2")
		// /backends shows which subsets a backend is in.
		var doc struct {
			Routes []struct {
				Backends []struct {
					Addr string   `json:"addr"`
					Tags []string `json:"tags"`
				} `json:"backends"`
			} `json:"routes"`
		}
		if _, body := get(t, adminServer(t, h), "/backends"); json.Unmarshal([]byte(body), &doc) != nil || len(doc.Routes) != 1 {
			t.Fatalf("/backends: %s", body)
		}
		for _, be := range doc.Routes[0].Backends {
			if be.Addr == b.Addr && !slices.Contains(be.Tags, "v2") {
				t.Errorf("/backends shows %s with tags %q, want v2 among them", be.Addr, be.Tags)
			}
		}
		if got := spread(t, cc, 20, nil, bs...); got[1] != 20 {
			t.Fatalf("b retagged v2: calls went to a/b %v, want all on b", got)
		}
		if got := spread(t, cc, 10, canaryHeader, bs...); got[0] == 0 || got[1] == 0 {
			t.Fatalf("no canary instance: x-canary calls went to a/b %v, want both (the fallback to the whole route)", got)
		}

		reregister(t, c, "a", "svc", a, "v1", "canary")
		hasTags(t, h, a.Addr, "canary")
		if got := spread(t, cc, 20, canaryHeader, bs...); got[0] != 20 {
			t.Fatalf("a tagged canary: x-canary calls went to a/b %v, want all on a", got)
		}

		// b leaves v2 again: the split's subset is empty, and falls back.
		reregister(t, c, "b", "svc", b, "v1")
		hasTags(t, h, b.Addr, "v1")
		if got := spread(t, cc, 20, nil, bs...); got[0] == 0 || got[1] == 0 {
			t.Fatalf("no v2 instance again: calls went to a/b %v, want both", got)
		}
		if err := testutil.Echo(stream, "still here"); err != nil {
			t.Fatalf("the stream in flight on b while its tags changed twice: %v", err)
		}
		stream.CloseSend()
	})
}

// TestB74_CanaryUnderLoadZeroFailedCalls is the canary acceptance test:
// under continuous load, a 95/5 split between v1 and v2 moves to 0/100
// live, by a config reload and by Consul tags, without a single failed
// call, and the calls land where the new split says.
func TestB74_CanaryUnderLoadZeroFailedCalls(t *testing.T) {
	t.Run("reload", func(t *testing.T) {
		forEachEngine(t, func(t *testing.T, e *engine) {
			v1, v2 := testutil.StartBackend(t), testutil.StartBackend(t)
			calls := countCalls(t, v1, v2)
			route := config.Route{
				Service:        testutil.TestService,
				Backends:       []string{v1.Addr, v2.Addr},
				BackendOptions: map[string]config.BackendOptions{v1.Addr: {Tags: []string{"v1"}}, v2.Addr: {Tags: []string{"v2"}}},
				Routing:        balancercfg.Routing{Split: weights(95, 5)},
			}
			cfg := config.Config{Routes: []config.Route{route}}
			h := e.start(t, cfg)
			h.routable(t, testutil.TestService, 2)
			load := testutil.StartLoad(t, testutil.Dial(t, h.addr), testutil.LoadConfig{Workers: 4, Timeout: 5 * time.Second})
			moveUnderLoad(t, load, calls, v1, v2, func() {
				route.Routing.Split = weights(0, 100)
				cfg.Routes = []config.Route{route}
				if _, err := h.g.Reload(cfg); err != nil {
					t.Fatal(err)
				}
			})
		})
	})
	t.Run("consul_tags", func(t *testing.T) {
		forEachEngine(t, func(t *testing.T, e *engine) {
			c := testutil.StartConsul(t)
			v1, v2 := testutil.StartBackend(t), testutil.StartBackend(t)
			calls := countCalls(t, v1, v2)
			// The route takes the instances tagged live; v1 leaves it by
			// losing that tag, and the v1 share, its subset empty, falls
			// back to what is left of the route: v2.
			reregister(t, c, "v1", "svc", v1, "live", "v1")
			reregister(t, c, "v2", "svc", v2, "live", "v2")
			cfg := consulCfg(c.Addr)
			cfg.Routes = []config.Route{{
				Service: testutil.TestService, ConsulService: "svc", Tags: []string{"live"},
				Routing: balancercfg.Routing{Split: weights(95, 5)},
			}}
			h := e.start(t, cfg)
			h.routable(t, testutil.TestService, 2)
			load := testutil.StartLoad(t, testutil.Dial(t, h.addr), testutil.LoadConfig{Workers: 4, Timeout: 5 * time.Second})
			moveUnderLoad(t, load, calls, v1, v2, func() {
				reregister(t, c, "v1", "svc", v1, "v1")
				testutil.WaitFor(t, 15*time.Second, "v1 to leave the route", func() bool {
					b, ok := h.g.State().Backend(testutil.TestService, v1.Addr)
					return !ok || !b.Routable
				})
			})
		})
	})
}

// moveUnderLoad checks that load splits about 95/5 between v1 and v2, calls
// move, then checks that every new call goes to v2 and that no call failed.
func moveUnderLoad(t *testing.T, load *testutil.Load, calls *tally, v1, v2 *testutil.Backend, move func()) {
	t.Helper()
	testutil.WaitFor(t, 30*time.Second, "1000 calls at 95/5", func() bool { return calls.total() >= 1000 })
	before1, before2 := calls.get(v1), calls.get(v2)
	share := float64(before2) / float64(before1+before2)
	t.Logf("95/5: v1 %d, v2 %d calls (v2 share %.3f)", before1, before2, share)
	// 5% of 1000 calls, with a standard deviation of 0.7%.
	if share < 0.01 || share > 0.12 {
		t.Errorf("v2 took %.3f of the calls at 95/5, want about 0.05", share)
	}
	move()
	// Calls already on v1 when the split moved finish there; by the time
	// v2 has taken 200 more, they are over.
	moved2 := calls.get(v2)
	testutil.WaitFor(t, 30*time.Second, "v2 to take 200 calls after the move", func() bool { return calls.get(v2) >= moved2+200 })
	after1, after2 := calls.get(v1), calls.get(v2)
	testutil.WaitFor(t, 30*time.Second, "v2 to take 1000 more calls", func() bool { return calls.get(v2) >= after2+1000 })
	load.Stop()
	if n := calls.get(v1) - after1; n != 0 {
		t.Errorf("v1 took %d calls after the split moved to 0/100", n)
	}
	t.Logf("0/100: v1 %d, v2 %d calls since the move settled; load %v", calls.get(v1)-after1, calls.get(v2)-after2, load.Counts())
	for code, n := range load.Counts() {
		if code != codes.OK {
			last, err := load.LastFailure()
			t.Errorf("%d calls ended %v (the last at %s: %v), want none failed", n, code, last.Format(time.StampMilli), err)
		}
	}
	if load.Counts()[codes.OK] < 2000 {
		t.Errorf("only %d calls succeeded: the load did not run through the move", load.Counts()[codes.OK])
	}
}
