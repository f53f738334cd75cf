package healthcheck_test

import (
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/internal/testutil"
)

// events counts what the checker reports: how many times each backend was
// ejected, and which were removed.
type events struct {
	mu      sync.Mutex
	ejected map[string]int  // guarded by mu
	removed map[string]bool // guarded by mu
}

func newEvents() *events { return &events{ejected: map[string]int{}, removed: map[string]bool{}} }

func (e *events) HealthChanged(string, string, healthpb.HealthCheckResponse_ServingStatus, healthpb.HealthCheckResponse_ServingStatus) {
}
func (e *events) WatchStarted(string, string) {}
func (e *events) BackendEjected(addr string) {
	e.mu.Lock()
	e.ejected[addr]++
	e.mu.Unlock()
}
func (e *events) BackendRemoved(addr string) {
	e.mu.Lock()
	e.removed[addr] = true
	e.mu.Unlock()
}

func (e *events) wasRemoved(addr string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.removed[addr]
}

// ejections returns the ejections so far, by address, and their total.
func (e *events) ejections() (map[string]int, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, k := range e.ejected {
		n += k
	}
	return maps.Clone(e.ejected), n
}

// outlierRoute is a route of n real backends under a checker with the
// given passive detection, once every backend is routable.
type outlierRoute struct {
	st       *states
	ev       *events
	backends []*testutil.Backend
	handles  []*healthcheck.Handle
}

func startOutlierRoute(t *testing.T, n int, o healthcheck.OutlierConfig) *outlierRoute {
	t.Helper()
	r := &outlierRoute{ev: newEvents()}
	var addrs []string
	for range n {
		b := testutil.StartBackend(t)
		r.backends = append(r.backends, b)
		addrs = append(addrs, b.Addr)
	}
	r.st = startChecker(t, healthcheck.Config{Outlier: o, Events: r.ev}, discovery.Static{route: addrs}, nil)
	p, _ := r.st.await(t, 0, fmt.Sprintf("all %d backends routable", n), func(s *healthcheck.State) bool {
		rt, ok := s.Routes[route]
		return ok && rt.Routable == n
	})
	for _, addr := range addrs {
		b, _ := p.State.Backend(route, addr)
		r.handles = append(r.handles, b.Handle)
	}
	return r
}

// calls ends k calls on h with outcome o, each counted by Begin first as
// the balancer's Pick does.
func calls(h *healthcheck.Handle, o healthcheck.Outcome, k int) {
	for range k {
		h.Begin()
		h.Done(o)
	}
}

var localFailure = healthcheck.Outcome{Origin: healthcheck.Local, Code: codes.Unavailable}

// ejectedIn counts the backends of the route that a table shows ejected.
func ejectedIn(s *healthcheck.State) int {
	n := 0
	for _, b := range s.Routes[route].Backends {
		if !b.EjectedUntil.IsZero() {
			if b.Routable {
				return -1 // never: an ejected backend is not routable
			}
			n++
		}
	}
	return n
}

// neverMore checks that no table published so far showed more than max
// backends of the route ejected, or an ejected backend routable.
func (r *outlierRoute) neverMore(t *testing.T, max int) {
	t.Helper()
	for _, p := range r.st.since(0) {
		if n := ejectedIn(p.State); n > max || n < 0 {
			t.Fatalf("table version %d shows %d backends ejected (-1: one of them routable), want at most %d: %s",
				p.Version, n, max, describe(p.Routes))
		}
	}
}

// TestB35_MaxEjectionPercent: however many of a route's backends keep
// failing, passive detection ejects at most max_ejection_percent of them,
// rounded down; at the default 50 a route of one backend never loses it.
func TestB35_MaxEjectionPercent(t *testing.T) {
	for _, tc := range []struct {
		name     string
		backends int
		percent  int // 0: the default, 50
		want     int
	}{
		{"4 backends at 50%", 4, 50, 2},
		{"3 backends at 50% rounds down", 3, 50, 1},
		{"4 backends at 25%", 4, 25, 1},
		{"1 backend at the default 50%", 1, 0, 0},
		{"4 backends at 100%", 4, 100, 4},
		{"1 backend at 100%", 1, 100, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const threshold = 3
			r := startOutlierRoute(t, tc.backends, healthcheck.OutlierConfig{
				ConsecutiveFailures: threshold, Ejection: time.Minute, MaxEjectionPercent: tc.percent,
			})
			from := r.st.mark()
			// Every backend fails well past the threshold, twice over: a
			// backend refused once is refused again.
			for range 2 {
				for _, h := range r.handles {
					calls(h, localFailure, 4*threshold)
				}
			}
			// Ejection is decided inside Done: the count is final here.
			byAddr, got := r.ev.ejections()
			if got != tc.want {
				t.Fatalf("%d ejections of %d failing backends at max_ejection_percent %d, want %d (%v)",
					got, tc.backends, tc.percent, tc.want, byAddr)
			}
			for addr, k := range byAddr {
				if k != 1 {
					t.Errorf("backend %s ejected %d times, want once", addr, k)
				}
			}
			if tc.want > 0 {
				p, _ := r.st.await(t, from, fmt.Sprintf("%d backends ejected in the table", tc.want), func(s *healthcheck.State) bool {
					return ejectedIn(s) == tc.want
				})
				rt := p.Routes[route]
				if rt.Routable != tc.backends-tc.want || rt.Serving != (rt.Routable >= 1) {
					t.Fatalf("with %d of %d ejected: routable %d serving %v", tc.want, tc.backends, rt.Routable, rt.Serving)
				}
			}
			for _, h := range r.handles {
				if n := h.InFlight(); n != 0 {
					t.Errorf("backend %s: %d in flight after every call ended, want 0", h.Addr(), n)
				}
			}
			r.neverMore(t, tc.want)
		})
	}
}

// TestB35_ConcurrentFailuresEjectOnce: many calls failing at once on one
// backend, each of them past the threshold, eject it once (one event, one
// ejection time, not a doubled one); on several backends at once they
// still respect max_ejection_percent.
func TestB35_ConcurrentFailuresEjectOnce(t *testing.T) {
	const (
		threshold  = 5
		goroutines = 64
		perG       = 50 // 3200 failures on a threshold of 5
		ejection   = time.Minute
	)
	// hammer makes goroutines calls fail on the handles at once.
	hammer := func(hs []*healthcheck.Handle) {
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range goroutines {
			h := hs[i%len(hs)]
			wg.Go(func() {
				<-start
				calls(h, localFailure, perG)
			})
		}
		close(start)
		wg.Wait()
	}

	t.Run("one backend", func(t *testing.T) {
		r := startOutlierRoute(t, 1, healthcheck.OutlierConfig{
			ConsecutiveFailures: threshold, Ejection: ejection, MaxEjectionPercent: 100,
		})
		from := r.st.mark()
		hammer(r.handles)
		after := time.Now()
		if byAddr, n := r.ev.ejections(); n != 1 {
			t.Fatalf("%d concurrent failures on one backend: %d ejections (%v), want exactly 1", goroutines*perG, n, byAddr)
		}
		p, _ := r.st.await(t, from, "the backend ejected in the table", func(s *healthcheck.State) bool { return ejectedIn(s) == 1 })
		b, _ := p.Backend(route, r.handles[0].Addr())
		// A second ejection would have lengthened the first: each next one
		// lasts as long again.
		if latest := after.Add(ejection); b.EjectedUntil.After(latest) {
			t.Fatalf("ejected until %v, later than the end of one ejection started before %v: ejected twice",
				b.EjectedUntil, latest)
		}
		if n := r.handles[0].InFlight(); n != 0 {
			t.Fatalf("%d in flight after every call ended, want 0", n)
		}
	})

	t.Run("four backends at 50%", func(t *testing.T) {
		r := startOutlierRoute(t, 4, healthcheck.OutlierConfig{
			ConsecutiveFailures: threshold, Ejection: ejection, MaxEjectionPercent: 50,
		})
		from := r.st.mark()
		hammer(r.handles)
		byAddr, n := r.ev.ejections()
		if n != 2 {
			t.Fatalf("concurrent failures on 4 backends at 50%%: %d ejections (%v), want exactly 2", n, byAddr)
		}
		for addr, k := range byAddr {
			if k != 1 {
				t.Errorf("backend %s ejected %d times, want once", addr, k)
			}
		}
		r.st.await(t, from, "2 backends ejected in the table", func(s *healthcheck.State) bool { return ejectedIn(s) == 2 })
		r.neverMore(t, 2)
	})
}

// TestB35_WhatCountsAsAFailure: failures in a row at the backend itself
// eject; the application's answers count only for the configured codes,
// any answer from the backend starts the count over, and what the client
// did says nothing of the backend.
func TestB35_WhatCountsAsAFailure(t *testing.T) {
	const threshold = 3
	var (
		local    = localFailure
		answerOK = healthcheck.Outcome{Origin: healthcheck.FromBackend, Code: codes.OK}
		appUnav  = healthcheck.Outcome{Origin: healthcheck.FromBackend, Code: codes.Unavailable}
		appNotFd = healthcheck.Outcome{Origin: healthcheck.FromBackend, Code: codes.NotFound}
		appIntl  = healthcheck.Outcome{Origin: healthcheck.FromBackend, Code: codes.Internal}
		cancel   = healthcheck.Outcome{Origin: healthcheck.FromClient, Code: codes.Canceled}
		deadline = healthcheck.Outcome{Origin: healthcheck.FromClient, Code: codes.DeadlineExceeded}
	)
	rep := func(o healthcheck.Outcome, n int) []healthcheck.Outcome {
		out := make([]healthcheck.Outcome, n)
		for i := range out {
			out[i] = o
		}
		return out
	}
	seq := func(parts ...[]healthcheck.Outcome) []healthcheck.Outcome {
		var out []healthcheck.Outcome
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	one := func(o healthcheck.Outcome) []healthcheck.Outcome { return []healthcheck.Outcome{o} }
	for _, tc := range []struct {
		name     string
		codes    []string
		disabled bool
		outcomes []healthcheck.Outcome
		want     bool
	}{
		{"local failures in a row eject", nil, false, rep(local, threshold), true},
		{"one short of the threshold does not", nil, false, rep(local, threshold-1), false},
		{"application UNAVAILABLE does not count by default", nil, false, rep(appUnav, 10*threshold), false},
		{"a configured application code counts", []string{"UNAVAILABLE"}, false, rep(appUnav, threshold), true},
		{"other application codes do not", []string{"UNAVAILABLE"}, false, rep(appIntl, 10*threshold), false},
		{"client cancels and deadlines say nothing of the backend", nil, false, seq(rep(cancel, 10*threshold), rep(deadline, 10*threshold)), false},
		{"an OK answer starts the count over", nil, false, seq(rep(local, threshold-1), one(answerOK), rep(local, threshold-1)), false},
		{"an application error answer starts it over too", nil, false, seq(rep(local, threshold-1), one(appNotFd), rep(local, threshold-1)), false},
		{"after an OK, threshold more in a row eject", nil, false, seq(rep(local, threshold-1), one(answerOK), rep(local, threshold)), true},
		{"a client cancel between failures does not start it over", nil, false, seq(rep(local, threshold-1), one(cancel), one(local)), true},
		{"disabled never ejects", nil, true, rep(local, 10*threshold), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startOutlierRoute(t, 1, healthcheck.OutlierConfig{
				Disabled: tc.disabled, ConsecutiveFailures: threshold, Ejection: time.Minute, MaxEjectionPercent: 100, Codes: tc.codes,
			})
			from := r.st.mark()
			h := r.handles[0]
			for _, o := range tc.outcomes {
				calls(h, o, 1)
			}
			_, n := r.ev.ejections()
			if got := n == 1; got != tc.want || n > 1 {
				t.Fatalf("%d ejections after %d outcomes, want ejected=%v", n, len(tc.outcomes), tc.want)
			}
			if tc.want {
				p, _ := r.st.await(t, from, "the ejection in the table", func(s *healthcheck.State) bool { return ejectedIn(s) == 1 })
				b, _ := p.Backend(route, h.Addr())
				if want := fmt.Sprintf("%d calls in a row failed at the backend", threshold); !strings.Contains(b.Reason, want) {
					t.Fatalf("ejected backend's reason %q, want it to say %q", b.Reason, want)
				}
			} else {
				r.neverMore(t, 0)
			}
		})
	}
}

// TestB35_EjectionExpires: an ejected backend is back in the table when
// its ejection time is over.
func TestB35_EjectionExpires(t *testing.T) {
	const ejection = 200 * time.Millisecond
	r := startOutlierRoute(t, 1, healthcheck.OutlierConfig{ConsecutiveFailures: 1, Ejection: ejection, MaxEjectionPercent: 100})
	addr := r.handles[0].Addr()
	from := r.st.mark()
	t0 := time.Now()
	calls(r.handles[0], localFailure, 1)
	_, out := r.st.await(t, from, "the backend ejected", func(s *healthcheck.State) bool { return ejectedIn(s) == 1 })
	p, _ := r.st.await(t, out+1, "the backend routable again", isRoutable(route, addr))
	took := p.At.Sub(t0)
	t.Logf("B35: ejected for %v -> routable again %v after the failure", ejection, took)
	if b, _ := p.Backend(route, addr); !b.EjectedUntil.IsZero() || b.Reason != "" {
		t.Fatalf("back from ejection: ejected until %v, reason %q; want neither", b.EjectedUntil, b.Reason)
	}
	// Not before its time; and at its time, give or take scheduling
	// (generous for -race on a loaded machine).
	if took < ejection || took > ejection+2*time.Second {
		t.Fatalf("routable again %v after the ejection, want within [%v, %v]", took, ejection, ejection+2*time.Second)
	}
}

// TestB35_EjectionEndsEarlyOnReconnect: a backend that reconnects after its
// ejection and reports SERVING is routable again long before the ejection
// time is over: whatever failed was its old connection.
func TestB35_EjectionEndsEarlyOnReconnect(t *testing.T) {
	const ejection = time.Minute
	r := startOutlierRoute(t, 1, healthcheck.OutlierConfig{ConsecutiveFailures: 1, Ejection: ejection, MaxEjectionPercent: 100})
	be := r.backends[0]
	from := r.st.mark()
	calls(r.handles[0], localFailure, 1)
	_, out := r.st.await(t, from, "the backend ejected", func(s *healthcheck.State) bool { return ejectedIn(s) == 1 })

	// The backend restarts on the same address.
	be.Stop()
	_, down := r.st.await(t, out+1, "the backend's connection lost", func(s *healthcheck.State) bool {
		b, ok := s.Backend(route, be.Addr)
		return ok && strings.Contains(b.Reason, "connection")
	})
	restarted := time.Now()
	nb := testutil.StartBackendOn(listen(t, be.Addr))
	t.Cleanup(nb.Stop)
	p, _ := r.st.await(t, down+1, "the backend routable again after it reconnected", isRoutable(route, be.Addr))
	took := p.At.Sub(restarted)
	t.Logf("B35: ejected for %v; reconnected and SERVING -> routable again %v after the restart", ejection, took)
	if took > 10*time.Second {
		t.Fatalf("routable %v after the restart, want well within the %v ejection (< 10s)", took, ejection)
	}
	if b, _ := p.Backend(route, be.Addr); !b.EjectedUntil.IsZero() || b.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("after the reconnect: ejected until %v, status %s; want no ejection, SERVING", b.EjectedUntil, b.Status)
	}
}
