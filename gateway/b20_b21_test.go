package gateway_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/internal/testutil"
)

// backendIn finds addr among route's backends in the gateway's state.
func (h *harness) backendIn(route, addr string) (healthcheck.Backend, bool) {
	return h.g.State().Backend(route, addr)
}

// testCalls takes the finished calls to test.Svc a backend has recorded.
// Calls to other services are not the test's: a loopback port may be reused
// while a process elsewhere still calls what used to be its backend there.
func testCalls(b *testutil.Backend) []testutil.Call {
	var out []testutil.Call
	for {
		select {
		case c := <-b.Calls():
			if strings.HasPrefix(c.Method, "/"+testutil.TestService+"/") {
				out = append(out, c)
			}
		default:
			return out
		}
	}
}

func TestB20_NoCallsBeforeFirstServing(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		a := testutil.StartBackend(t)
		b := testutil.StartBackend(t)
		b.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
		h := e.start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{a.Addr, b.Addr}}}})
		// b has answered its Watch, NOT_SERVING; a is in rotation.
		testutil.WaitFor(t, 10*time.Second, "a routable and b's first answer known", func() bool {
			ba, okA := h.backendIn(testutil.TestService, a.Addr)
			bb, okB := h.backendIn(testutil.TestService, b.Addr)
			return okA && ba.Routable && okB && bb.Status == healthpb.HealthCheckResponse_NOT_SERVING
		})

		cc := testutil.Dial(t, h.addr)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		const n = 20
		for i := range n {
			if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x")); err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
		}
		if got := len(testCalls(a)); got != n {
			t.Errorf("backend a got %d calls, want all %d", got, n)
		}
		if got := len(testCalls(b)); got != 0 {
			t.Fatalf("backend b got %d calls before its first SERVING answer, want 0", got)
		}

		b.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_SERVING)
		h.routable(t, testutil.TestService, 2)
		for i := range n {
			if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x")); err != nil {
				t.Fatalf("call %d after SERVING: %v", i, err)
			}
		}
		if got := len(testCalls(b)); got == 0 {
			t.Fatalf("backend b got no calls after SERVING")
		}
	})
}

func TestB21_InFlightCallFinishesThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		for _, tc := range []healthpb.HealthCheckResponse_ServingStatus{
			healthpb.HealthCheckResponse_NOT_SERVING,
			healthpb.HealthCheckResponse_UNKNOWN,
			healthpb.HealthCheckResponse_SERVICE_UNKNOWN,
		} {
			t.Run(tc.String(), func(t *testing.T) {
				be := testutil.StartBackend(t)
				h := e.start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{be.Addr}}}})
				h.routable(t, testutil.TestService, 1)

				cc := testutil.Dial(t, h.addr)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				call, err := testutil.RawStream(ctx, cc, "/test.Svc/Echo")
				if err != nil {
					t.Fatalf("open Echo: %v", err)
				}
				roundTrip := func(msg string) {
					t.Helper()
					out := []byte(msg)
					if err := call.SendMsg(&out); err != nil {
						t.Fatalf("send %q: %v", msg, err)
					}
					var in []byte
					if err := call.RecvMsg(&in); err != nil || string(in) != msg {
						t.Fatalf("echo of %q: got %q, %v", msg, in, err)
					}
				}
				roundTrip("before")

				be.Health.SetServingStatus(testutil.TestService, tc)
				h.routable(t, testutil.TestService, 0)
				// New calls no longer reach it...
				_, err = testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x"))
				if status.Code(err) != codes.Unavailable {
					t.Fatalf("new call after %s: got %v, want UNAVAILABLE", tc, err)
				}
				// ...and the one in flight goes on and ends OK.
				roundTrip("after")
				if err := call.CloseSend(); err != nil {
					t.Fatalf("CloseSend: %v", err)
				}
				var in []byte
				if err := call.RecvMsg(&in); !errors.Is(err, io.EOF) {
					t.Fatalf("end of the call in flight: got %v, want io.EOF (status OK)", err)
				}
				calls := testCalls(be)
				if len(calls) != 1 || calls[0].Err != nil || len(calls[0].Messages) != 2 {
					t.Fatalf("backend calls: %+v, want one call that ended without error after 2 messages", calls)
				}
			})
		}
	})
}
