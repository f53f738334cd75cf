package gateway_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http/httptest"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/internal/gatewaytest"
	"github.com/healthgate/healthgate/internal/testutil"
)

// warnLogger logs warnings and errors into the test's log: 200 cycles of
// debug lines would bury them.
func warnLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// healthgateSeries lists every healthgate_* series in a scrape, one key per
// label set.
func healthgateSeries(mfs map[string]*dto.MetricFamily) map[string]bool {
	out := map[string]bool{}
	for name, mf := range mfs {
		if !strings.HasPrefix(name, "healthgate_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			out[name+"{"+strings.Join(ls, ",")+"}"] = true
		}
	}
	return out
}

// diff lists the keys of a that b lacks.
func diff(a, b map[string]bool) []string {
	var out []string
	for k := range a {
		if !b[k] {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// TestB36_SeriesAndGoroutinesBackAfterChurn: 200 backends, each registered
// in Consul, routed, given calls that are still in flight when it is
// deregistered and its drain grace ends, and forgotten. Each leaves
// /metrics with the table, and at the end the healthgate_* series and the
// goroutines are back to what they were with the one backend that stays.
func TestB36_SeriesAndGoroutinesBackAfterChurn(t *testing.T) {
	const (
		cycles = 200
		// held calls are in flight on each backend when its drain grace
		// ends: more than the default 5 failures in a row, so that the
		// cut calls feed passive failure detection too.
		held = 6
		svc  = testutil.TestService
	)
	c := testutil.StartConsul(t)
	// One API client for every registration: a client per call would keep
	// an idle connection (two goroutines) each.
	agent := c.Client(t, "").Agent()
	register := func(id, addr string) {
		t.Helper()
		if err := agent.ServiceRegister(testutil.RouteReg(id, "svc", addr, svc)); err != nil {
			t.Fatalf("register %s: %v", id, err)
		}
	}
	anchor := testutil.StartBackend(t)
	register("anchor", anchor.Addr)
	cfg := consulCfg(c.Addr)
	// Backends are forgotten soon after they leave: the drain grace is most
	// of a cycle.
	cfg.Health.DrainGrace = 20 * time.Millisecond
	g := gatewaytest.Start(t, cfg, warnLogger(t))
	srv := httptest.NewServer(g.AdminHandler())
	t.Cleanup(srv.Close)
	cc := testutil.Dial(t, g.Addr)
	g.WaitRoutable(t, svc, 1)

	inTable := func(addr string) (listed, routable bool) {
		b, ok := g.State().Backend(svc, addr)
		return ok, ok && b.Routable
	}
	// Every client and connection the cycles use exists before the
	// baseline: the gRPC connection to the gateway, the Consul client's,
	// the admin client's.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if _, err := testutil.Unary(ctx, cc, "/"+svc+"/Echo", []byte("x")); err != nil {
		t.Fatalf("call to the anchor backend: %v", err)
	}
	cancel()
	anchor.Drain()

	scrape(t, srv)
	baseG := runtime.NumGoroutine()

	// Time from registration to routable, and from deregistration to gone
	// from the table, summed over the cycles.
	var toRoutable, toGone time.Duration
	cycle := func(id string) {
		be := testutil.StartBackend(t)
		defer be.Stop()
		t0 := time.Now()
		register(id, be.Addr)
		testutil.WaitFor(t, 10*time.Second, id+" routable", func() bool { _, ok := inTable(be.Addr); return ok })
		toRoutable += time.Since(t0)
		// Calls held open on the backend (round robin puts every other
		// one on the anchor, which is let go at once).
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var streams []grpc.ClientStream
		for len(streams) < held {
			sctx, scancel := context.WithCancel(ctx)
			s, err := testutil.RawStream(sctx, cc, "/"+svc+"/Block")
			if err != nil {
				t.Fatalf("%s: open a call: %v", id, err)
			}
			select {
			case <-be.Started():
				streams = append(streams, s)
				defer scancel()
			case <-anchor.Started():
				scancel()
			case <-ctx.Done():
				t.Fatalf("%s: a call through the gateway reached no backend", id)
			}
		}

		t1 := time.Now()
		if err := agent.ServiceDeregister(id); err != nil {
			t.Fatalf("deregister %s: %v", id, err)
		}
		testutil.WaitFor(t, 10*time.Second, id+" gone from the table", func() bool { listed, _ := inTable(be.Addr); return !listed })
		toGone += time.Since(t1)
		// Its connection closed when its drain grace ended: the calls on it
		// failed UNAVAILABLE (B14).
		for k, s := range streams {
			var m []byte
			if err := s.RecvMsg(&m); status.Code(err) != codes.Unavailable {
				t.Fatalf("%s: held call %d ended with %v when the backend's drain grace ended, want UNAVAILABLE", id, k, err)
			}
		}
		// Gone from the table, gone from /metrics.
		for k := range healthgateSeries(scrape(t, srv)) {
			if strings.Contains(k, "="+be.Addr+",") || strings.Contains(k, "="+be.Addr+"}") {
				t.Fatalf("%s: series %s still there after the backend left the table", id, k)
			}
		}
		anchor.Drain()
	}

	// The first cycle makes the series of the methods and codes its calls
	// end with (per gRPC method, bounded by metrics.MaxMethods, kept by
	// design); the series baseline is taken after it.
	cycle("warmup")
	baseSeries := healthgateSeries(scrape(t, srv))
	toRoutable, toGone = 0, 0

	start := time.Now()
	for i := range cycles {
		cycle(fmt.Sprintf("churn-%d", i))
	}
	took := time.Since(start)

	// Back to the baseline: series exactly; goroutines within a margin for
	// what comes and goes on its own: the anchor's liveness probe (a unary
	// call every second: one handler goroutine on the anchor while it
	// runs) and a keep-alive connection of the Consul or admin client that
	// the server closed and the next request dialed again (three
	// goroutines: client read and write loops, server conn). A leak of one
	// goroutine per cycle would be 200 over.
	const margin = 4
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var (
		after  map[string]bool
		afterG int
	)
poll:
	for {
		after = healthgateSeries(scrape(t, srv))
		afterG = runtime.NumGoroutine()
		if maps.Equal(after, baseSeries) && afterG <= baseG+margin {
			break
		}
		select {
		case <-deadline.C:
			break poll
		case <-tick.C:
		}
	}
	t.Logf("B36: %d register/deregister cycles (%d calls held on each at its drain end) in %v: per cycle %v, of which registration to routable %v, deregistration to gone from the table %v (drain grace %v)",
		cycles, held, took.Round(time.Millisecond), (took / cycles).Round(time.Microsecond),
		(toRoutable / cycles).Round(time.Microsecond), (toGone / cycles).Round(time.Microsecond), cfg.Health.DrainGrace)
	t.Logf("B36: healthgate_* series %d before, %d after; goroutines %d before, %d after (margin %d)",
		len(baseSeries), len(after), baseG, afterG, margin)
	// The figures logged, with generous bounds: discovery's B30 promise
	// (within 1s each way, plus the drain grace on the way out) and the
	// runtime kept under a minute.
	if avg := toRoutable / cycles; avg > time.Second {
		t.Errorf("registration to routable took %v on average, want < 1s", avg)
	}
	if avg := toGone / cycles; avg > time.Second+cfg.Health.DrainGrace {
		t.Errorf("deregistration to gone from the table took %v on average, want < 1s + the %v drain grace", avg, cfg.Health.DrainGrace)
	}
	if took > time.Minute {
		t.Errorf("%d cycles took %v, want < 1m", cycles, took)
	}
	if !maps.Equal(after, baseSeries) {
		t.Errorf("healthgate_* series after churn differ from the baseline:\n  new: %v\n  gone: %v", diff(after, baseSeries), diff(baseSeries, after))
	}
	if afterG > baseG+margin {
		buf := make([]byte, 1<<20)
		t.Errorf("goroutines: %d after churn, baseline %d + margin %d\n%s", afterG, baseG, margin, buf[:runtime.Stack(buf, true)])
	}
}
