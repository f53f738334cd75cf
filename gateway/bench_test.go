package gateway_test

import (
	"context"
	"testing"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/gatewaytest"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy/proxycfg"
)

// BenchmarkEngines makes unary calls of 100 bytes through a whole gateway
// in this process, 50 at a time, with each engine: with -cpuprofile, what
// each engine costs per call beside the client and the backend, and with
// -benchmem, what it allocates. make bench measures the same against other
// proxies, each in its own process.
func BenchmarkEngines(b *testing.B) {
	for _, eng := range []string{proxycfg.EngineGRPC, proxycfg.EngineRelay} {
		b.Run(eng, func(b *testing.B) {
			backend := testutil.StartBackend(b)
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				for {
					select {
					case <-backend.Calls():
					case <-backend.Started():
					case <-stop:
						return
					}
				}
			}()
			cfg := config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{backend.Addr}}}}
			cfg.Proxy.Engine = eng
			g := gatewaytest.Start(b, cfg, nil)
			g.WaitRoutable(b, testutil.TestService, 1)
			cc := testutil.Dial(b, g.Addr)
			payload := make([]byte, 100)
			ctx := context.Background()
			b.ReportAllocs()
			b.SetParallelism(25)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
