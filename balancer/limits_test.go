package balancer

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/healthcheck"
)

// refusals records OnRefused.
type refusals struct {
	mu sync.Mutex
	n  map[Refusal]int
}

func (r *refusals) on(route string, why Refusal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[Refusal]int{}
	}
	r.n[why]++
}

func (r *refusals) count(why Refusal) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[why]
}

func TestMaxInFlightSkipsFullBackendsThenFailsFast(t *testing.T) {
	for _, policy := range []Policy{RoundRobin, LeastRequest} {
		t.Run(string(policy), func(t *testing.T) {
			var rf refusals
			b, _ := New(Config{Default: policy, Limits: map[string]Limits{"a.S": {MaxInFlight: 2}}, OnRefused: rf.on}, nil)
			h := newHandles(t, 3)
			b.Update(h.state("a.S", []int{1, 1, 5}, []bool{true, true, true}))
			r, err := b.Route("/a.S/M", nil)
			if err != nil {
				t.Fatal(err)
			}
			var held []*healthcheck.Handle
			for i := range 6 {
				hd, err := r.Pick(nil)
				if err != nil {
					t.Fatalf("pick %d of 6 with room for 6: %v", i+1, err)
				}
				held = append(held, hd)
			}
			for _, hd := range h.hs {
				if n := hd.InFlight(); n != 2 {
					t.Fatalf("%s has %d in flight, want 2", h.names[hd], n)
				}
			}
			_, err = r.Pick(nil)
			var full *FullError
			if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), `route "a.S" is at max_in_flight (2 calls)`) {
				t.Fatalf("every backend full: %v, want UNAVAILABLE naming the route and the limit", err)
			}
			if !errors.As(err, &full) || rf.count(RefusedFull) != 1 {
				t.Fatalf("every backend full: %T, %d refusals counted; want a FullError, counted once", err, rf.count(RefusedFull))
			}
			// One call ends: the next pick takes its place, wherever it is.
			held[0].Done(done)
			hd, err := r.Pick(nil)
			if err != nil || hd != held[0] {
				t.Fatalf("after one call on %s ended: picked %v (%v), want it", h.names[held[0]], h.names[hd], err)
			}
			// A backend tried already is not picked again; with the
			// others full, the call fails fast rather than going back.
			hd.Done(done)
			if _, err := r.Pick([]*healthcheck.Handle{held[0]}); status.Code(err) != codes.Unavailable {
				t.Fatalf("the only backend with room already tried: %v, want UNAVAILABLE", err)
			}
			for _, hd := range held[1:] {
				hd.Done(done)
			}
		})
	}
}

// TestMaxInFlightBurstDoesNotOvershoot: many goroutines picking at once
// never hold more than the limit on any backend.
func TestMaxInFlightBurstDoesNotOvershoot(t *testing.T) {
	const limit, backends, pickers = 5, 2, 64
	b, _ := New(Config{Limits: map[string]Limits{"a.S": {MaxInFlight: limit}}}, nil)
	h := newHandles(t, backends)
	b.Update(h.state("a.S", []int{1, 1}, []bool{true, true}))
	r, _ := b.Route("/a.S/M", nil)
	var (
		mu    sync.Mutex
		held  []*healthcheck.Handle
		start = make(chan struct{})
		wg    sync.WaitGroup
	)
	for range pickers {
		wg.Go(func() {
			<-start
			if hd, err := r.Pick(nil); err == nil {
				mu.Lock()
				held = append(held, hd)
				mu.Unlock()
			}
		})
	}
	close(start)
	wg.Wait()
	if len(held) != limit*backends {
		t.Fatalf("%d pickers at once got %d picks, want exactly %d", pickers, len(held), limit*backends)
	}
	for _, hd := range h.hs {
		if n := hd.InFlight(); n != limit {
			t.Fatalf("%s has %d in flight, want %d", h.names[hd], n, limit)
		}
	}
	for _, hd := range held {
		hd.Done(done)
	}
}

// TestRateLimitBurstThenRefusedKeptAcrossRebuilds: Route lets a burst
// through, then refuses with RESOURCE_EXHAUSTED; the bucket survives a
// picker rebuild and a SetConfig that keeps the rate, and a new rate
// starts a new, full bucket.
func TestRateLimitBurstThenRefusedKeptAcrossRebuilds(t *testing.T) {
	var rf refusals
	// A token every 1000s: none comes back during the test.
	cfg := Config{Limits: map[string]Limits{"a.S": {Rate: Rate{PerSecond: 0.001, Burst: 2}}}, OnRefused: rf.on}
	b, _ := New(cfg, nil)
	h := newHandles(t, 2)
	b.Update(h.state("a.S", []int{1, 1}, []bool{true, true}))
	passes := func(n int, when string) {
		t.Helper()
		for i := range n {
			if _, err := b.Route("/a.S/M", nil); err != nil {
				t.Fatalf("%s: call %d of %d: %v", when, i+1, n, err)
			}
		}
		_, err := b.Route("/a.S/M", nil)
		if st := status.Convert(err); st.Code() != codes.ResourceExhausted || st.Message() != "healthgate: rate limit of route a.S exceeded" {
			t.Fatalf("%s: past the burst: %v, want RESOURCE_EXHAUSTED", when, err)
		}
	}
	passes(2, "first burst")
	if got := rf.count(RefusedRate); got != 1 {
		t.Fatalf("%d refusals counted, want 1", got)
	}
	// Another routable set rebuilds the picker.
	b.Update(h.state("a.S", []int{1, 1}, []bool{true, false}))
	passes(0, "after a rebuild")
	if err := b.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	passes(0, "after SetConfig with the same rate")
	cfg.Limits = map[string]Limits{"a.S": {Rate: Rate{PerSecond: 0.001, Burst: 3}}}
	if err := b.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	passes(3, "after SetConfig with a new burst")
	cfg.Limits = nil
	if err := b.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := b.Route("/a.S/M", nil); err != nil {
			t.Fatalf("without a rate: %v", err)
		}
	}
	// Other routes are not limited by a.S's rate.
	if _, err := b.Route("/b.S/M", nil); status.Code(err) == codes.ResourceExhausted {
		t.Fatalf("a route without a rate was refused: %v", err)
	}
}

func TestLimitsValidate(t *testing.T) {
	for _, tc := range []struct {
		l    Limits
		want string
	}{
		{Limits{MaxInFlight: -1}, "max_in_flight"},
		{Limits{Rate: Rate{PerSecond: -1}}, "rate.per_second"},
		{Limits{Rate: Rate{PerSecond: 1, Burst: -1}}, "rate.burst"},
		{Limits{Rate: Rate{Burst: 3}}, "rate.burst: needs rate.per_second"},
	} {
		err := tc.l.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error naming %s", tc.l, err, tc.want)
		}
		if _, err := New(Config{Limits: map[string]Limits{"a.S": tc.l}}, nil); err == nil {
			t.Errorf("New accepted limits %+v", tc.l)
		}
	}
	if err := (Limits{MaxInFlight: 1, Rate: Rate{PerSecond: 0.5}}).Validate(); err != nil {
		t.Fatalf("valid limits: %v", err)
	}
	if got := (Rate{PerSecond: 2.5}).BurstOrDefault(); got != 3 {
		t.Fatalf("default burst of 2.5/s = %d, want 3", got)
	}
}

// TestInstanceMaxInFlight: an instance's own limit (Consul meta
// healthgate_max_in_flight) holds without a route limit, and the lower of
// the two applies when both are set.
func TestInstanceMaxInFlight(t *testing.T) {
	for _, tc := range []struct {
		name          string
		route         int
		instance      int
		wantOnLimited int
	}{
		{"instance alone", 0, 1, 1},
		{"instance lower than route", 3, 1, 1},
		{"route lower than instance", 2, 5, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rf refusals
			b, _ := New(Config{Limits: map[string]Limits{"a.S": {MaxInFlight: tc.route}}, OnRefused: rf.on}, nil)
			h := newHandles(t, 2)
			st := h.state("a.S", []int{1, 1}, []bool{true, true})
			// backend-0 says how much it takes; backend-1 takes the
			// route's limit, or any number.
			st.Routes["a.S"].Backends[0].MaxInFlight = tc.instance
			b.Update(st)
			r, _ := b.Route("/a.S/M", nil)
			var held []*healthcheck.Handle
			for range 10 {
				hd, err := r.Pick(nil)
				if err != nil {
					break
				}
				held = append(held, hd)
			}
			if n := h.hs[0].InFlight(); n != int64(tc.wantOnLimited) {
				t.Fatalf("backend-0 holds %d calls, want %d", n, tc.wantOnLimited)
			}
			if tc.route > 0 && len(held) != tc.wantOnLimited+tc.route {
				t.Fatalf("%d picks passed, want %d", len(held), tc.wantOnLimited+tc.route)
			}
			if tc.route == 0 && len(held) != 10 {
				t.Fatalf("%d of 10 picks passed with backend-1 unlimited", len(held))
			}
			for _, hd := range held {
				hd.Done(done)
			}
		})
	}
}

// BenchmarkPickLimited is BenchmarkPick on a route with max_in_flight and
// a rate that let everything through: what the limits cost a call.
func BenchmarkPickLimited(b *testing.B) {
	bal, _ := New(Config{Limits: map[string]Limits{"a.S": {MaxInFlight: 1 << 20, Rate: Rate{PerSecond: 1e12, Burst: 1 << 30}}}}, nil)
	h := newHandles(b, 3)
	bal.Update(h.state("a.S", []int{1, 1, 1}, []bool{true, true, true}))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r, err := bal.Route("/a.S/Method", nil)
			if err != nil {
				b.Error(err)
				return
			}
			hd, _ := r.Pick(nil)
			hd.Done(done)
		}
	})
}
