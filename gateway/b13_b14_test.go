package gateway_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/internal/testutil"
)

// TestB13_BackendGoneBetweenTableAndPick: a backend whose connection breaks
// while calls keep coming fails only the calls it had accepted; calls picked
// onto it after that go to the other backend (the pick never waits on a
// connection that is not READY), and the load goes on.
func TestB13_BackendGoneBetweenTableAndPick(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		a, b := testutil.StartBackend(t), testutil.StartBackend(t)
		go drainCalls(t, a)
		go drainCalls(t, b)
		h := e.start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{a.Addr, b.Addr}}}})
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		const workers = 8
		load := testutil.StartLoad(t, cc, testutil.LoadConfig{Workers: workers, Timeout: 5 * time.Second})
		testutil.WaitFor(t, 10*time.Second, "calls to flow", func() bool { return load.Counts()[codes.OK] > 200 })

		a.Server.Stop()
		h.routable(t, testutil.TestService, 1)
		ok := load.Counts()[codes.OK]
		testutil.WaitFor(t, 10*time.Second, "calls to go on", func() bool { return load.Counts()[codes.OK] > ok+500 })
		load.Stop()
		failed := 0
		for code, n := range load.Counts() {
			if code != codes.OK {
				if code != codes.Unavailable {
					t.Errorf("%d calls ended %v, want UNAVAILABLE for a backend that died", n, code)
				}
				failed += n
			}
		}
		t.Logf("backend stopped under load: %v", load.Counts())
		if failed > workers {
			t.Fatalf("%d calls failed, want at most the %d in flight on the stopped backend", failed, workers)
		}
	})
}

// drainCalls keeps a backend's record of calls from filling up.
func drainCalls(t *testing.T, b *testutil.Backend) {
	for {
		select {
		case <-b.Calls():
		case <-t.Context().Done():
			return
		}
	}
}

// TestB14_GatewayClosingTheConnectionIsUnavailable: a call still open on a
// backend when the gateway closes that backend's connection (the drain
// grace of a backend that left discovery is over) ends UNAVAILABLE, not
// CANCELED: the client did not cancel.
func TestB14_GatewayClosingTheConnectionIsUnavailable(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		a, b := testutil.StartBackend(t), testutil.StartBackend(t)
		cfg := config.Config{
			Routes: []config.Route{{Service: testutil.TestService, Backends: []string{a.Addr}}},
			Health: healthcheck.Settings{DrainGrace: 300 * time.Millisecond},
		}
		h := e.start(t, cfg)
		h.routable(t, testutil.TestService, 1)
		cc := testutil.Dial(t, h.addr)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		s, err := testutil.RawStream(ctx, cc, "/test.Svc/Block")
		if err != nil {
			t.Fatal(err)
		}
		m := []byte("hold")
		if err := s.SendMsg(&m); err != nil {
			t.Fatal(err)
		}
		select {
		case <-a.Started():
		case <-ctx.Done():
			t.Fatal("the call did not reach the backend")
		}
		next := cfg
		next.Routes = []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}}
		if _, err := h.g.Reload(next); err != nil {
			t.Fatal(err)
		}
		var got []byte
		err = s.RecvMsg(&got)
		if st := status.Convert(err); st.Code() != codes.Unavailable {
			t.Fatalf("a call on a backend connection the gateway closed ended %v, want UNAVAILABLE", err)
		} else if !strings.Contains(st.Message(), "healthgate") {
			t.Errorf("message %q does not say the gateway ended it", st.Message())
		}

		// A backend that dies mid-call: UNAVAILABLE too.
		h.routable(t, testutil.TestService, 1)
		s, err = testutil.RawStream(ctx, cc, "/test.Svc/Block")
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SendMsg(&m); err != nil {
			t.Fatal(err)
		}
		select {
		case <-b.Started():
		case <-ctx.Done():
			t.Fatal("the call did not reach the backend")
		}
		b.Server.Stop()
		if err := s.RecvMsg(&got); status.Code(err) != codes.Unavailable {
			t.Fatalf("a call on a backend that died ended %v, want UNAVAILABLE", err)
		}
	})
}
