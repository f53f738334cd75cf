package healthcheck_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy/proxycfg"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	// waitTimeout bounds every wait for an event that must happen.
	waitTimeout = 10 * time.Second
	route       = testutil.TestService
)

// ---- the checker under test ----

// published is one State and when the checker published it.
type published struct {
	*healthcheck.State
	At time.Time
}

// states records every State a checker publishes.
type states struct {
	mu  sync.Mutex
	all []published // guarded by mu
	// changed gets a value after each publish; values merge.
	changed chan struct{}
}

func (s *states) publish(st *healthcheck.State) {
	s.mu.Lock()
	s.all = append(s.all, published{st, time.Now()})
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// mark is the index the next published state will have.
func (s *states) mark() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.all)
}

// since returns the states published at or after index from.
func (s *states) since(from int) []published {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.all[from:])
}

// await waits for the first state published at or after index from that
// satisfies cond, and returns it with its index.
func (s *states) await(t *testing.T, from int, what string, cond func(*healthcheck.State) bool) (published, int) {
	t.Helper()
	timeout := time.NewTimer(waitTimeout)
	defer timeout.Stop()
	for {
		for i, p := range s.since(from) {
			if cond(p.State) {
				return p, from + i
			}
		}
		select {
		case <-s.changed:
		case <-timeout.C:
			last := "no state published"
			if st := s.since(0); len(st) > 0 {
				last = describe(st[len(st)-1].Routes)
			}
			t.Fatalf("timed out after %s waiting for %s; last state: %s", waitTimeout, what, last)
		}
	}
}

// settles waits until the latest published state satisfies cond and no
// other state follows it for window: where the checker comes to rest once
// a sequence of updates has been read.
func (s *states) settles(t *testing.T, window time.Duration, what string, cond func(*healthcheck.State) bool) published {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		all := s.since(0)
		if n := len(all); n > 0 && cond(all[n-1].State) {
			quiet := time.NewTimer(window)
			select {
			case <-s.changed:
				quiet.Stop()
				continue
			case <-quiet.C:
				if s.mark() == n {
					return all[n-1]
				}
				continue
			case <-deadline.C:
				quiet.Stop()
			}
		} else {
			select {
			case <-s.changed:
				continue
			case <-deadline.C:
			}
		}
		last := "no state published"
		if n := len(all); n > 0 {
			last = describe(all[n-1].Routes)
		}
		t.Fatalf("timed out after %s waiting for the state to settle with %s; last state: %s", waitTimeout, what, last)
	}
}

// describe is a one-line summary of routes for failure messages.
func describe(routes map[string]*healthcheck.Route) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(routes)) {
		r := routes[name]
		b.WriteString(name + "[" + r.HealthService + "]:")
		for _, be := range r.Backends {
			b.WriteString(" " + be.Addr + "=" + be.Status.String())
			if be.Routable {
				b.WriteString("/routable")
			}
			if be.Reason != "" {
				b.WriteString("(" + be.Reason + ")")
			}
		}
		b.WriteString("; ")
	}
	return b.String()
}

func isRoutable(route, addr string) func(*healthcheck.State) bool {
	return func(st *healthcheck.State) bool {
		b, ok := st.Backend(route, addr)
		return ok && b.Routable
	}
}

func notRoutable(route, addr string) func(*healthcheck.State) bool {
	return func(st *healthcheck.State) bool {
		b, ok := st.Backend(route, addr)
		return ok && !b.Routable
	}
}

// unroutableWith: listed, not routable, with that status.
func unroutableWith(route, addr string, want healthpb.HealthCheckResponse_ServingStatus) func(*healthcheck.State) bool {
	return func(st *healthcheck.State) bool {
		b, ok := st.Backend(route, addr)
		return ok && !b.Routable && b.Status == want
	}
}

// dialOptions are the gateway's, with a short connection backoff so that a
// restarted backend is reconnected quickly.
func dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithIdleTimeout(0),
	}
}

// startChecker runs a checker on src until the test ends and records what
// it publishes. Zero DialOptions means dialOptions(); a nil logger logs
// into the test's log. The backends' connections are those of the first
// engine of the run (testutil.Engines): HEALTHGATE_ENGINES=relay runs the
// package over the relay's connections.
func startChecker(t *testing.T, cfg healthcheck.Config, src discovery.Source, logger *slog.Logger) *states {
	t.Helper()
	if cfg.DialOptions == nil {
		cfg.DialOptions = dialOptions()
	}
	cfg.RelayConns = cfg.RelayConns || testutil.Engines(t)[0] == proxycfg.EngineRelay
	if logger == nil {
		logger = testutil.Logger(t)
	}
	c, err := healthcheck.New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	s := &states{changed: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, src, s.publish) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("checker Run: %v", err)
		}
	})
	return s
}

// ---- backends ----

// watchCall is one Watch a backend received.
type watchCall struct {
	service string
	at      time.Time
}

// watchLog records the Watches a server receives for the services it is
// told, through a stream interceptor. Other Watches are ignored: loopback
// ports are reused, and a process elsewhere on the machine may still be
// watching what used to be its backend on this port.
type watchLog struct {
	ch       chan watchCall
	services map[string]bool
}

func newWatchLog(services ...string) *watchLog {
	w := &watchLog{ch: make(chan watchCall, 1024), services: map[string]bool{}}
	for _, s := range services {
		w.services[s] = true
	}
	return w
}

func (w *watchLog) option() grpc.ServerOption {
	return grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if info.FullMethod != healthpb.Health_Watch_FullMethodName {
			return h(srv, ss)
		}
		return h(srv, &recordRecv{ServerStream: ss, log: w, at: time.Now()})
	})
}

// next waits for the next Watch.
func (w *watchLog) next(t *testing.T) watchCall {
	t.Helper()
	select {
	case c := <-w.ch:
		return c
	case <-time.After(waitTimeout):
		t.Fatalf("no Watch within %s", waitTimeout)
		return watchCall{}
	}
}

// none checks that no Watch arrives within window.
func (w *watchLog) none(t *testing.T, window time.Duration) {
	t.Helper()
	select {
	case c := <-w.ch:
		t.Fatalf("unexpected Watch for %q", c.service)
	case <-time.After(window):
	}
}

// counts takes every Watch recorded so far, by service.
func (w *watchLog) counts() map[string]int {
	got := map[string]int{}
	for {
		select {
		case c := <-w.ch:
			got[c.service]++
		default:
			return got
		}
	}
}

type recordRecv struct {
	grpc.ServerStream
	log  *watchLog
	at   time.Time
	once bool
}

func (r *recordRecv) RecvMsg(m any) error {
	err := r.ServerStream.RecvMsg(m)
	if req, ok := m.(*healthpb.HealthCheckRequest); ok && err == nil && !r.once && r.log.services[req.GetService()] {
		r.once = true
		r.log.ch <- watchCall{service: req.GetService(), at: r.at}
	}
	return err
}

// server is a gRPC server on loopback whose health service is hs; with a nil
// hs it has none and answers the health methods UNIMPLEMENTED, as a server
// that never registered grpc.health.v1 does. It records the Watches for
// route.
type server struct {
	Addr    string
	srv     *grpc.Server
	watches *watchLog
}

func serve(t *testing.T, lis net.Listener, hs healthpb.HealthServer) *server {
	t.Helper()
	s := &server{Addr: lis.Addr().String(), watches: newWatchLog(route)}
	s.srv = grpc.NewServer(s.watches.option(), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(ss)
		if method == healthpb.Health_Watch_FullMethodName {
			// Read the request so that the interceptor records it.
			var req healthpb.HealthCheckRequest
			if err := ss.RecvMsg(&req); err != nil {
				return err
			}
		}
		// grpc-go's own words for a service it does not serve.
		return status.Errorf(codes.Unimplemented, "unknown service %s", strings.Split(method, "/")[1])
	}))
	if hs != nil {
		healthpb.RegisterHealthServer(s.srv, hs)
	}
	go s.srv.Serve(lis) //nolint:errcheck // ends with Stop
	t.Cleanup(s.srv.Stop)
	return s
}

func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	return lis
}

// gatedHealth is a health server whose Watch answers only once gate is
// closed.
type gatedHealth struct {
	*health.Server
	gate chan struct{}
}

func (g gatedHealth) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	select {
	case <-g.gate:
	case <-stream.Context().Done():
		return status.FromContextError(stream.Context().Err()).Err()
	}
	return g.Server.Watch(req, stream)
}

// scriptedHealth runs watch for the n-th Watch it receives, counting from 1.
type scriptedHealth struct {
	healthpb.UnimplementedHealthServer
	n     atomic.Int32
	watch func(n int, stream healthpb.Health_WatchServer) error
}

func (s *scriptedHealth) Watch(_ *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	return s.watch(int(s.n.Add(1)), stream)
}

// echo opens a bidi Echo call on conn and checks one round trip.
func echo(t *testing.T, ctx context.Context, conn grpc.ClientConnInterface) grpc.ClientStream {
	t.Helper()
	s, err := testutil.RawStream(ctx, conn, "/"+route+"/Echo")
	if err != nil {
		t.Fatalf("open Echo: %v", err)
	}
	roundTrip(t, s, "before")
	return s
}

func roundTrip(t *testing.T, s grpc.ClientStream, msg string) {
	t.Helper()
	out := []byte(msg)
	if err := s.SendMsg(&out); err != nil {
		t.Fatalf("send %q: %v", msg, err)
	}
	var in []byte
	if err := s.RecvMsg(&in); err != nil {
		t.Fatalf("receive %q: %v", msg, err)
	}
	if !bytes.Equal(in, out) {
		t.Fatalf("echo: got %q, want %q", in, out)
	}
}

// finish half-closes s and checks that it ends OK.
func finish(t *testing.T, s grpc.ClientStream) {
	t.Helper()
	if err := s.CloseSend(); err != nil {
		t.Fatalf("CloseSend: %v", err)
	}
	var in []byte
	if err := s.RecvMsg(&in); !errors.Is(err, io.EOF) {
		t.Fatalf("end of the call: got %v, want io.EOF (status OK)", err)
	}
}

// ---- B20-B26 ----

func TestB20_NoTrafficBeforeFirstServing(t *testing.T) {
	hs := health.NewServer()
	hs.SetServingStatus(route, healthpb.HealthCheckResponse_NOT_SERVING)
	gate := make(chan struct{})
	srv := serve(t, listen(t, "127.0.0.1:0"), gatedHealth{hs, gate})
	st := startChecker(t, healthcheck.Config{}, discovery.Static{route: {srv.Addr}}, nil)

	// Connected, Watch open, no answer yet: not routable.
	if w := srv.watches.next(t); w.service != route {
		t.Fatalf("Watch for %q, want %q", w.service, route)
	}
	p, _ := st.await(t, 0, "the backend to be waiting for its first health response", func(s *healthcheck.State) bool {
		b, ok := s.Backend(route, srv.Addr)
		return ok && b.Reason == "waiting for the first health response"
	})
	b, _ := p.State.Backend(route, srv.Addr)
	if b.Routable || b.Status != healthpb.HealthCheckResponse_UNKNOWN {
		t.Fatalf("before any answer: routable=%v status=%s, want not routable, UNKNOWN", b.Routable, b.Status)
	}
	// A call goes through on the backend's connection, which only a READY
	// one allows: it is unroutable for want of an answer, not of a
	// connection.
	ectx, ecancel := context.WithTimeout(context.Background(), waitTimeout)
	defer ecancel()
	if _, err := healthpb.NewHealthClient(b.Handle).Check(ectx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("a call on the backend's connection: %v, want it READY", err)
	}

	// First answer NOT_SERVING: still not routable.
	close(gate)
	st.await(t, 0, "the first answer, NOT_SERVING", unroutableWith(route, srv.Addr, healthpb.HealthCheckResponse_NOT_SERVING))

	beforeServing := st.mark()
	hs.SetServingStatus(route, healthpb.HealthCheckResponse_SERVING)
	p, _ = st.await(t, beforeServing, "the backend to be routable after SERVING", isRoutable(route, srv.Addr))
	if b, _ := p.State.Backend(route, srv.Addr); b.Status != healthpb.HealthCheckResponse_SERVING || b.Reason != "" {
		t.Fatalf("routable backend: status %s reason %q, want SERVING and no reason", b.Status, b.Reason)
	}
	for _, p := range st.since(0)[:beforeServing] {
		if b, ok := p.State.Backend(route, srv.Addr); ok && b.Routable {
			t.Fatalf("state %d: backend routable before its first SERVING answer (status %s)", p.Version, b.Status)
		}
	}
}

func TestB21_NotServingRemovesBackendInFlightFinishes(t *testing.T) {
	for _, tc := range []healthpb.HealthCheckResponse_ServingStatus{
		healthpb.HealthCheckResponse_NOT_SERVING,
		healthpb.HealthCheckResponse_UNKNOWN,
		healthpb.HealthCheckResponse_SERVICE_UNKNOWN,
	} {
		t.Run(tc.String(), func(t *testing.T) {
			be := testutil.StartBackend(t)
			st := startChecker(t, healthcheck.Config{}, discovery.Static{route: {be.Addr}}, nil)
			p, _ := st.await(t, 0, "the backend to be routable", isRoutable(route, be.Addr))
			b, _ := p.State.Backend(route, be.Addr)

			// A call in flight on the backend's connection, as the proxy
			// would have it.
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			call := echo(t, ctx, b.Handle)

			from := st.mark()
			t0 := time.Now()
			be.Health.SetServingStatus(route, tc)
			p, _ = st.await(t, from, "the backend to leave the rotation", notRoutable(route, be.Addr))
			t.Logf("B21 %s: SetServingStatus -> backend not routable in the published State: %v (target < 50ms)", tc, p.At.Sub(t0))
			gone, _ := p.State.Backend(route, be.Addr)
			if gone.Status != tc || !strings.Contains(gone.Reason, tc.String()) {
				t.Fatalf("removed backend: status %s reason %q, want %s named in the reason", gone.Status, gone.Reason, tc)
			}
			if gone.Handle != b.Handle {
				t.Fatal("the backend's connection was replaced: calls in flight on it would fail")
			}

			// The call in flight goes on and ends normally.
			roundTrip(t, call, "after")
			finish(t, call)
			if c := be.NextCall(t); c.Err != nil || len(c.Messages) != 2 {
				t.Fatalf("backend saw the call end with %v after %d messages, want no error after 2", c.Err, len(c.Messages))
			}
		})
	}
}

func TestB22_ServingAgainRestoresLatestWins(t *testing.T) {
	t.Run("back in rotation", func(t *testing.T) {
		be := testutil.StartBackend(t)
		st := startChecker(t, healthcheck.Config{}, discovery.Static{route: {be.Addr}}, nil)
		st.await(t, 0, "the backend to be routable", isRoutable(route, be.Addr))
		from := st.mark()
		be.Health.SetServingStatus(route, healthpb.HealthCheckResponse_NOT_SERVING)
		_, i := st.await(t, from, "NOT_SERVING to remove the backend", unroutableWith(route, be.Addr, healthpb.HealthCheckResponse_NOT_SERVING))
		be.Health.SetServingStatus(route, healthpb.HealthCheckResponse_SERVING)
		p, _ := st.await(t, i+1, "SERVING to put the backend back", isRoutable(route, be.Addr))
		if b, _ := p.State.Backend(route, be.Addr); b.Status != healthpb.HealthCheckResponse_SERVING || b.Reason != "" {
			t.Fatalf("restored backend: status %s reason %q, want SERVING, no reason", b.Status, b.Reason)
		}
	})

	// Every message of a rapid sequence reaches the checker, in order (the
	// stock health server would merge them); the last one wins.
	t.Run("rapid sequence ends unroutable", func(t *testing.T) {
		send := make(chan healthpb.HealthCheckResponse_ServingStatus)
		hs := &scriptedHealth{watch: func(_ int, stream healthpb.Health_WatchServer) error {
			for {
				select {
				case s := <-send:
					if err := stream.Send(&healthpb.HealthCheckResponse{Status: s}); err != nil {
						return err
					}
				case <-stream.Context().Done():
					return status.FromContextError(stream.Context().Err()).Err()
				}
			}
		}}
		srv := serve(t, listen(t, "127.0.0.1:0"), hs)
		st := startChecker(t, healthcheck.Config{}, discovery.Static{route: {srv.Addr}}, nil)
		sendAll := func(ss ...healthpb.HealthCheckResponse_ServingStatus) {
			for _, s := range ss {
				select {
				case send <- s:
				case <-time.After(waitTimeout):
					t.Fatalf("the Watch did not take %s", s)
				}
			}
		}
		sendAll(healthpb.HealthCheckResponse_SERVING)
		st.await(t, 0, "the backend to be routable", isRoutable(route, srv.Addr))

		sendAll(healthpb.HealthCheckResponse_NOT_SERVING, healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING)
		// The checker reads the stream in order and the latest value
		// wins: the state comes to rest with the backend out, whatever it
		// showed in between.
		st.settles(t, 300*time.Millisecond, "the backend out after the last NOT_SERVING",
			unroutableWith(route, srv.Addr, healthpb.HealthCheckResponse_NOT_SERVING))
	})
}

func TestB23_NoHealthServiceIsServingLoggedOnceNotRetried(t *testing.T) {
	const base = 10 * time.Millisecond
	srv := serve(t, listen(t, "127.0.0.1:0"), nil)
	logs, logger := testutil.NewLogRecorder(t)
	st := startChecker(t, healthcheck.Config{Settings: healthcheck.Settings{BackoffBase: base, BackoffMax: 4 * base}}, discovery.Static{route: {srv.Addr}}, logger)

	srv.watches.next(t)
	p, _ := st.await(t, 0, "the backend without a health service to be routable", isRoutable(route, srv.Addr))
	b, _ := p.State.Backend(route, srv.Addr)
	if b.Status != healthpb.HealthCheckResponse_SERVING || !strings.Contains(b.Reason, "does not implement") {
		t.Fatalf("backend without health: status %s reason %q, want SERVING with a reason saying why", b.Status, b.Reason)
	}
	// A retry loop would have asked again many times within 30 backoffs.
	srv.watches.none(t, 30*base)
	if got := logs.Messages(slog.LevelError); len(got) != 1 || !strings.Contains(got[0], "does not implement") {
		t.Fatalf("error records: got %q, want exactly one saying the health service is not implemented", got)
	}

	// After a reconnect the backend is asked once more, and the error is
	// not repeated.
	addr := srv.Addr
	from := st.mark()
	srv.srv.Stop()
	_, i := st.await(t, from, "the stopped backend to leave the rotation", notRoutable(route, addr))
	srv2 := serve(t, listen(t, addr), nil)
	srv2.watches.next(t)
	st.await(t, i+1, "the restarted backend to be routable again", isRoutable(route, addr))
	srv2.watches.none(t, 30*base)
	if got := logs.Messages(slog.LevelError); len(got) != 1 {
		t.Fatalf("error records after a reconnect: got %q, want still exactly one", got)
	}
}

func TestB24_FailedWatchUnroutableRetriedWithBackoff(t *testing.T) {
	t.Run("jitter", func(t *testing.T) {
		const base, maxD = 20 * time.Millisecond, time.Second
		for attempt := range 7 {
			d := float64(base)
			for range attempt {
				d *= 1.6
			}
			seen := map[time.Duration]bool{}
			lo, hi := time.Duration(1<<62), time.Duration(0)
			for range 200 {
				got := healthcheck.Backoff(base, maxD, attempt)
				if got < time.Duration(0.8*d) || got > time.Duration(1.2*d) {
					t.Fatalf("attempt %d: delay %v outside %v ±20%%", attempt, got, time.Duration(d))
				}
				seen[got] = true
				lo, hi = min(lo, got), max(hi, got)
			}
			// 200 uniform draws all landing in one quarter of the range has
			// probability 0.75^200.
			if len(seen) < 100 || lo > time.Duration(0.9*d) || hi < time.Duration(1.1*d) {
				t.Fatalf("attempt %d: %d distinct delays in [%v, %v], want spread over %v ±20%%", attempt, len(seen), lo, hi, time.Duration(d))
			}
		}
		if got := healthcheck.Backoff(base, 50*time.Millisecond, 20); got > 60*time.Millisecond {
			t.Fatalf("capped delay %v, want at most 50ms +20%%", got)
		}
	})

	t.Run("retries", func(t *testing.T) {
		const (
			base  = 20 * time.Millisecond
			fails = 6
			// slack is how late a retry may arrive on a loaded machine.
			slack = 250 * time.Millisecond
		)
		type attempt struct {
			n  int
			at time.Time
		}
		attempts := make(chan attempt, 64)
		release := make(chan struct{})
		failedAt := make(chan time.Time, 1)
		hs := &scriptedHealth{watch: func(n int, stream healthpb.Health_WatchServer) error {
			attempts <- attempt{n, time.Now()}
			switch {
			case n <= fails:
				return status.Error(codes.Internal, "scripted failure")
			case n == fails+1:
				// One message, then a failure when the test says.
				if err := stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
					return err
				}
				select {
				case <-release:
				case <-stream.Context().Done():
					return stream.Context().Err()
				}
				failedAt <- time.Now()
				return status.Error(codes.Internal, "scripted failure after a message")
			default:
				if err := stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
					return err
				}
				<-stream.Context().Done()
				return stream.Context().Err()
			}
		}}
		srv := serve(t, listen(t, "127.0.0.1:0"), hs)
		st := startChecker(t, healthcheck.Config{Settings: healthcheck.Settings{BackoffBase: base, BackoffMax: 10 * time.Second}}, discovery.Static{route: {srv.Addr}}, nil)

		var at []time.Time
		for range fails + 1 {
			select {
			case a := <-attempts:
				at = append(at, a.at)
			case <-time.After(waitTimeout):
				t.Fatalf("only %d Watch attempts within %s, want %d", len(at), waitTimeout, fails+1)
			}
		}
		_, firstRoutable := st.await(t, 0, "the backend to be routable after the Watch works", isRoutable(route, srv.Addr))

		// While the Watch failed, the backend was never routable, and said why.
		sawReason := false
		for _, p := range st.since(0)[:firstRoutable] {
			if b, ok := p.State.Backend(route, srv.Addr); ok {
				if b.Routable {
					t.Fatalf("state %d: backend routable while its Watch failed", p.Version)
				}
				sawReason = sawReason || strings.Contains(b.Reason, "health watch failed")
			}
		}
		if !sawReason {
			t.Fatal("no state said the health watch failed")
		}

		// The gaps grow as base * 1.6^k, ±20%.
		want := float64(base)
		var gaps []time.Duration
		for k := range fails {
			gap := at[k+1].Sub(at[k])
			gaps = append(gaps, gap)
			lo, hi := time.Duration(0.8*want), time.Duration(1.2*want)+slack
			if gap < lo || gap > hi {
				t.Errorf("gap after failure %d: %v, want within [%v, %v]", k+1, gap, lo, hi)
			}
			want *= 1.6
		}
		t.Logf("B24 retry gaps: %v", gaps)

		// A message resets the backoff: after it, the next failure is
		// retried after about base, not after base * 1.6^fails.
		from := st.mark()
		close(release)
		st.await(t, from, "the failed Watch to remove the backend", func(s *healthcheck.State) bool {
			b, ok := s.Backend(route, srv.Addr)
			return ok && !b.Routable && strings.Contains(b.Reason, "health watch failed")
		})
		var failed time.Time
		select {
		case failed = <-failedAt:
		case <-time.After(waitTimeout):
			t.Fatal("the Watch did not fail when released")
		}
		var retry attempt
		select {
		case retry = <-attempts:
		case <-time.After(waitTimeout):
			t.Fatal("no retry after the failure that followed a message")
		}
		gap := retry.at.Sub(failed)
		t.Logf("B24 retry gap after a message: %v (without the reset: %v ±20%%)", gap, time.Duration(want))
		if lo, hi := time.Duration(0.8*float64(base)), time.Duration(1.2*float64(base))+slack; gap < lo || gap > hi {
			t.Fatalf("retry %v after the failure that followed a message, want within [%v, %v]: the backoff did not reset", gap, lo, hi)
		}
		st.await(t, from, "the backend to be routable again", isRoutable(route, srv.Addr))
	})
}

func TestB25_GracefulStopCompletesThenReconnects(t *testing.T) {
	be := testutil.StartBackend(t)
	addr := be.Addr
	st := startChecker(t, healthcheck.Config{}, discovery.Static{route: {addr}}, nil)
	p, _ := st.await(t, 0, "the backend to be routable", isRoutable(route, addr))
	conn, _ := p.State.Backend(route, addr)

	// The server waits for its open streams, the Watch among them: it can
	// finish only if the gateway cancels the Watch.
	from := st.mark()
	t0 := time.Now()
	stopped := make(chan struct{})
	go func() { be.Server.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
		t.Logf("B25 GracefulStop returned after %v", time.Since(t0))
	case <-time.After(5 * time.Second):
		be.Server.Stop()
		<-stopped
		t.Fatal("GracefulStop did not return within 5s: the Watch was not cancelled")
	}
	_, i := st.await(t, from, "the stopped backend to leave the rotation", notRoutable(route, addr))

	// The backend comes back on the same address.
	be2 := testutil.StartBackendOn(listen(t, addr))
	t.Cleanup(be2.Stop)
	p, _ = st.await(t, i+1, "the restarted backend to be routable again", isRoutable(route, addr))
	b, _ := p.State.Backend(route, addr)
	if b.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("restarted backend: status %s, want SERVING", b.Status)
	}
	if b.Handle != conn.Handle {
		t.Fatal("the backend got a new connection; want the same one, reconnected")
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	finish(t, echo(t, ctx, b.Handle))
}

func TestB26_OneWatchPerBackendAndHealthService(t *testing.T) {
	const shared = "shared.Health"
	logs := []*watchLog{newWatchLog(shared, route, ""), newWatchLog(shared, route, "")}
	b1 := testutil.StartBackend(t, logs[0].option())
	b2 := testutil.StartBackend(t, logs[1].option())
	for _, b := range []*testutil.Backend{b1, b2} {
		b.Health.SetServingStatus(shared, healthpb.HealthCheckResponse_SERVING)
	}
	sharedName := shared
	cfg := healthcheck.Config{Routes: map[string]healthcheck.RouteConfig{"a.Svc": {HealthService: &sharedName}, "b.Svc": {HealthService: &sharedName}}}
	src := discovery.Static{
		"a.Svc":                {b1.Addr, b2.Addr},
		"b.Svc":                {b1.Addr, b2.Addr},
		route:                  {b1.Addr, b2.Addr},
		discovery.DefaultRoute: {b1.Addr},
	}
	st := startChecker(t, cfg, src, nil)
	all := func(s *healthcheck.State) bool {
		for name, addrs := range src {
			if r, ok := s.Routes[name]; !ok || r.Routable != len(addrs) {
				return false
			}
		}
		return true
	}
	p, _ := st.await(t, 0, "every route to have all its backends routable", all)

	for r, want := range map[string]string{"a.Svc": shared, "b.Svc": shared, route: route, discovery.DefaultRoute: ""} {
		if got := p.Routes[r].HealthService; got != want {
			t.Errorf("route %q watches health service %q, want %q", r, got, want)
		}
		for _, b := range p.Routes[r].Backends {
			if b.HealthService != want {
				t.Errorf("route %q asks %s for health service %q, want %q", r, b.Addr, b.HealthService, want)
			}
		}
	}

	// Each health service is watched on its own, so each follows its own
	// status.
	from := st.mark()
	b1.Health.SetServingStatus(shared, healthpb.HealthCheckResponse_NOT_SERVING)
	p, i := st.await(t, from, "b1 to leave the routes that watch "+shared, func(s *healthcheck.State) bool {
		return s.Routes["a.Svc"].Routable == 1 && s.Routes["b.Svc"].Routable == 1
	})
	if p.Routes[route].Routable != 2 || p.Routes[discovery.DefaultRoute].Routable != 1 {
		t.Fatalf("%s NOT_SERVING on b1 changed routes that do not watch it: %s", shared, describe(p.Routes))
	}
	b1.Health.SetServingStatus(route, healthpb.HealthCheckResponse_NOT_SERVING)
	p, _ = st.await(t, i+1, "b1 to leave "+route, func(s *healthcheck.State) bool { return s.Routes[route].Routable == 1 })
	if p.Routes[discovery.DefaultRoute].Routable != 1 {
		t.Fatalf("the default route watches \"\" and must keep b1: %s", describe(p.Routes))
	}

	// One Watch per (backend, health service), for the whole test.
	wants := []map[string]int{{shared: 1, route: 1, "": 1}, {shared: 1, route: 1}}
	for i, w := range logs {
		got := w.counts()
		if len(got) != len(wants[i]) {
			t.Errorf("backend %d: Watches %v, want %v", i+1, got, wants[i])
			continue
		}
		for svc, n := range wants[i] {
			if got[svc] != n {
				t.Errorf("backend %d: Watches %v, want %v", i+1, got, wants[i])
				break
			}
		}
	}
}
