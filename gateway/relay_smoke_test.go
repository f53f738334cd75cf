package gateway_test

import (
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy/proxycfg"
)

func TestRelaySmoke(t *testing.T) {
	b := testutil.StartBackend(t)
	go drainCalls(t, b)
	cfg := config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}}}
	cfg.Proxy.Engine = proxycfg.EngineRelay
	h := startGateway(t, cfg)
	h.routable(t, testutil.TestService, 1)
	cc := testutil.Dial(t, h.addr)
	for i := range 20 {
		out, err := testutil.Unary(t.Context(), cc, "/test.Svc/Echo", []byte("hello"))
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		_ = out
	}
	resp, err := healthpb.NewHealthClient(cc).Check(t.Context(), &healthpb.HealthCheckRequest{Service: testutil.TestService})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gateway health through the relay: %v %v", resp, err)
	}
}
