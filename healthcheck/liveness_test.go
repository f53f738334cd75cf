package healthcheck

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/internal/testutil"
)

// livenessWait bounds every wait for an event that must happen.
const livenessWait = 10 * time.Second

func TestLivenessConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     LivenessConfig
		wantErr string
		want    LivenessConfig
	}{
		{name: "zero", want: LivenessConfig{Interval: time.Second, IdleInterval: 10 * time.Second, Timeout: 2 * time.Second}},
		{name: "set", cfg: LivenessConfig{Interval: 3 * time.Second, IdleInterval: 30 * time.Second, Timeout: 5 * time.Second}, want: LivenessConfig{Interval: 3 * time.Second, IdleInterval: 30 * time.Second, Timeout: 5 * time.Second}},
		{name: "idle never below busy", cfg: LivenessConfig{Interval: 20 * time.Second}, want: LivenessConfig{Interval: 20 * time.Second, IdleInterval: 20 * time.Second, Timeout: 2 * time.Second}},
		{name: "disabled keeps its durations", cfg: LivenessConfig{Disabled: true}, want: LivenessConfig{Interval: time.Second, IdleInterval: 10 * time.Second, Timeout: 2 * time.Second, Disabled: true}},
		{name: "negative idle interval", cfg: LivenessConfig{IdleInterval: -time.Second}, wantErr: "idle_interval:"},
		{name: "negative interval", cfg: LivenessConfig{Interval: -time.Second}, wantErr: "interval:"},
		{name: "negative timeout", cfg: LivenessConfig{Timeout: -time.Second}, wantErr: "timeout:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Validate() = %v, want an error about %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Validate() = %v, want nil", err)
			}
			if got := tc.cfg.WithDefaults(); got != tc.want {
				t.Errorf("WithDefaults() = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestLivenessConnTracker: Sever closes the connection last dialed, once,
// and says so; a connection already closed by its user is not severed again.
func TestLivenessConnTracker(t *testing.T) {
	addr := startSilentListener(t)
	var tr connTracker
	if tr.Sever() {
		t.Fatal("Sever() before any dial = true, want false")
	}
	dial := tr.Dialer()
	ctx, cancel := context.WithTimeout(t.Context(), livenessWait)
	defer cancel()

	c1, err := dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	if !tr.Sever() {
		t.Fatal("Sever() after a dial = false, want true")
	}
	if _, err := c1.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write on the severed connection: %v, want %v", err, net.ErrClosed)
	}
	if tr.Sever() {
		t.Error("second Sever() = true, want false")
	}

	c2, err := dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	c2.Close() // as grpc does with a transport it is done with
	if tr.Sever() {
		t.Error("Sever() of a connection already closed = true, want false")
	}

	// grpc may dial again while the probe severs: the race detector is the
	// judge here.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 20 {
				if c, err := dial(ctx, addr); err == nil {
					defer c.Close()
				}
			}
		})
		wg.Go(func() {
			for range 20 {
				tr.Sever()
			}
		})
	}
	wg.Wait()
}

// TestLivenessHealthyBackend: a backend that answers is reported alive once,
// and many probes on a quiet connection to a default grpc-go server (default
// keepalive enforcement: PINGs no more often than every 5 minutes) keep that
// one connection: the probe is an ordinary call, not a PING, so it earns no
// GOAWAY too_many_pings. It holds with grpc's BDP pings on (default windows)
// and off (the gateway's static windows).
func TestLivenessHealthyBackend(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []grpc.DialOption
	}{
		{name: "grpc default windows"},
		{name: "gateway static windows", opts: []grpc.DialOption{grpc.WithInitialWindowSize(1 << 20), grpc.WithInitialConnWindowSize(4 << 20)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conns := &connStats{}
			b := testutil.StartBackend(t, grpc.StatsHandler(conns))
			var tr connTracker
			cc, dials := dialTracked(t, b.Addr, &tr, tc.opts...)
			pc := newProbeCounter(cc)
			const probes = 30
			start := time.Now()
			reports, stop := runProbeLoop(t, pc, LivenessConfig{Interval: 20 * time.Millisecond})
			errs := pc.wait(t, probes)
			took := time.Since(start)
			stop()

			for i, err := range errs {
				if err != nil {
					t.Errorf("probe %d: %v, want an answer", i, err)
				}
			}
			if got, want := drainReports(reports), []livenessReport{{alive: true}}; !sameReports(got, want) {
				t.Errorf("reports = %v, want %v", got, want)
			}
			if got := dials.Load(); got != 1 {
				t.Errorf("dials = %d, want 1", got)
			}
			if b, e := conns.begin.Load(), conns.end.Load(); b != 1 || e != 0 {
				t.Errorf("server saw %d connections begin and %d end, want 1 and 0", b, e)
			}
			if st := cc.GetState(); st != connectivity.Ready {
				t.Errorf("connection state = %s, want READY", st)
			}
			t.Logf("%d probes in %s on one connection; no GOAWAY", probes, took.Round(time.Millisecond))
		})
	}
}

// TestLivenessPingsEarnGOAWAY is the control of TestLivenessHealthyBackend:
// the same default server answers a few HTTP/2 PINGs on a quiet connection
// with GOAWAY too_many_pings and ends the connection, which that test would
// have seen.
func TestLivenessPingsEarnGOAWAY(t *testing.T) {
	conns := &connStats{}
	b := testutil.StartBackend(t, grpc.StatsHandler(conns))
	c, err := net.Dial("tcp", b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(livenessWait)) //nolint:errcheck // a failed read says it
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	for pings := 1; ; pings++ {
		if err := fr.WritePing(false, [8]byte{byte(pings)}); err != nil {
			t.Fatalf("ping %d: %v", pings, err)
		}
	acked:
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("after ping %d: %v, want a GOAWAY", pings, err)
			}
			switch f := f.(type) {
			case *http2.PingFrame:
				if f.IsAck() {
					break acked
				}
			case *http2.GoAwayFrame:
				if f.ErrCode != http2.ErrCodeEnhanceYourCalm || string(f.DebugData()) != "too_many_pings" {
					t.Fatalf("GOAWAY %s %q, want ENHANCE_YOUR_CALM too_many_pings", f.ErrCode, f.DebugData())
				}
				t.Logf("GOAWAY too_many_pings after %d pings", pings)
				testutil.WaitFor(t, livenessWait, "the server to end the connection", func() bool { return conns.end.Load() == 1 })
				return
			}
		}
	}
}

// TestLivenessHungBackend: a backend that stops answering (the proxy in
// front of it stops moving bytes, as a SIGSTOPped process would) is reported
// not responding within Interval+Timeout, while a call in flight on the same
// connection still waits; Sever then fails that call UNAVAILABLE at once.
// Probes on the connection grpc dials next, which never completes its
// handshake, report nothing more.
func TestLivenessHungBackend(t *testing.T) {
	b := testutil.StartBackend(t)
	px := startFreezeProxy(t, b.Addr)
	var tr connTracker
	cc, _ := dialTracked(t, px.addr, &tr)
	pc := newProbeCounter(cc)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	stream, err := testutil.RawStream(ctx, cc, "/"+testutil.TestService+"/Echo")
	if err != nil {
		t.Fatal(err)
	}
	if err := testutil.Echo(stream, "before"); err != nil {
		t.Fatal(err)
	}

	cfg := LivenessConfig{Interval: 200 * time.Millisecond, Timeout: 500 * time.Millisecond}
	reports, stop := runProbeLoop(t, pc, cfg)
	if r := nextReport(t, reports); !r.alive {
		t.Fatalf("first report = %v, want alive", r)
	}

	frozeAt := time.Now()
	px.freeze()
	m := []byte("during")
	if err := stream.SendMsg(&m); err != nil {
		t.Fatal(err)
	}
	recvErr := make(chan error, 1)
	go func() {
		var got []byte
		recvErr <- stream.RecvMsg(&got)
	}()

	r := nextReport(t, reports)
	detect := r.at.Sub(frozeAt)
	if r.alive || r.reason != notRespondingReason(cfg.Timeout) {
		t.Fatalf("report after the hang = %v, want not alive with reason %q", r, notRespondingReason(cfg.Timeout))
	}
	t.Logf("hang detected after %s (interval %s + timeout %s)", detect.Round(time.Millisecond), cfg.Interval, cfg.Timeout)
	if limit := cfg.Interval + cfg.Timeout + time.Second; detect > limit {
		t.Errorf("detection took %s, want at most %s", detect, limit)
	}
	select {
	case err := <-recvErr:
		t.Fatalf("the call in flight ended before Sever: %v", err)
	default:
	}

	severAt := time.Now()
	if !tr.Sever() {
		t.Fatal("Sever() = false, want true")
	}
	select {
	case err := <-recvErr:
		failed := time.Since(severAt)
		if status.Code(err) != codes.Unavailable {
			t.Errorf("call in flight after Sever: %v, want UNAVAILABLE", err)
		}
		t.Logf("call in flight failed %s after Sever: %v", failed.Round(time.Microsecond), err)
		if failed > time.Second {
			t.Errorf("call in flight failed %s after Sever, want within 1s", failed)
		}
	case <-time.After(livenessWait):
		t.Fatalf("call in flight still waiting %s after Sever", livenessWait)
	}

	// Probes sent from here on never get a connection: nothing to report.
	pc.discard()
	for i, err := range pc.wait(t, 3) {
		if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Unavailable {
			t.Errorf("probe %d after Sever: %v, want DEADLINE_EXCEEDED or UNAVAILABLE", i, err)
		}
	}
	stop()
	if got := drainReports(reports); len(got) != 0 {
		t.Errorf("reports after Sever = %v, want none", got)
	}
}

// TestLivenessAnswersOtherThanServing: any answer from the server proves the
// backend alive, even one without the health service.
func TestLivenessAnswersOtherThanServing(t *testing.T) {
	for _, tc := range []struct {
		name     string
		register func(*grpc.Server)
		want     codes.Code
	}{
		{name: "no health service", register: func(*grpc.Server) {}, want: codes.Unimplemented},
		{name: "NOT_SERVING", register: func(s *grpc.Server) {
			healthpb.RegisterHealthServer(s, fixedHealth{resp: healthpb.HealthCheckResponse_NOT_SERVING})
		}, want: codes.OK},
		{name: "NOT_FOUND", register: func(s *grpc.Server) {
			healthpb.RegisterHealthServer(s, fixedHealth{err: status.Error(codes.NotFound, "unknown service")})
		}, want: codes.NotFound},
		{name: "DEADLINE_EXCEEDED from the server", register: func(s *grpc.Server) {
			healthpb.RegisterHealthServer(s, fixedHealth{err: status.Error(codes.DeadlineExceeded, "busy")})
		}, want: codes.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startServer(t, tc.register)
			var tr connTracker
			cc, _ := dialTracked(t, addr, &tr)
			pc := newProbeCounter(cc)
			reports, stop := runProbeLoop(t, pc, LivenessConfig{Interval: 20 * time.Millisecond})
			errs := pc.wait(t, 5)
			stop()
			for i, err := range errs {
				if got := status.Code(err); got != tc.want {
					t.Errorf("probe %d: %v, want %s", i, err, tc.want)
				}
			}
			if got, want := drainReports(reports), []livenessReport{{alive: true}}; !sameReports(got, want) {
				t.Errorf("reports = %v, want %v", got, want)
			}
		})
	}
}

// TestLivenessNotConnected: probes that never reach a backend, refused or
// stuck in the HTTP/2 handshake, report nothing: the connection state says
// it already, and repeating it every interval would be noise.
func TestLivenessNotConnected(t *testing.T) {
	for _, tc := range []struct {
		name string
		addr func(t *testing.T) string
		want codes.Code
	}{
		{name: "refused", addr: closedPort, want: codes.Unavailable},
		{name: "no HTTP/2 answer", addr: startSilentListener, want: codes.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tr connTracker
			cc, _ := dialTracked(t, tc.addr(t), &tr)
			pc := newProbeCounter(cc)
			reports, stop := runProbeLoop(t, pc, LivenessConfig{Interval: 20 * time.Millisecond, Timeout: 100 * time.Millisecond})
			errs := pc.wait(t, 5)
			stop()
			for i, err := range errs {
				if got := status.Code(err); got != tc.want {
					t.Errorf("probe %d: %v, want %s", i, err, tc.want)
				}
			}
			if got := drainReports(reports); len(got) != 0 {
				t.Errorf("reports = %v, want none", got)
			}
		})
	}
}

// ---- helpers ----

type livenessReport struct {
	alive  bool
	reason string
	at     time.Time
}

func sameReports(got, want []livenessReport) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i].alive != want[i].alive || got[i].reason != want[i].reason {
			return false
		}
	}
	return true
}

// runProbeLoop runs probeLoop on a goroutine of its own until stop, which the
// test's end calls too.
func runProbeLoop(t *testing.T, cc grpc.ClientConnInterface, cfg LivenessConfig) (<-chan livenessReport, func()) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reports := make(chan livenessReport, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		probeLoop(ctx, cc, cfg.WithDefaults(), nil, func(alive bool, reason string) {
			reports <- livenessReport{alive: alive, reason: reason, at: time.Now()}
		})
	}()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return reports, stop
}

func nextReport(t *testing.T, reports <-chan livenessReport) livenessReport {
	t.Helper()
	select {
	case r := <-reports:
		return r
	case <-time.After(livenessWait):
		t.Fatalf("no liveness report within %s", livenessWait)
		return livenessReport{}
	}
}

// drainReports returns the reports not received yet; the loop must have
// stopped.
func drainReports(reports <-chan livenessReport) []livenessReport {
	var out []livenessReport
	for {
		select {
		case r := <-reports:
			out = append(out, r)
		default:
			return out
		}
	}
}

// dialTracked connects to addr through tr's dialer, counting the dials.
func dialTracked(t *testing.T, addr string, tr *connTracker, opts ...grpc.DialOption) (*grpc.ClientConn, *atomic.Int32) {
	t.Helper()
	dials := new(atomic.Int32)
	dial := tr.Dialer()
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			dials.Add(1)
			return dial(ctx, addr)
		}),
	}, opts...)
	cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc, dials
}

// probeCounter passes calls on to a connection and delivers each one's
// outcome, so that tests wait for probes rather than for time.
type probeCounter struct {
	grpc.ClientConnInterface
	outcomes chan error
}

func newProbeCounter(cc grpc.ClientConnInterface) *probeCounter {
	return &probeCounter{ClientConnInterface: cc, outcomes: make(chan error, 4096)}
}

func (c *probeCounter) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	err := c.ClientConnInterface.Invoke(ctx, method, args, reply, opts...)
	select {
	case c.outcomes <- err:
	default:
	}
	return err
}

// wait returns the outcomes of the next n probes.
func (c *probeCounter) wait(t *testing.T, n int) []error {
	t.Helper()
	timeout := time.After(livenessWait)
	var errs []error
	for len(errs) < n {
		select {
		case err := <-c.outcomes:
			errs = append(errs, err)
		case <-timeout:
			t.Fatalf("%d of %d probes within %s", len(errs), n, livenessWait)
		}
	}
	return errs
}

// discard forgets the outcomes delivered so far.
func (c *probeCounter) discard() {
	for {
		select {
		case <-c.outcomes:
		default:
			return
		}
	}
}

// connStats counts the connections a server sees begin and end.
type connStats struct{ begin, end atomic.Int32 }

func (s *connStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (s *connStats) HandleRPC(context.Context, stats.RPCStats)                       {}
func (s *connStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (s *connStats) HandleConn(_ context.Context, st stats.ConnStats) {
	switch st.(type) {
	case *stats.ConnBegin:
		s.begin.Add(1)
	case *stats.ConnEnd:
		s.end.Add(1)
	}
}

// fixedHealth answers every Check with resp, or err when set.
type fixedHealth struct {
	healthpb.UnimplementedHealthServer
	resp healthpb.HealthCheckResponse_ServingStatus
	err  error
}

func (h fixedHealth) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if h.err != nil {
		return nil, h.err
	}
	return &healthpb.HealthCheckResponse{Status: h.resp}, nil
}

// startServer serves a default grpc.Server, with what register adds, on
// loopback until the test ends.
func startServer(t *testing.T, register func(*grpc.Server)) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	register(s)
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(lis) }() //nolint:errcheck // ends with Stop
	t.Cleanup(func() { s.Stop(); <-done })
	return lis.Addr().String()
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// startSilentListener accepts connections and never writes to them, until
// the test ends: a peer that is there but never answers.
func startSilentListener(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return lis.Addr().String()
}

// freezeProxy forwards TCP connections to a target until freeze; from then
// on it moves no more bytes either way but keeps every connection open, as
// the kernel does for a process that is stopped.
type freezeProxy struct {
	addr   string
	target string
	lis    net.Listener
	frozen chan struct{} // closed by freeze
	once   sync.Once
	done   chan struct{} // closed by close
	wg     sync.WaitGroup

	mu     sync.Mutex // guards the fields below
	closed bool
	conns  []net.Conn
}

func startFreezeProxy(t *testing.T, target string) *freezeProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{addr: lis.Addr().String(), target: target, lis: lis, frozen: make(chan struct{}), done: make(chan struct{})}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *freezeProxy) freeze() { p.once.Do(func() { close(p.frozen) }) }

func (p *freezeProxy) accept() {
	for {
		down, err := p.lis.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", p.target, livenessWait)
		if err != nil {
			down.Close()
			continue
		}
		if !p.track(down, up) {
			return
		}
		p.wg.Go(func() { p.pipe(up, down) })
		p.wg.Go(func() { p.pipe(down, up) })
	}
}

// track keeps conns for close, or closes them if close came first.
func (p *freezeProxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	p.conns = append(p.conns, conns...)
	return true
}

func (p *freezeProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case <-p.frozen:
				// Holding the bytes read, and reading no more, fills the
				// sender's buffers as a stopped process would.
				<-p.done
				return
			default:
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			// One side ended: end the other, as the kernel of a process
			// that exits would.
			dst.Close()
			src.Close()
			return
		}
	}
}

func (p *freezeProxy) close() {
	p.lis.Close()
	p.mu.Lock()
	p.closed = true
	close(p.done)
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestLivenessIdleBackendProbedLessOften: a backend without calls since
// the last look is probed every IdleInterval, not every Interval; the
// first call makes the next tick probe.
func TestLivenessIdleBackendProbedLessOften(t *testing.T) {
	b := testutil.StartBackend(t)
	cc := testutil.Dial(t, b.Addr)
	pc := newProbeCounter(cc)
	looks := make(chan struct{}, 1024)
	var busy atomic.Bool
	cfg := LivenessConfig{Interval: 5 * time.Millisecond, IdleInterval: time.Hour}.WithDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		probeLoop(ctx, pc, cfg, func() bool {
			looks <- struct{}{}
			return busy.Load()
		}, func(bool, string) {})
	}()
	defer func() { cancel(); <-done }()
	pc.wait(t, 1) // the first probe, at once
	waitLooks := func(n int) {
		t.Helper()
		for range n {
			select {
			case <-looks:
			case <-time.After(livenessWait):
				t.Fatalf("probeLoop stopped looking")
			}
		}
	}
	waitLooks(20)
	if n := len(pc.outcomes); n != 0 {
		t.Fatalf("%d probes in 20 idle ticks, want none before IdleInterval", n)
	}
	busy.Store(true)
	pc.wait(t, 3)
}
