package gateway_test

import (
	"bytes"
	"context"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
)

// TestB81_SlowClientStallsOnlyItsOwnStream: a client opens 24 streams
// that each ask one backend for 1,000 messages of 16 KiB, and then stops
// reading. Its streams stall at their windows; the backend's connection,
// which every client shares, does not, although together the streams
// would fill more than its connection window: calls from another client
// to the same backend keep completing, the backend's health Watch keeps
// reporting (a flip to NOT_SERVING and back is seen), and the gateway
// holds no more than the stalled streams' windows (the heap stays within
// a bound far below the 390 MB the backend would send).
func TestB81_SlowClientStallsOnlyItsOwnStream(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		go drainCalls(t, b)
		h := e.start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}}})
		h.routable(t, testutil.TestService, 1)

		heapBefore := heapInUse()
		// The slow client: small static windows, and it never reads.
		slow := testutil.Dial(t, h.addr, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, "x-repeat", "1000")
		msg := bytes.Repeat([]byte("x"), 16<<10)
		const stalled = 24
		for range stalled {
			st, err := testutil.RawStream(ctx, slow, "/test.Svc/Repeat")
			if err != nil {
				t.Fatal(err)
			}
			if err := st.SendMsg(&msg); err != nil {
				t.Fatal(err)
			}
			if err := st.CloseSend(); err != nil {
				t.Fatal(err)
			}
		}
		// Wait until the backend is sending on every one.
		for range stalled {
			<-b.Started()
		}

		// Another client's calls to the same backend keep completing.
		fast := testutil.Dial(t, h.addr)
		for i := range 200 {
			cctx, ccancel := context.WithTimeout(t.Context(), 5*time.Second)
			_, err := testutil.Unary(cctx, fast, "/test.Svc/Echo", []byte("ping"))
			ccancel()
			if err != nil {
				t.Fatalf("call %d beside the stalled stream: %v", i, err)
			}
		}

		// The backend's health still travels: a flip out and back.
		b.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
		testutil.WaitFor(t, 10*time.Second, "the gateway to see NOT_SERVING beside the stalled stream", func() bool {
			bk, ok := h.g.State().Backend(testutil.TestService, b.Addr)
			return ok && bk.Status == healthpb.HealthCheckResponse_NOT_SERVING
		})
		b.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_SERVING)
		h.routable(t, testutil.TestService, 1)
		if _, err := testutil.Unary(t.Context(), fast, "/test.Svc/Echo", []byte("ping")); err != nil {
			t.Fatalf("call after the flip back: %v", err)
		}

		// What the stalled streams hold is bounded by their windows (1 MiB
		// each on the backend's side), not by what the backend would send.
		if grew := int64(heapInUse()) - int64(heapBefore); grew > 96<<20 {
			t.Errorf("heap grew by %d MiB while one client did not read; want it bounded by the stream windows", grew>>20)
		}
		cancel()
	})
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
