package gateway_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding/gzip"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/gatewaytest"
	"github.com/healthgate/healthgate/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// harness is a running gateway.
type harness struct {
	g    *gatewaytest.Gateway
	addr string
	// stop cancels the gateway's context: it drains, and done is closed
	// when Run has returned.
	stop context.CancelFunc
	done chan struct{}
}

// startGateway runs a gateway on a free loopback port until the test ends.
func startGateway(t *testing.T, cfg config.Config) *harness {
	t.Helper()
	return startGatewayLog(t, cfg, nil)
}

func startGatewayLog(t *testing.T, cfg config.Config, logger *slog.Logger) *harness {
	t.Helper()
	g := gatewaytest.Start(t, cfg, logger)
	return &harness{g: g, addr: g.Addr, stop: g.Stop, done: g.Done}
}

// routable waits until route has n routable backends.
func (h *harness) routable(t *testing.T, route string, n int) {
	t.Helper()
	h.g.WaitRoutable(t, route, n)
}

func TestB10_NoRoutableBackendIsUnavailableAtOnce(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		b.Health.SetServingStatus("test.Svc", healthpb.HealthCheckResponse_NOT_SERVING)
		h := e.start(t, config.Config{Routes: []config.Route{{Service: "test.Svc", Backends: []string{b.Addr}}}})
		testutil.WaitFor(t, 10*time.Second, "the backend's NOT_SERVING to be known", func() bool {
			st := h.g.State()
			return st != nil && len(st.Routes["test.Svc"].Backends) == 1 &&
				st.Routes["test.Svc"].Backends[0].Status == healthpb.HealthCheckResponse_NOT_SERVING
		})
		cc := testutil.Dial(t, h.addr)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x"))
		st := status.Convert(err)
		if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), `no healthy upstream for route "test.Svc"`) {
			t.Fatalf("got %v, want UNAVAILABLE naming the route", err)
		}
		select {
		case <-b.Started():
			t.Fatal("a backend stream was opened for a call that had no routable backend")
		default:
		}
	})
}

func TestB11_UnroutedServiceIsUnimplemented(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		h := e.start(t, config.Config{Routes: []config.Route{{Service: "test.Svc", Backends: []string{b.Addr}}}})
		h.routable(t, "test.Svc", 1)
		cc := testutil.Dial(t, h.addr)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x")); err != nil {
			t.Fatalf("routed service: %v", err)
		}
		_, err := testutil.Unary(ctx, cc, "/other.Svc/Echo", []byte("x"))
		if st := status.Convert(err); st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "other.Svc") {
			t.Fatalf("got %v, want UNIMPLEMENTED naming other.Svc", err)
		}
	})
}

func TestGzipCompressedCallsPass(t *testing.T) {
	b := testutil.StartBackend(t)
	h := startGateway(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}}})
	h.routable(t, testutil.TestService, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	payload := []byte(strings.Repeat("compress me ", 100))
	got, err := testutil.Unary(ctx, testutil.Dial(t, h.addr), "/test.Svc/Echo", payload, grpc.UseCompressor(gzip.Name))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(payload) {
		t.Fatalf("got %d bytes back, not the %d sent", len(got), len(payload))
	}
	if c := b.NextCall(t); len(c.Messages) != 1 || string(c.Messages[0]) != string(payload) {
		t.Fatalf("the backend got %q", c.Messages)
	}
}
