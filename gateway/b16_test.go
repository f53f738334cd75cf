package gateway_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
)

// TestB16_NonUTF8MethodWithStockClient is the crash B16 was written for: a
// method name that is not UTF-8 on a routed service reached the metrics
// labels, which panic on it, and the panic took the whole gateway down.
func TestB16_NonUTF8MethodWithStockClient(t *testing.T) {
	b := testutil.StartBackend(t)
	h := startGateway(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}}})
	h.routable(t, testutil.TestService, 1)
	cc := testutil.Dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err := testutil.Unary(ctx, cc, "/test.Svc/\xff", []byte("x"))
	if _, ok := status.FromError(err); !ok || err == nil {
		t.Fatalf("non-UTF-8 method: got %v, want a gRPC status", err)
	}
	if got, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("still here")); err != nil || string(got) != "still here" {
		t.Fatalf("a normal call after it: got %q, %v", got, err)
	}
}
