package gateway_test

import (
	"context"
	"testing"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/gatewaytest"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy/proxycfg"
	"github.com/healthgate/healthgate/tracing/tracingcfg"
)

// BenchmarkEngines makes unary calls of 100 bytes through a whole gateway
// in this process, 50 at a time, with each engine: with -cpuprofile, what
// each engine costs per call beside the client and the backend, and with
// -benchmem, what it allocates. make bench measures the same against other
// proxies, each in its own process.
func BenchmarkEngines(b *testing.B) {
	for _, eng := range []string{proxycfg.EngineGRPC, proxycfg.EngineRelay, policyEngine, tracingEngine} {
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
			switch eng {
			case policyEngine:
				cfg = policyConfig(b, backend.Addr)
			case tracingEngine:
				// Every call recorded and exported to a receiver in this
				// process: what tracing costs when on.
				cfg.Proxy.Engine = proxycfg.EngineRelay
				cfg.Tracing = tracingcfg.Config{OTLPEndpoint: testutil.StartOTLPReceiver(b).Addr, Insecure: true}
			}
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

// tracingEngine is the relay with tracing on, every call sampled.
const tracingEngine = "relay-tracing"

// policyEngine is the relay with every traffic policy of the route on, set
// so that none triggers on healthy calls but each runs its code on every
// call: what the policies cost on the hot path (make bench's
// healthgate-relay-policy measures the same between processes).
const policyEngine = "relay-policy"

func policyConfig(b *testing.B, backend string) config.Config {
	b.Helper()
	c, err := config.Parse([]byte(`
proxy: {engine: relay}
routes:
  - service: ` + testutil.TestService + `
    backends: [` + backend + `]
    retry: {codes: [UNAVAILABLE], max_attempts: 3, budget: {ratio: 0.2, min_per_second: 10}, buffer_bytes: 64KiB}
    timeout: 30s
    max_timeout: 60s
    idle_timeout: 60s
    max_in_flight: 100000
    rate: {per_second: 10000000, burst: 10000000}
`))
	if err != nil {
		b.Fatal(err)
	}
	return *c
}
