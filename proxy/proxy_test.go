package proxy_test

import (
	"context"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy"
)

// The forwarding contract (B01-B09, B12, B13, B17) runs against every
// engine through a whole gateway, in gateway/forwarding_test.go and
// gateway/b13_*_test.go: an engine that relays frames needs backend
// connections owned by healthcheck. The tests here build the grpc engine
// with proxy.New in front of a fake picker, and check only what that
// picker and its upstreams are told, which a gateway does not show: the
// Outcome each upstream's Done gets and what each pick was told was tried.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// upstream sends every call to one real backend connection and reports how
// each call ended.
type upstream struct {
	*grpc.ClientConn
	done chan proxy.Outcome
}

func (u upstream) Addr() string { return u.Target() }

func (u upstream) Done(o proxy.Outcome) {
	select {
	case u.done <- o:
	default:
	}
}

// picker routes every call to one upstream, or fails every pick with err.
type picker struct {
	up  upstream
	err error
}

func (p *picker) Route(string, proxy.Headers) (proxy.Route, error) {
	return proxy.Route{Name: "test", Backends: p}, nil
}

func (p *picker) Pick([]proxy.Upstream) (proxy.Upstream, error) {
	if p.err != nil {
		return nil, p.err
	}
	return p.up, nil
}

// serve serves p on a loopback port until the test or benchmark ends and
// returns its address.
func serve(tb testing.TB, p *proxy.Proxy) string {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := grpc.NewServer(p.ServerOptions()...)
	go srv.Serve(lis) //nolint:errcheck // ends with Stop
	tb.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// serveB is serve, under the name bench_test.go calls.
func serveB(b *testing.B, p *proxy.Proxy) string { return serve(b, p) }

// dialProxy serves p and returns a client connection to it.
func dialProxy(t *testing.T, p *proxy.Proxy) *grpc.ClientConn {
	t.Helper()
	return testutil.Dial(t, serve(t, p))
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func waitDone(t *testing.T, done chan proxy.Outcome) proxy.Outcome {
	t.Helper()
	select {
	case o := <-done:
		return o
	case <-time.After(10 * time.Second):
		t.Fatal("the call's Done was not reported within 10s")
		return proxy.Outcome{}
	}
}

// TestB07_DoneGetsTheClientsCode: the upstream of a call the client
// cancelled, or whose deadline passed, is told CANCELED or
// DEADLINE_EXCEEDED in its Done, never a code that passive failure
// detection would read as the backend's. What the client and the backend
// see runs against every engine in
// gateway.TestB07_CancelAndDeadlineCodesThroughGateway.
func TestB07_DoneGetsTheClientsCode(t *testing.T) {
	backend := testutil.StartBackend(t)
	up := upstream{testutil.Dial(t, backend.Addr), make(chan proxy.Outcome, 8)}
	p, err := proxy.New(proxy.Config{}, &picker{up: up}, nil)
	if err != nil {
		t.Fatal(err)
	}
	gw := dialProxy(t, p)

	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctxT(t))
		defer cancel()
		cs, err := testutil.RawStream(ctx, gw, "/test.Svc/Block")
		if err != nil {
			t.Fatal(err)
		}
		m := []byte("x")
		if err := cs.SendMsg(&m); err != nil {
			t.Fatal(err)
		}
		// Cancelled once the backend holds the call, so that the cancel
		// ends a forwarded call rather than one still being set up.
		select {
		case <-backend.Started():
		case <-ctx.Done():
			t.Fatal("the call did not reach the backend")
		}
		cancel()
		if got := waitDone(t, up.done).Code; got != codes.Canceled {
			t.Fatalf("Done got %v, want Canceled", got)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if _, err := testutil.Unary(ctx, gw, "/test.Svc/Block", nil); status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("client got %v, want DeadlineExceeded", err)
		}
		if got := waitDone(t, up.done).Code; got != codes.DeadlineExceeded {
			t.Fatalf("Done got %v, want DeadlineExceeded", got)
		}
	})
}
