package balancer

import (
	"math"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/balancer/balancercfg"
	"github.com/healthgate/healthgate/healthcheck"
)

// hdrs are request headers for tests.
type hdrs map[string]string

func (h hdrs) Get(name string) string { return h[name] }

// tagged is a backend of a test route: its tags and whether it is routable.
type tagged struct {
	tags     []string
	routable bool
}

// taggedState is route a.S made of h's first len(bs) backends as bs say.
func (h handles) taggedState(bs ...tagged) *healthcheck.State {
	r := &healthcheck.Route{Name: "a.S"}
	for i, b := range bs {
		r.Backends = append(r.Backends, &healthcheck.Backend{Addr: h.names[h.hs[i]], Handle: h.hs[i], Weight: 1, Tags: b.tags, Routable: b.routable})
		if b.routable {
			r.Routable++
		}
	}
	return &healthcheck.State{Synced: true, Routes: map[string]*healthcheck.Route{"a.S": r}}
}

// routeN routes n calls with headers hd and counts where their picks land.
func (h handles) routeN(t *testing.T, b *Balancer, hd Headers, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		r, err := b.Route("/a.S/M", hd)
		if err != nil {
			t.Fatal(err)
		}
		be, err := r.Pick(nil)
		if err != nil {
			t.Fatal(err)
		}
		got[h.names[be]]++
		be.Done(done)
	}
	return got
}

func split(weights ...int) []balancercfg.Split {
	var s []balancercfg.Split
	for i, w := range weights {
		s = append(s, balancercfg.Split{Subset: balancercfg.Subset{Tags: []string{"v" + string(rune('1'+i))}}, Weight: w})
	}
	return s
}

func canaryRouting(weights ...int) Config {
	return Config{Routing: map[string]Routing{"a.S": {
		Match: []balancercfg.Match{{Header: "x-canary", Value: "true", Subset: balancercfg.Subset{Tags: []string{"canary"}}}},
		Split: split(weights...),
	}}}
}

func TestSubsetHeaderMatchTakesPrecedence(t *testing.T) {
	h := newHandles(t, 4)
	b, err := New(canaryRouting(1, 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Update(h.taggedState(
		tagged{[]string{"v1"}, true},
		tagged{[]string{"v2"}, true},
		tagged{[]string{"v2", "canary"}, true},
		tagged{[]string{"canary"}, false}, // not routable: never in a subset
	))
	if got := h.routeN(t, b, hdrs{"x-canary": "true"}, 200); got["backend-2"] != 200 {
		t.Fatalf("x-canary: true went to %v, want all 200 on backend-2, the routable canary", got)
	}
	got := h.routeN(t, b, hdrs{"x-canary": "false"}, 2000)
	if got["backend-3"] != 0 || got["backend-0"] < 800 || got["backend-0"]+got["backend-1"]+got["backend-2"] != 2000 {
		t.Fatalf("x-canary: false split 1:1 between [v1] and [v2] went to %v, want about 1000 on backend-0 and none on backend-3", got)
	}
	if got := h.routeN(t, b, nil, 100); got["backend-3"] != 0 {
		t.Fatalf("no headers: %v, want the split, never the unroutable backend", got)
	}
}

func TestSubsetMatchKinds(t *testing.T) {
	for _, tc := range []struct {
		m    balancercfg.Match
		v    string
		want bool
	}{
		{balancercfg.Match{Value: "true"}, "true", true},
		{balancercfg.Match{Value: "true"}, "True", false},
		{balancercfg.Match{Value: "true"}, "", false},
		{balancercfg.Match{Prefix: "beta-"}, "beta-7", true},
		{balancercfg.Match{Prefix: "beta-"}, "alpha", false},
		{balancercfg.Match{Present: true}, "anything", true},
		{balancercfg.Match{Present: true}, "", false},
	} {
		if got := tc.m.Matches(tc.v); got != tc.want {
			t.Errorf("%+v.Matches(%q) = %v, want %v", tc.m, tc.v, got, tc.want)
		}
	}
}

func TestSubsetSplitFollowsWeights(t *testing.T) {
	h := newHandles(t, 3)
	b, _ := New(canaryRouting(95, 5, 0), nil)
	b.Update(h.taggedState(tagged{[]string{"v1"}, true}, tagged{[]string{"v2"}, true}, tagged{[]string{"v3"}, true}))
	const n = 20000
	got := h.routeN(t, b, nil, n)
	// 5% of 20000 is 1000 with a standard deviation near 31: 6 of them
	// leave a flaky run about one in a billion.
	if v2 := got["backend-1"]; math.Abs(float64(v2)-0.05*n) > 6*math.Sqrt(n*0.05*0.95) {
		t.Fatalf("95/5/0 split over %d calls: %v, want about %d on [v2]", n, got, n/20)
	}
	if got["backend-2"] != 0 {
		t.Fatalf("a subset of weight 0 took %d calls", got["backend-2"])
	}
	if err := b.SetConfig(canaryRouting(0, 100)); err != nil {
		t.Fatal(err)
	}
	if got := h.routeN(t, b, nil, 500); got["backend-1"] != 500 {
		t.Fatalf("after 0/100: %v, want every call on [v2]", got)
	}
}

func TestSubsetEmptyFallsBackOrFails(t *testing.T) {
	h := newHandles(t, 2)
	st := h.taggedState(tagged{[]string{"v1"}, true}, tagged{[]string{"v2"}, false})
	cfg := canaryRouting(0, 1)
	b, _ := New(cfg, nil)
	b.Update(st)
	if got := h.routeN(t, b, nil, 50); got["backend-0"] != 50 {
		t.Fatalf("empty [v2] with fallback: %v, want the whole route (backend-0)", got)
	}
	if got := h.routeN(t, b, hdrs{"x-canary": "true"}, 50); got["backend-0"] != 50 {
		t.Fatalf("no [canary] backend with fallback: %v, want the whole route (backend-0)", got)
	}

	rc := cfg.Routing["a.S"]
	rc.OnEmptySubset = balancercfg.Fail
	if err := b.SetConfig(Config{Routing: map[string]Routing{"a.S": rc}}); err != nil {
		t.Fatal(err)
	}
	for _, hd := range []Headers{nil, hdrs{"x-canary": "true"}} {
		r, err := b.Route("/a.S/M", hd)
		if err != nil {
			t.Fatalf("Route: %v, want the subset's route, failing at Pick", err)
		}
		_, err = r.Pick(nil)
		st := status.Convert(err)
		if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), `no healthy upstream in subset [`) || !strings.Contains(st.Message(), `of route "a.S"`) {
			t.Fatalf("empty subset with fail (headers %v): %v, want UNAVAILABLE naming the subset and route", hd, err)
		}
	}
	// The subset fills up: calls go there at once.
	b.Update(h.taggedState(tagged{[]string{"v1"}, true}, tagged{[]string{"v2"}, true}))
	if got := h.routeN(t, b, nil, 50); got["backend-1"] != 50 {
		t.Fatalf("[v2] routable again: %v, want every call on backend-1", got)
	}
}

func TestSubsetTagsChangeRebuilds(t *testing.T) {
	h := newHandles(t, 2)
	cfg := canaryRouting(0, 1)
	var rebuilt []string
	cfg.OnRebuild = func(route string, _ int) { rebuilt = append(rebuilt, route) }
	b, _ := New(cfg, nil)
	b.Update(h.taggedState(tagged{[]string{"v1"}, true}, tagged{[]string{"v1"}, true}))
	if got := h.routeN(t, b, nil, 20); got["backend-0"] != 10 || got["backend-1"] != 10 {
		t.Fatalf("no [v2] yet: %v, want the whole route in turn", got)
	}
	before := len(rebuilt)
	// Same backends, same routability and weights: only a tag moves.
	b.Update(h.taggedState(tagged{[]string{"v1"}, true}, tagged{[]string{"v2"}, true}))
	if len(rebuilt) != before+1 {
		t.Fatalf("a tag change rebuilt %d pickers, want 1", len(rebuilt)-before)
	}
	if got := h.routeN(t, b, nil, 20); got["backend-1"] != 20 {
		t.Fatalf("backend-1 retagged v2: %v, want every call on it", got)
	}
}

// TestSubsetRouteAllocatesNothing: choosing a subset, by header or by
// weight, is on every call's path.
func TestSubsetRouteAllocatesNothing(t *testing.T) {
	h := newHandles(t, 2)
	b, _ := New(canaryRouting(50, 50), nil)
	b.Update(h.taggedState(tagged{[]string{"v1"}, true}, tagged{[]string{"v2", "canary"}, true}))
	var hd Headers = hdrs{"x-canary": "true"}
	for _, in := range []Headers{nil, hd, hdrs{}} {
		if a := testing.AllocsPerRun(1000, func() {
			r, _ := b.Route("/a.S/M", in)
			be, _ := r.Pick(nil)
			be.Done(done)
		}); a != 0 {
			t.Errorf("Route and Pick with subsets (headers %v): %v allocations per call, want 0", in, a)
		}
	}
}

func BenchmarkRoute(b *testing.B) {
	h := newHandles(b, 2)
	for _, bc := range []struct {
		name string
		cfg  Config
	}{{"plain", Config{}}, {"split", canaryRouting(95, 5)}} {
		bal, _ := New(bc.cfg, nil)
		bal.Update(h.taggedState(tagged{[]string{"v1"}, true}, tagged{[]string{"v2", "canary"}, true}))
		var hd Headers = hdrs{"x-other": "1"}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r, _ := bal.Route("/a.S/M", hd)
				be, _ := r.Pick(nil)
				be.Done(done)
			}
		})
	}
}
