package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/healthgate/healthgate/internal/testutil"
)

// TestB43_SigtermDrains runs the real binary: on SIGTERM every status turns
// NOT_SERVING first, the listener keeps accepting for the drain delay and
// then refuses, the call in flight finishes, and the process exits 0.
func TestB43_SigtermDrains(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		backend := testutil.StartBackend(t)
		listen := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
		const drainDelay = time.Second
		cfg := fmt.Sprintf("listen: %s\nroutes:\n- service: %s\n  backends: [%s]\nshutdown:\n  drain_delay: %s\n  grace: 10s\n",
			listen, testutil.TestService, backend.Addr, drainDelay)
		cfgPath := writeConfig(t, "healthgate.yaml", cfg, engine)
		p := startHealthgate(t, testWriter{t}, testWriter{t}, "-config", cfgPath)

		cc := testutil.Dial(t, listen)
		hc := healthpb.NewHealthClient(cc)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		testutil.WaitFor(t, 20*time.Second, "the gateway to report SERVING", func() bool {
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
			return err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING
		})
		watch, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: testutil.TestService})
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := watch.Recv(); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Watch: %v, %v", resp, err)
		}
		stream, err := testutil.RawStream(ctx, cc, "/test.Svc/Echo")
		if err != nil {
			t.Fatal(err)
		}
		echo := func(s string) error { return testutil.Echo(stream, s) }
		if err := echo("before"); err != nil {
			t.Fatal(err)
		}

		sigterm := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if resp, err := watch.Recv(); err != nil || resp.Status != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("after SIGTERM the Watch got %v, %v; want NOT_SERVING first", resp, err)
		}
		t.Logf("NOT_SERVING %v after SIGTERM", time.Since(sigterm))
		if c, err := net.Dial("tcp", listen); err != nil {
			t.Fatalf("a new connection was refused during the drain delay: %v", err)
		} else {
			c.Close()
		}
		testutil.WaitFor(t, 10*time.Second, "the listener to refuse new connections", func() bool {
			c, err := net.Dial("tcp", listen)
			if err == nil {
				c.Close()
			}
			return err != nil
		})
		if refused := time.Since(sigterm); refused < drainDelay {
			t.Fatalf("new connections refused %v after SIGTERM, before the %v drain delay", refused, drainDelay)
		}
		if err := echo("during the grace"); err != nil {
			t.Fatalf("the call in flight broke during the grace period: %v", err)
		}
		stream.CloseSend()
		var m []byte
		if err := stream.RecvMsg(&m); !errors.Is(err, io.EOF) {
			t.Fatalf("the call in flight ended with %v, want OK", err)
		}
		select {
		case <-p.exited:
			if p.waitErr != nil {
				t.Fatalf("healthgate exited with %v, want 0", p.waitErr)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("healthgate did not exit after its calls finished")
		}
	})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", p)
	return len(p), nil
}
