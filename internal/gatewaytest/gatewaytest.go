// Package gatewaytest runs a whole gateway in a test's process, on a free
// loopback port, until the test ends.
package gatewaytest

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/gateway"
	"github.com/healthgate/healthgate/internal/testutil"
)

// Gateway is a running gateway.
type Gateway struct {
	*gateway.Gateway
	// Addr is the gRPC address clients call.
	Addr string
	// Stop cancels the gateway's context: it drains, and Done is closed
	// when Run has returned. The test's cleanup stops it too, and fails
	// the test if Run returned an error.
	Stop context.CancelFunc
	Done chan struct{}
}

// Start runs a gateway built from cfg, with a 1 ms drain delay unless cfg
// sets one, logging to logger (nil: the test's log).
func Start(t testing.TB, cfg config.Config, logger *slog.Logger) *Gateway {
	t.Helper()
	if cfg.Shutdown.DrainDelay == 0 {
		cfg.Shutdown.DrainDelay = time.Millisecond
	}
	if logger == nil {
		logger = testutil.Logger(t)
	}
	g, err := gateway.New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Gateway{Gateway: g, Addr: lis.Addr().String(), Stop: cancel, Done: make(chan struct{})}
	var runErr error
	go func() {
		runErr = g.Run(ctx, lis)
		close(h.Done)
	}()
	t.Cleanup(func() {
		cancel()
		<-h.Done
		if runErr != nil {
			t.Errorf("gateway Run: %v", runErr)
		}
	})
	return h
}

// WaitRoutable waits until route has n routable backends.
func (g *Gateway) WaitRoutable(t testing.TB, route string, n int) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, "route "+route+" to have routable backends", func() bool {
		st := g.State()
		if st == nil {
			return false
		}
		r, ok := st.Routes[route]
		return ok && r.Routable == n
	})
}
