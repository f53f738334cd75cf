package healthcheck_test

import (
	"testing"
	"time"

	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/internal/testutil"
)

// TestB36_LeftBackendIsNotEjected: the calls in flight on a backend that
// discovery dropped fail when its drain grace ends and its connection is
// closed. Passive detection must not eject it for that, while it drains or
// once it is forgotten: an ejection reported after BackendRemoved would
// make a metric series for a backend that is gone, one per churned backend,
// for good.
func TestB36_LeftBackendIsNotEjected(t *testing.T) {
	for _, tc := range []struct {
		name  string
		grace time.Duration
		// forgotten: the failures come after the backend is removed, not
		// while it drains.
		forgotten bool
	}{
		{"while it drains", time.Minute, false},
		{"once it is forgotten", 20 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const threshold = 3
			a, b := testutil.StartBackend(t), testutil.StartBackend(t)
			ev := newEvents()
			src := discovery.NewSwitch(discovery.Static{route: {a.Addr, b.Addr}})
			st := startChecker(t, healthcheck.Config{
				Settings: healthcheck.Settings{DrainGrace: tc.grace}, Events: ev,
				Outlier: healthcheck.OutlierConfig{ConsecutiveFailures: threshold, Ejection: time.Minute, MaxEjectionPercent: 100},
			}, src, nil)
			p, _ := st.await(t, 0, "both backends routable", func(s *healthcheck.State) bool { return s.Routes[route].Routable == 2 })
			be, _ := p.Backend(route, b.Addr)
			h := be.Handle
			// Calls in flight on b, as the balancer counts them.
			for range 2 * threshold {
				h.Begin()
			}

			from := st.mark()
			src.Set(discovery.Static{route: {a.Addr}})
			st.await(t, from, "b leaving", func(s *healthcheck.State) bool {
				be, ok := s.Backend(route, b.Addr)
				return ok && be.Leaving && !be.Routable
			})
			if tc.forgotten {
				testutil.WaitFor(t, waitTimeout, "b removed", func() bool { return ev.wasRemoved(b.Addr) })
			}
			// The held calls fail at the backend's end: past the threshold.
			calls := 0
			for range 2 * threshold {
				h.Done(localFailure)
				calls++
			}
			if byAddr, n := ev.ejections(); n != 0 {
				t.Fatalf("%d calls failed on a backend discovery dropped: %d ejections reported (%v), want none", calls, n, byAddr)
			}
			if n := h.InFlight(); n != 0 {
				t.Fatalf("%d calls in flight after each ended, want 0", n)
			}
			for _, p := range st.since(from) {
				if be, ok := p.Backend(route, b.Addr); ok && !be.EjectedUntil.IsZero() {
					t.Fatalf("table version %d shows the leaving backend ejected until %v", p.Version, be.EjectedUntil)
				}
			}
		})
	}
}
