package gateway_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/example/authpb"
	"github.com/healthgate/healthgate/example/authserver"
	"github.com/healthgate/healthgate/internal/testutil"
)

// consulCfg is a gateway config with nothing but a Consul address: routes
// come from route tags.
func consulCfg(addr string) config.Config {
	return config.Config{Consul: discovery.ConsulSettings{Address: addr}}
}

// callOn makes a unary call through the gateway and says which backend took
// it, by seeing which backend's Started channel fired.
func callOn(t *testing.T, cc *grpc.ClientConn, backends ...*testutil.Backend) (int, error) {
	t.Helper()
	return callWith(t, cc, nil, backends...)
}

func TestB32_DeregisteredBackendDrainsThenCloses(t *testing.T) {
	c := testutil.StartConsul(t)
	a, b := testutil.StartBackend(t), testutil.StartBackend(t)
	c.Register(t, "", testutil.RouteReg("a", "svc", a.Addr, testutil.TestService))
	c.Register(t, "", testutil.RouteReg("b", "svc", b.Addr, testutil.TestService))
	cfg := consulCfg(c.Addr)
	cfg.Health.DrainGrace = 1500 * time.Millisecond
	h := startGateway(t, cfg)
	h.routable(t, testutil.TestService, 2)
	cc := testutil.Dial(t, h.addr)

	// A bidi stream in flight on a.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stream grpc.ClientStream
	for stream == nil {
		s, err := testutil.RawStream(ctx, cc, "/test.Svc/Echo")
		if err != nil {
			t.Fatal(err)
		}
		m := []byte("hello")
		if err := s.SendMsg(&m); err != nil {
			t.Fatal(err)
		}
		var got []byte
		if err := s.RecvMsg(&got); err != nil {
			t.Fatal(err)
		}
		select {
		case <-a.Started():
			stream = s
		case <-b.Started():
			s.CloseSend()
		}
	}

	start := time.Now()
	c.CLI(t, "services", "deregister", "-id", "a")
	h.routable(t, testutil.TestService, 1)
	t.Logf("deregistered -> out of rotation in %v", time.Since(start))
	for range 10 {
		if i, err := callOn(t, cc, a, b); err != nil || i != 1 {
			t.Fatalf("a new call went to backend %d (err %v) after a was deregistered", i, err)
		}
	}
	// The stream in flight on a still works during the grace period.
	m := []byte("still here")
	var got []byte
	if err := stream.SendMsg(&m); err != nil {
		t.Fatal(err)
	}
	if err := stream.RecvMsg(&got); err != nil || string(got) != "still here" {
		t.Fatalf("in-flight stream during the grace: %q, %v", got, err)
	}
	// After the grace the connection closes, and the stream with it.
	err := stream.RecvMsg(&got)
	if err == nil || time.Since(start) < cfg.Health.DrainGrace {
		t.Fatalf("stream ended with %v after %v, want an error after the %v grace", err, time.Since(start), cfg.Health.DrainGrace)
	}
	// And the Watch on a is closed: a's graceful stop has nothing to wait for.
	stopped := make(chan struct{})
	go func() { a.Server.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("backend a's GracefulStop still waits on a stream from the gateway")
	}
}

func TestB33_ConsulDownKeepsRoutingAndRecovers(t *testing.T) {
	c := testutil.StartConsul(t)
	a := testutil.StartBackend(t)
	c.Register(t, "", testutil.RouteReg("a", "svc", a.Addr, testutil.TestService))
	rec, logger := testutil.NewLogRecorder(t)
	cfg := consulCfg(c.Addr)
	h := startGatewayLog(t, cfg, logger)
	h.routable(t, testutil.TestService, 1)
	cc := testutil.Dial(t, h.addr)

	c.Stop()
	testutil.WaitFor(t, 10*time.Second, "the gateway to log that Consul is unreachable", func() bool {
		return rec.Count(slog.LevelWarn, "consul query failed") > 0
	})
	for i := range 20 {
		if _, err := callOn(t, cc, a); err != nil {
			t.Fatalf("call %d with Consul down: %v", i, err)
		}
	}
	if st := h.g.State(); st.Routes[testutil.TestService].Routable != 1 {
		t.Fatalf("the last known backend left the rotation while Consul was down")
	}

	// Consul comes back (a dev agent comes back empty); a backend that
	// registers now is picked up by the running gateway.
	c.Start()
	b := testutil.StartBackend(t)
	c.Register(t, "", testutil.RouteReg("b", "svc", b.Addr, testutil.TestService))
	testutil.WaitFor(t, 15*time.Second, "the new backend in rotation", func() bool {
		// Until b registers, the empty agent that came back lists no
		// route at all.
		be, ok := h.g.State().Backend(testutil.TestService, b.Addr)
		return ok && be.Routable
	})
	if rec.Count(slog.LevelInfo, "consul reachable again") == 0 {
		t.Error("the gateway did not log that Consul is reachable again")
	}
	if i, err := callOn(t, cc, a, b); err != nil || i < 0 {
		t.Fatalf("call after recovery: backend %d, %v", i, err)
	}
}

func TestB34_RouteTagRoutesWithoutConfig(t *testing.T) {
	c := testutil.StartConsul(t)
	h := startGateway(t, consulCfg(c.Addr))
	cc := testutil.Dial(t, h.addr)
	select {
	case <-h.g.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway never synced with Consul")
	}
	if _, err := callOn(t, cc); status.Code(err) != codes.Unimplemented {
		t.Fatalf("before any registration: %v, want UNIMPLEMENTED", err)
	}
	a := testutil.StartBackend(t)
	c.Register(t, "", testutil.RouteReg("a", "anything", a.Addr, testutil.TestService))
	h.routable(t, testutil.TestService, 1)
	if i, err := callOn(t, cc, a); err != nil || i != 0 {
		t.Fatalf("call after registration: backend %d, %v", i, err)
	}
}

func TestB41_UnknownServiceHealth(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		c := testutil.StartConsul(t)
		h := e.start(t, consulCfg(c.Addr))
		hc := healthpb.NewHealthClient(testutil.Dial(t, h.addr))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()

		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "late.Svc"})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("Check on an unknown service: %v, want NOT_FOUND", err)
		}
		w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "late.Svc"})
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := w.Recv(); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
			t.Fatalf("first Watch answer: %v, %v; want SERVICE_UNKNOWN", resp, err)
		}
		b := testutil.StartBackend(t)
		b.Health.SetServingStatus("late.Svc", healthpb.HealthCheckResponse_SERVING)
		c.Register(t, "", testutil.RouteReg("late", "late", b.Addr, "late.Svc"))
		for {
			resp, err := w.Recv()
			if err != nil {
				t.Fatalf("Watch ended before SERVING: %v", err)
			}
			if resp.Status == healthpb.HealthCheckResponse_SERVING {
				break
			}
		}
		if resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "late.Svc"}); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Check once routed: %v, %v", resp, err)
		}
	})
}

// loginBackend is an example backend running in this process.
type loginBackend struct {
	srv  *authserver.Server
	stop context.CancelFunc
	done chan error
}

func startLogin(t *testing.T, consulAddr, id string, drain time.Duration) *loginBackend {
	t.Helper()
	return startLoginAt(t, consulAddr, id, "127.0.0.1:0", drain)
}

func startLoginAt(t *testing.T, consulAddr, id, grpcAddr string, drain time.Duration) *loginBackend {
	t.Helper()
	srv, err := authserver.New(authserver.Config{
		GRPCAddr: grpcAddr, HTTPAddr: "127.0.0.1:0", ConsulAddr: consulAddr,
		ServiceID: id, DrainDelay: drain, Logger: testutil.Logger(t).With("backend", id),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	lb := &loginBackend{srv: srv, stop: cancel, done: make(chan error, 1)}
	go func() { lb.done <- srv.Run(ctx) }()
	t.Cleanup(lb.shutdown)
	return lb
}

func (lb *loginBackend) shutdown() {
	if lb.stop == nil {
		return
	}
	lb.stop()
	<-lb.done
	lb.stop = nil
}

func login(ctx context.Context, c authpb.AuthorizationClient, password string) (string, *authpb.LoginResponse, error) {
	var hdr metadata.MD
	res, err := c.Login(ctx, &authpb.LoginRequest{Email: "admin@admin.com", Password: password}, grpc.Header(&hdr))
	return strings.Join(hdr.Get(authserver.BackendHeader), ","), res, err
}

func TestB50_ArticleScenarioEndToEnd(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		c := testutil.StartConsul(t)
		b1 := startLogin(t, c.Addr, "auth-1", 0)
		b2 := startLogin(t, c.Addr, "auth-2", 0)
		h := e.start(t, consulCfg(c.Addr))
		h.routable(t, authserver.HealthService, 2)
		client := authpb.NewAuthorizationClient(testutil.Dial(t, h.addr))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()

		seen := map[string]int{}
		for range 10 {
			by, res, err := login(ctx, client, "123456")
			if err != nil || res.GetMessage() != "success" {
				t.Fatalf("login: %v, %v", res, err)
			}
			seen[by]++
		}
		if len(seen) != 2 {
			t.Fatalf("calls reached %v, want both backends", seen)
		}

		// A wrong password flips the backend that served it.
		first, res, err := login(ctx, client, "wrong")
		if err != nil || res.GetMessage() != "wrong email or password" {
			t.Fatalf("wrong password: %v, %v", res, err)
		}
		h.routable(t, authserver.HealthService, 1)
		for range 10 {
			by, _, err := login(ctx, client, "123456")
			if err != nil || by == first {
				t.Fatalf("after %s went NOT_SERVING: served by %s, %v", first, by, err)
			}
		}

		// The other one too: nothing is left, and calls fail at once.
		second, _, _ := login(ctx, client, "wrong")
		h.routable(t, authserver.HealthService, 0)
		start := time.Now()
		_, _, err = login(ctx, client, "123456")
		if st := status.Convert(err); st.Code() != codes.Unavailable {
			t.Fatalf("with no healthy backend: %v, want UNAVAILABLE", err)
		}
		t.Logf("UNAVAILABLE answered in %v", time.Since(start))

		// /update brings one back, without restarting client or gateway.
		back := b1
		if b2.srv.GRPCAddr() == first {
			back = b2
		}
		resp, err := http.Get("http://" + back.srv.HTTPAddr() + "/update")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("/update: %d %s", resp.StatusCode, body)
		}
		h.routable(t, authserver.HealthService, 1)
		by, res, err := login(ctx, client, "123456")
		if err != nil || res.GetMessage() != "success" || by != first {
			t.Fatalf("after /update on %s: served by %s: %v, %v", first, by, res, err)
		}
		_ = second
	})
}

func TestB51_RollingRestartLosesNothing(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		c := testutil.StartConsul(t)
		const drain = 300 * time.Millisecond
		backends := []*loginBackend{
			startLogin(t, c.Addr, "r-0", drain),
			startLogin(t, c.Addr, "r-1", drain),
			startLogin(t, c.Addr, "r-2", drain),
		}
		cfg := consulCfg(c.Addr)
		cfg.Health.DrainGrace = 2 * time.Second
		h := e.start(t, cfg)
		h.routable(t, authserver.HealthService, 3)
		client := authpb.NewAuthorizationClient(testutil.Dial(t, h.addr))

		// Steady load: workers call in a loop and count every outcome.
		var (
			ok, failed atomic.Int64
			mu         sync.Mutex
			failures   []string
		)
		loadCtx, stopLoad := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for loadCtx.Err() == nil {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					_, res, err := login(ctx, client, "123456")
					cancel()
					if err != nil || res.GetMessage() != "success" {
						failed.Add(1)
						mu.Lock()
						failures = append(failures, fmt.Sprint(err))
						mu.Unlock()
						continue
					}
					ok.Add(1)
				}
			}()
		}
		start := time.Now()
		for i := range backends {
			before := ok.Load()
			// Stop: deregister, NOT_SERVING, drain, graceful stop.
			backends[i].shutdown()
			// Start it again on the same address; it registers itself.
			addr := backends[i].srv.GRPCAddr()
			backends[i] = startLoginAt(t, c.Addr, fmt.Sprintf("r-%d", i), addr, drain)
			h.routable(t, authserver.HealthService, 3)
			if ok.Load() == before {
				t.Fatalf("no call succeeded while backend %d restarted", i)
			}
		}
		elapsed := time.Since(start)
		stopLoad()
		wg.Wait()
		rate := float64(ok.Load()+failed.Load()) / elapsed.Seconds()
		t.Logf("%d calls in %v (%.0f RPC/s) across three rolling restarts, %d failed", ok.Load()+failed.Load(), elapsed.Round(time.Millisecond), rate, failed.Load())
		if failed.Load() != 0 {
			t.Fatalf("%d calls failed, first: %s", failed.Load(), failures[0])
		}
		if rate < 200 {
			t.Fatalf("load was %.0f RPC/s, the contract asks for at least 200", rate)
		}
		_ = errors.New
	})
}
