package scale

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime/pprof"
	"slices"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// backends are n grpc.Servers on loopback, each with grpc-go's health
// server reporting Route as SERVING.
type backends struct {
	// addrs are sorted, as the route lists them.
	addrs  []string
	health map[string]*health.Server

	servers []*grpc.Server
	wg      sync.WaitGroup // one Serve goroutine per server
	errMu   sync.Mutex
	errs    []error // guarded by errMu: what Serve returned
}

// startBackends starts n backends; stop ends them. Their goroutines carry
// the pprof label side=backend, and so do the goroutines they start.
func startBackends(ctx context.Context, n int) (*backends, error) {
	b := &backends{health: make(map[string]*health.Server, n)}
	var err error
	pprof.Do(ctx, pprof.Labels(sideLabel, sideBackend), func(context.Context) {
		for range n {
			var lis net.Listener
			if lis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
				err = fmt.Errorf("scale: backend %d of %d: %w", len(b.servers)+1, n, err)
				return
			}
			hs := health.NewServer()
			hs.SetServingStatus(Route, healthpb.HealthCheckResponse_SERVING)
			// WaitForHandlers: Stop returns only once every Watch
			// handler has, so nothing outlives stop.
			srv := grpc.NewServer(grpc.WaitForHandlers(true))
			healthpb.RegisterHealthServer(srv, hs)
			addr := lis.Addr().String()
			b.addrs = append(b.addrs, addr)
			b.health[addr] = hs
			b.servers = append(b.servers, srv)
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				if err := srv.Serve(lis); err != nil {
					b.errMu.Lock()
					b.errs = append(b.errs, fmt.Errorf("scale: backend %s: %w", addr, err))
					b.errMu.Unlock()
				}
			}()
		}
	})
	slices.Sort(b.addrs)
	if err != nil {
		b.stop()
		return nil, err
	}
	return b, nil
}

// set makes addr's health server report st for Route.
func (b *backends) set(addr string, st healthpb.HealthCheckResponse_ServingStatus) {
	b.health[addr].SetServingStatus(Route, st)
}

// stop ends every backend and waits for their goroutines; it returns what
// any Serve returned other than a normal stop.
func (b *backends) stop() error {
	for _, srv := range b.servers {
		srv.Stop()
	}
	b.wg.Wait()
	b.errMu.Lock()
	defer b.errMu.Unlock()
	return errors.Join(b.errs...)
}
