//go:build unix

package gateway_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/gatewaytest"
	"github.com/healthgate/healthgate/internal/testutil"
)

// procGateway starts n real backend processes and a gateway routing
// test.Svc to them, with the default liveness and ejection settings.
func procGateway(t *testing.T, n int) ([]*testutil.Proc, *gatewaytest.Gateway) {
	t.Helper()
	bin := testutil.BuildTestBackend(t)
	procs := make([]*testutil.Proc, n)
	addrs := make([]string, n)
	for i := range procs {
		procs[i] = testutil.StartProc(t, bin, "127.0.0.1:0")
		addrs[i] = procs[i].Addr
	}
	g := gatewaytest.Start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: addrs}}}, nil)
	g.WaitRoutable(t, testutil.TestService, n)
	return procs, g
}

// routableAt waits until addr's routability in the table is want, and
// returns when that was first seen.
func routableAt(t *testing.T, g *gatewaytest.Gateway, addr string, want bool, within time.Duration) time.Time {
	t.Helper()
	var at time.Time
	testutil.WaitFor(t, within, "the backend's routability to change", func() bool {
		b, ok := g.State().Backend(testutil.TestService, addr)
		if ok && b.Routable == want {
			at = time.Now()
			return true
		}
		return false
	})
	return at
}

// TestHang_StoppedBackendLeavesRotation: a backend process that is
// SIGSTOPped under load (no Consul check, nothing but the gateway's own
// probe to notice) leaves the rotation within the liveness interval plus
// timeout; the calls that fail are only those that were on it, and the
// others keep flowing. SIGCONT brings it back.
func TestHang_StoppedBackendLeavesRotation(t *testing.T) {
	procs, g := procGateway(t, 3)
	cc := testutil.Dial(t, g.Addr)
	const workers = 8
	load := testutil.StartLoad(t, cc, testutil.LoadConfig{Workers: workers, Timeout: 20 * time.Second})
	testutil.WaitFor(t, 10*time.Second, "every backend to take calls", func() bool { return len(load.Backends()) == 3 })

	hung := procs[0]
	before := load.Counts()
	stopped := time.Now()
	hung.Stop()
	out := routableAt(t, g, hung.Addr, false, 15*time.Second)
	detect := out.Sub(stopped)
	b, _ := g.State().Backend(testutil.TestService, hung.Addr)
	t.Logf("SIGSTOP detected in %v (liveness 1s interval + 2s timeout); reason %q", detect.Round(time.Millisecond), b.Reason)
	if detect > 5*time.Second {
		t.Fatalf("a stopped backend stayed routable for %v, want within 5s (interval + timeout with defaults)", detect)
	}

	// Calls keep flowing on the other two; the ones caught on the stopped
	// backend fail once its connection is cut, not at their deadlines.
	okBefore := load.Counts()[codes.OK]
	testutil.WaitFor(t, 10*time.Second, "calls to keep succeeding", func() bool { return load.Counts()[codes.OK] > okBefore+1000 })
	failed := 0
	for code, n := range load.Counts() {
		if code != codes.OK {
			failed += n - before[code]
		}
	}
	t.Logf("calls failed while the backend hung: %d (%v); %d workers", failed, load.Counts(), workers)
	// Each worker can be caught on the stopped backend at most once before
	// it is out: the call it had there fails, the next ones go elsewhere.
	if failed > workers {
		t.Fatalf("%d calls failed, want at most the %d that could be in flight on the stopped backend", failed, workers)
	}
	if _, err := load.LastFailure(); err != nil && load.Counts()[codes.DeadlineExceeded] > before[codes.DeadlineExceeded] {
		t.Fatalf("calls on the stopped backend ran to their deadlines (%v): its connection was not cut", load.Counts())
	}

	hung.Cont()
	routableAt(t, g, hung.Addr, true, 15*time.Second)
	served := load.Backends()[hung.Addr]
	testutil.WaitFor(t, 10*time.Second, "the resumed backend to take calls again", func() bool { return load.Backends()[hung.Addr] > served })
}

// TestKill9_RestartedBackendGetsTrafficAtOnce: a backend killed with
// SIGKILL and restarted on the same port 300 ms later is routable as soon as
// it reports SERVING again (any ejection its failed calls caused ends early),
// and gets calls within 1s of that.
func TestKill9_RestartedBackendGetsTrafficAtOnce(t *testing.T) {
	procs, g := procGateway(t, 3)
	cc := testutil.Dial(t, g.Addr)
	load := testutil.StartLoad(t, cc, testutil.LoadConfig{Workers: 8, Timeout: 5 * time.Second})
	testutil.WaitFor(t, 10*time.Second, "every backend to take calls", func() bool { return len(load.Backends()) == 3 })

	victim := procs[1]
	victim.Kill()
	routableAt(t, g, victim.Addr, false, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	<-ctx.Done() // the backend stays dead for 300 ms, as in the report
	cancel()
	victim.Restart()
	back := routableAt(t, g, victim.Addr, true, 10*time.Second)
	served := load.Backends()[victim.Addr]
	var first time.Time
	testutil.WaitFor(t, 10*time.Second, "the restarted backend to take calls", func() bool {
		if load.Backends()[victim.Addr] > served {
			first = time.Now()
			return true
		}
		return false
	})
	gap := first.Sub(back)
	t.Logf("restarted backend routable again, first call %v later; outcomes %v", gap.Round(time.Millisecond), load.Counts())
	if gap > time.Second {
		t.Fatalf("the restarted backend got its first call %v after it was routable again, want within 1s", gap)
	}
	b, _ := g.State().Backend(testutil.TestService, victim.Addr)
	if !b.EjectedUntil.IsZero() {
		t.Fatalf("the restarted backend is still ejected until %v", b.EjectedUntil)
	}
}
