package gateway_test

import (
	"context"
	"testing"
	"time"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
)

func TestB27_CallsSpreadPerCallOverOneConnection(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		a := testutil.StartBackend(t)
		b := testutil.StartBackend(t)
		h := e.start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{a.Addr, b.Addr}}}})
		h.routable(t, testutil.TestService, 2)

		// One client connection: a balancer that picked per connection would
		// send every call to the same backend.
		cc := testutil.Dial(t, h.addr)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		const n = 100
		for i := range n {
			if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x")); err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
		}
		// Each call's record is sent before its status, so all are in.
		gotA, gotB := len(testCalls(a)), len(testCalls(b))
		t.Logf("B27: %d calls over one connection: backend a %d, backend b %d", n, gotA, gotB)
		if gotA+gotB != n {
			t.Fatalf("backends saw %d calls, want %d", gotA+gotB, n)
		}
		if gotA < 40 || gotA > 60 {
			t.Fatalf("split %d/%d, want each backend within 40-60", gotA, gotB)
		}
	})
}
