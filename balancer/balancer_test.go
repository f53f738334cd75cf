package balancer

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// handles are real backends, as a real checker makes them: the balancer
// only needs their identities and in-flight counts, and the Handle is
// opaque. names gives each its test name, backend-i.
type handles struct {
	hs    []*healthcheck.Handle
	names map[*healthcheck.Handle]string
}

func newHandles(t testing.TB, n int) handles {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = testutil.StartBackend(t).Addr
	}
	c, err := healthcheck.New(healthcheck.Config{DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var latest atomic.Pointer[healthcheck.State]
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, discovery.Static{testutil.TestService: addrs}, func(st *healthcheck.State) { latest.Store(st) })
	}()
	t.Cleanup(func() { cancel(); <-done })
	testutil.WaitFor(t, 10*time.Second, "every backend routable", func() bool {
		st := latest.Load()
		return st != nil && st.Routes[testutil.TestService].Routable == n
	})
	h := handles{names: map[*healthcheck.Handle]string{}}
	for _, addr := range addrs {
		b, _ := latest.Load().Backend(testutil.TestService, addr)
		h.names[b.Handle] = fmt.Sprintf("backend-%d", len(h.hs))
		h.hs = append(h.hs, b.Handle)
	}
	return h
}

func (h handles) state(route string, weights []int, routable []bool) *healthcheck.State {
	return h.stateOf(route, h.hs, weights, routable)
}

func (h handles) stateOf(route string, hs []*healthcheck.Handle, weights []int, routable []bool) *healthcheck.State {
	r := &healthcheck.Route{Name: route}
	for i, hd := range hs {
		r.Backends = append(r.Backends, &healthcheck.Backend{Addr: h.names[hd], Handle: hd, Weight: weights[i], Routable: routable[i]})
		if routable[i] {
			r.Routable++
		}
	}
	return &healthcheck.State{Synced: true, Routes: map[string]*healthcheck.Route{route: r}}
}

var done = healthcheck.Outcome{Code: codes.OK}

func (h handles) pickN(t *testing.T, b *Balancer, method string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		hd, err := b.Pick(context.Background(), method, nil)
		if err != nil {
			t.Fatal(err)
		}
		got[h.names[hd]]++
		hd.Done(done)
	}
	return got
}

func TestRoundRobinHonoursWeights(t *testing.T) {
	b, _ := New(Config{}, nil)
	h := newHandles(t, 3)
	b.Update(h.state("a.S", []int{1, 2, 3}, []bool{true, true, true}))
	got := h.pickN(t, b, "/a.S/M", 600)
	want := map[string]int{"backend-0": 100, "backend-1": 200, "backend-2": 300}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("weighted round robin over 600 picks: got %v, want %v", got, want)
		}
	}
}

func TestOnlyRoutableBackendsArePicked(t *testing.T) {
	b, _ := New(Config{}, nil)
	h := newHandles(t, 2)
	b.Update(h.state("a.S", []int{1, 1}, []bool{false, true}))
	if got := h.pickN(t, b, "/a.S/M", 50); got["backend-1"] != 50 {
		t.Fatalf("got %v, want every pick on the routable backend-1", got)
	}
	b.Update(h.state("a.S", []int{1, 1}, []bool{false, false}))
	_, err := b.Pick(context.Background(), "/a.S/M", nil)
	if st := status.Convert(err); st.Code() != codes.Unavailable {
		t.Fatalf("no routable backend: %v, want UNAVAILABLE", err)
	}
}

func TestLeastRequestAvoidsTheBusyBackend(t *testing.T) {
	b, _ := New(Config{Policies: map[string]Policy{"a.S": LeastRequest}}, nil)
	h := newHandles(t, 2)
	b.Update(h.state("a.S", []int{1, 1}, []bool{true, true}))
	// Hold 10 calls on whichever backend they land; with two backends,
	// power of two choices always compares both, so every held call
	// lands on the less loaded one and the load stays even.
	var held []*healthcheck.Handle
	for range 10 {
		hd, err := b.Pick(context.Background(), "/a.S/M", nil)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, hd)
	}
	count := map[string]int{}
	for _, hd := range held {
		count[h.names[hd]]++
	}
	if count["backend-0"] != 5 || count["backend-1"] != 5 {
		t.Fatalf("10 held calls landed %v, want 5 and 5", count)
	}
	for _, hd := range held {
		hd.Done(done)
	}
	if got := held[0].InFlight(); got != 0 {
		t.Fatalf("in flight after Done: %d", got)
	}
}

func TestInFlightCountsThroughTimeOutOfRotation(t *testing.T) {
	b, _ := New(Config{Policies: map[string]Policy{"a.S": LeastRequest}}, nil)
	h := newHandles(t, 2)
	b.Update(h.state("a.S", []int{1, 1}, []bool{true, false}))
	var held []*healthcheck.Handle
	for range 2 {
		hd, err := b.Pick(context.Background(), "/a.S/M", nil)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, hd)
	}
	// backend-0 leaves the rotation with its two calls still open: they
	// are still its calls, and they still count when it comes back.
	for i, routable := range [][]bool{{false, true}, {true, true}} {
		b.Update(h.state("a.S", []int{1, 1}, routable))
		if got := h.hs[0].InFlight(); got != 2 {
			t.Fatalf("update %d (routable %v): InFlight(backend-0) = %d, want 2", i, routable, got)
		}
		if got := h.hs[1].InFlight(); got != 0 {
			t.Fatalf("update %d: InFlight(backend-1) = %d, want 0", i, got)
		}
	}
	// Back in rotation, least request sends the next calls to the idle one.
	for range 2 {
		hd, err := b.Pick(context.Background(), "/a.S/M", nil)
		if err != nil {
			t.Fatal(err)
		}
		if h.names[hd] != "backend-1" {
			t.Fatalf("a new call went to %s, which has 2 calls open; want backend-1", h.names[hd])
		}
		held = append(held, hd)
	}
	for _, hd := range held {
		hd.Done(done)
	}
	if got := h.hs[0].InFlight() + h.hs[1].InFlight(); got != 0 {
		t.Fatalf("in flight after Done: %d", got)
	}
}

// TestB13_RepickSkipsTriedBackends: a call that a backend did not accept is
// picked again among the others, and fails only when none is left.
func TestB13_RepickSkipsTriedBackends(t *testing.T) {
	for _, policy := range []Policy{RoundRobin, LeastRequest} {
		t.Run(string(policy), func(t *testing.T) {
			b, _ := New(Config{Default: policy}, nil)
			h := newHandles(t, 3)
			b.Update(h.state("a.S", []int{1, 1, 1}, []bool{true, true, true}))
			var tried []*healthcheck.Handle
			for range 3 {
				hd, err := b.Pick(context.Background(), "/a.S/M", tried)
				if err != nil {
					t.Fatalf("after %d tried: %v", len(tried), err)
				}
				if slices.Contains(tried, hd) {
					t.Fatalf("picked %s again", h.names[hd])
				}
				hd.Done(done)
				tried = append(tried, hd)
			}
			_, err := b.Pick(context.Background(), "/a.S/M", tried)
			if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "after 3 attempts") {
				t.Fatalf("every backend tried: %v, want UNAVAILABLE after 3 attempts", err)
			}
		})
	}
}

// TestB15_NotSyncedIsUnavailable: before discovery has synced, no answer is
// UNIMPLEMENTED: the service may be routed a moment later.
func TestB15_NotSyncedIsUnavailable(t *testing.T) {
	b, _ := New(Config{}, nil)
	for _, m := range []string{"/a.S/M", "/unknown.S/M"} {
		_, err := b.Pick(context.Background(), m, nil)
		if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "discovery has not synced") {
			t.Fatalf("%s before any state: %v, want UNAVAILABLE naming the reason", m, err)
		}
	}
	b.Update(&healthcheck.State{Routes: map[string]*healthcheck.Route{"a.S": {Name: "a.S"}}})
	for _, m := range []string{"/a.S/M", "/unknown.S/M"} {
		_, err := b.Pick(context.Background(), m, nil)
		if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "discovery has not synced") {
			t.Fatalf("%s before sync: %v, want UNAVAILABLE naming the reason", m, err)
		}
	}
	b.Update(&healthcheck.State{Synced: true, Routes: map[string]*healthcheck.Route{"a.S": {Name: "a.S"}}})
	if _, err := b.Pick(context.Background(), "/unknown.S/M", nil); status.Code(err) != codes.Unimplemented {
		t.Fatalf("unknown service after sync: %v, want UNIMPLEMENTED", err)
	}
	if _, err := b.Pick(context.Background(), "/a.S/M", nil); status.Code(err) != codes.Unavailable {
		t.Fatalf("empty route after sync: %v, want UNAVAILABLE", err)
	}
}

func TestRoutingByService(t *testing.T) {
	b, _ := New(Config{}, nil)
	h := newHandles(t, 2)
	st := h.stateOf("a.S", h.hs[:1], []int{1}, []bool{true})
	st.Routes[discovery.DefaultRoute] = h.stateOf(discovery.DefaultRoute, h.hs[1:], []int{1}, []bool{true}).Routes[discovery.DefaultRoute]
	b.Update(st)
	if got := h.pickN(t, b, "/a.S/M", 3); got["backend-0"] != 3 {
		t.Fatalf("a.S went to %v", got)
	}
	if got := h.pickN(t, b, "/other.S/M", 3); got["backend-1"] != 3 {
		t.Fatalf("an unrouted service went to %v, want the default route", got)
	}
	st = &healthcheck.State{Synced: true, Routes: map[string]*healthcheck.Route{"a.S": st.Routes["a.S"]}}
	b.Update(st)
	_, err := b.Pick(context.Background(), "/other.S/M", nil)
	if st := status.Convert(err); st.Code() != codes.Unimplemented || st.Message() != "healthgate: unknown service other.S" {
		t.Fatalf("without a default route: %v, want UNIMPLEMENTED naming the service", err)
	}
}

func TestPickerRebuiltOnlyWhenRoutableSetChanges(t *testing.T) {
	b, _ := New(Config{}, nil)
	h := newHandles(t, 2)
	b.Update(h.state("a.S", []int{1, 1}, []bool{true, true}))
	p1 := b.table.Load().routes["a.S"]
	st := h.state("a.S", []int{1, 1}, []bool{true, true})
	st.Routes["a.S"].Backends[0].Reason = "something else changed"
	b.Update(st)
	if p2 := b.table.Load().routes["a.S"]; p2 != p1 {
		t.Fatal("the picker was rebuilt though the routable set did not change")
	}
	b.Update(h.state("a.S", []int{1, 1}, []bool{true, false}))
	if p3 := b.table.Load().routes["a.S"]; p3 == p1 {
		t.Fatal("the picker was not rebuilt when a backend left")
	}
}

func TestServiceOf(t *testing.T) {
	for in, want := range map[string]string{"/a.b.S/M": "a.b.S", "/S/M": "S", "nomethod": "nomethod", "/x/y/z": "x/y"} {
		if got := serviceOf(in); got != want {
			t.Errorf("serviceOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func BenchmarkPick(b *testing.B) {
	bal, _ := New(Config{}, nil)
	h := newHandles(b, 3)
	bal.Update(h.state("a.S", []int{1, 1, 1}, []bool{true, true, true}))
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			hd, _ := bal.Pick(ctx, "/a.S/Method", nil)
			hd.Done(done)
		}
	})
}
