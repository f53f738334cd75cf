package testutil

import (
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// StartOverallHealthBackend starts a Backend like StartBackend's, except
// that its health server knows only "" (the server's overall health,
// SERVING): asked for any service name, TestService included, it answers
// SERVICE_UNKNOWN, as a server does that never named its services.
func StartOverallHealthBackend(t testing.TB) *Backend {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("backend listen: %v", err)
	}
	b := &Backend{
		Addr:    lis.Addr().String(),
		Health:  health.NewServer(),
		calls:   make(chan Call, 4096),
		startCh: make(chan struct{}, 4096),
	}
	b.Server = grpc.NewServer(grpc.ForceServerCodecV2(RawCodec{}), grpc.UnknownServiceHandler(b.handle))
	healthpb.RegisterHealthServer(b.Server, b.Health)
	go b.Server.Serve(lis) //nolint:errcheck // ends with Stop
	t.Cleanup(b.Stop)
	return b
}
