package healthcheck

import (
	"context"
	"fmt"
	"github.com/healthgate/healthgate/internal/backoff"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/internal/h2/h2grpc"
)

// backendConn is what a Handle needs of its backend's connection: calls,
// its state, and a way to cut it. A *grpc.ClientConn with its connTracker
// is one (the grpc engine's); an *h2grpc.Channel is the other (the relay
// engine's, whose connection carries the relayed calls too).
type backendConn interface {
	grpc.ClientConnInterface
	GetState() connectivity.State
	WaitForStateChange(context.Context, connectivity.State) bool
	Connect()
	Close() error
	// Sever closes the connection in use and reports whether one was
	// open: the calls on it fail now, and it is dialled again.
	Sever() bool
	// LastErr is why the latest attempt to connect failed; nil if it did
	// not.
	LastErr() error
}

// grpcConn is the grpc engine's backendConn: grpc-go's connection, and the
// tracker of the TCP connections it dials.
type grpcConn struct {
	*grpc.ClientConn
	*connTracker
}

// Handle is one backend: its address's connection, shared by every route
// that lists the address and carrying both the proxied calls and the health
// Watches, and what the gateway knows of it. It is opaque: the rest of the
// gateway sends calls through it and reports how they ended, and reads its
// routability from the published State, never from the connection.
type Handle struct {
	addr string
	// cc is the backend's one connection: the proxied calls (the grpc
	// engine's; the relay engine's go through relay.Conn), the Watches and
	// the liveness probe.
	cc  backendConn
	c   *Checker
	log *slog.Logger
	// relay is cc with the relay engine; nil with the grpc engine.
	relay *h2grpc.Channel
	// transport is how cc dials: plaintext or TLS.
	transport transport
	// ctx is the backend's lifetime: cancelled by close, it ends the
	// monitor and every Watch.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the monitor and every Watch goroutine

	// inflight counts the calls picked for the backend and not yet done.
	inflight atomic.Int64
	// picked is set by each call picked for the backend and cleared by the
	// liveness probe: whether the backend had calls since the last probe.
	picked atomic.Bool
	// failures counts the backend's own failures in a row (passive
	// detection).
	failures atomic.Int32
	// ejectionsInRow counts the ejections since the last call the backend
	// answered OK, to lengthen each next one.
	ejectionsInRow atomic.Int32

	// Ejection, guarded by the checker's ejectMu: ejection decisions look
	// at every backend of a route at once.
	ejectedAt, ejectedUntil time.Time
	ejectReason             string

	mu sync.Mutex // guards the fields below
	// ready is whether the connection is READY; Watches run only then.
	ready bool
	// readySince is when the connection last became READY.
	readySince time.Time
	// connReason says why the connection is not ready.
	connReason string
	// alive is false while the backend does not answer on an open
	// connection; aliveReason says since when.
	alive       bool
	aliveReason string
	// stopProbe ends the liveness probe of the current connection.
	stopProbe context.CancelFunc
	watches   map[string]*watch
}

// watch is the health of one health-service name on one backend.
type watch struct {
	// run identifies the running Watch goroutine; a goroutine whose run is
	// no longer current has been cancelled and must not report.
	run    *int
	cancel context.CancelFunc
	h      health
	// unimplementedLogged and unknownLogged keep each misconfiguration to
	// one line for the life of the backend, across reconnects.
	unimplementedLogged, unknownLogged bool
}

// waitingReason is the reason of a connected backend whose Watch has not
// answered yet.
const waitingReason = "waiting for the first health response"

type health struct {
	routable bool
	status   healthpb.HealthCheckResponse_ServingStatus
	reason   string
	since    time.Time
}

func (c *Checker) newHandle(ctx context.Context, addr string, t transport) (*Handle, error) {
	ctx, cancel := context.WithCancel(ctx)
	b := &Handle{
		addr: addr, c: c, ctx: ctx, cancel: cancel, transport: t,
		log:        c.log.With("addr", addr),
		connReason: "connecting",
		alive:      true,
		watches:    map[string]*watch{},
	}
	var err error
	if c.cfg.RelayConns {
		b.relay, err = b.newRelayChannel()
		b.cc = b.relay
	} else {
		b.cc, err = c.newGRPCConn(addr, t)
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	b.wg.Add(1)
	go b.monitor()
	return b, nil
}

// newGRPCConn is the grpc engine's connection to addr.
func (c *Checker) newGRPCConn(addr string, t transport) (backendConn, error) {
	tracker := &connTracker{}
	opts := append(slices.Clip(c.cfg.DialOptions), grpc.WithContextDialer(tracker.Dialer()))
	creds, err := t.creds(c.cfg.Connect)
	if err != nil {
		return nil, err
	}
	if creds != nil {
		// After the configured options: it replaces their credentials.
		opts = append(opts, grpc.WithTransportCredentials(trackedCreds{creds, tracker}))
	}
	// passthrough: the address is already resolved by discovery, and a DNS
	// resolver per backend would only add goroutines and delay.
	cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, err
	}
	return grpcConn{cc, tracker}, nil
}

// Addr is the backend's address, host:port.
func (b *Handle) Addr() string { return b.addr }

// Transport says how the backend is dialled, for people: plaintext, tls
// or connect, with what each checks.
func (b *Handle) Transport() string { return b.transport.String() }

// InFlight is the number of calls picked for the backend and not yet done,
// routable or not: a backend out of rotation still finishes its calls.
func (b *Handle) InFlight() int64 { return b.inflight.Load() }

// Begin counts a call picked for the backend; Done must follow.
func (b *Handle) Begin() {
	b.inflight.Add(1)
	// Load first: the common case writes nothing shared.
	if !b.picked.Load() {
		b.picked.Store(true)
	}
}

// TryBegin is Begin for a backend that may have at most limit calls at
// once: false, and nothing counted, when it has that many already. The
// check and the count are one step, so that a burst of calls cannot all
// see room for one more and overshoot the limit together.
func (b *Handle) TryBegin(limit int64) bool {
	for {
		n := b.inflight.Load()
		if n >= limit {
			return false
		}
		if b.inflight.CompareAndSwap(n, n+1) {
			break
		}
	}
	if !b.picked.Load() {
		b.picked.Store(true)
	}
	return true
}

// busy reports whether the backend had calls since it was last asked.
func (b *Handle) busy() bool { return b.inflight.Load() > 0 || b.picked.Swap(false) }

// errNotReady fails a call picked onto a connection that left READY after
// the table was published: waiting for it to come back could take the whole
// connect timeout, and another backend can take the call now.
var errNotReady = status.Error(codes.Unavailable, "healthgate: backend connection is not ready")

// NewStream opens a stream to the backend on its shared connection. It
// never waits for a connection that is not READY: it fails at once, and
// the call can go to another backend.
func (b *Handle) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if b.cc.GetState() != connectivity.Ready {
		b.c.markDirty(b.addr)
		return nil, errNotReady
	}
	return b.cc.NewStream(ctx, desc, method, opts...)
}

// Invoke makes a unary call on the backend's connection, under the same
// rule as NewStream. With NewStream it makes a Handle a
// grpc.ClientConnInterface, for tests and probes.
func (b *Handle) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	if b.cc.GetState() != connectivity.Ready {
		return errNotReady
	}
	return b.cc.Invoke(ctx, method, args, reply, opts...)
}

// close stops every goroutine of the backend and closes its connection;
// calls still in flight on it fail.
func (b *Handle) close() {
	b.cancel()
	b.wg.Wait()
	b.cc.Close()
}

// monitor follows the connection's state. Watches start when it is READY and
// stop when it leaves READY: a backend that sends GOAWAY (GracefulStop) must
// see its Watch streams end, or its graceful stop would wait on them.
func (b *Handle) monitor() {
	defer b.wg.Done()
	b.cc.Connect()
	for {
		st := b.cc.GetState()
		b.setConn(st)
		if st == connectivity.Idle {
			// After GOAWAY the channel idles; the backend may be back in a
			// moment, and health checking needs a connection.
			b.cc.Connect()
		}
		if !b.cc.WaitForStateChange(b.ctx, st) {
			return
		}
	}
}

func (b *Handle) setConn(st connectivity.State) {
	ready := st == connectivity.Ready
	b.mu.Lock()
	wasReady := b.ready
	b.ready = ready
	switch {
	case ready && !wasReady:
		b.connReason = ""
		b.readySince = time.Now()
		// A new connection answers until it is shown not to.
		b.alive, b.aliveReason = true, ""
		b.startProbeLocked()
		for svc, w := range b.watches {
			// The reason still names the connection state; until the new
			// Watch answers, what the backend waits for is that answer.
			w.set(healthpb.HealthCheckResponse_UNKNOWN, false, waitingReason)
			b.startLocked(svc, w)
		}
	case !ready:
		// Every change while not ready is news for /backends: connecting,
		// refused (TRANSIENT_FAILURE), idle after a GOAWAY.
		b.connReason = "connection " + st.String()
		if err := b.cc.LastErr(); st == connectivity.TransientFailure && err != nil {
			b.connReason += ": " + err.Error()
		}
		if !b.alive {
			// Keep the cause: the connection was cut because the backend
			// stopped answering.
			b.connReason += " (" + b.aliveReason + ")"
		}
		if b.stopProbe != nil {
			b.stopProbe()
			b.stopProbe = nil
		}
		for _, w := range b.watches {
			b.stopLocked(w, healthpb.HealthCheckResponse_UNKNOWN, b.connReason)
		}
	}
	b.mu.Unlock()
	switch {
	case ready && !wasReady:
		b.log.Info("backend connected")
	case !ready && wasReady:
		b.log.Info("backend connection lost", "state", st.String())
	case !ready:
		b.log.Debug("backend connection state", "state", st.String())
	}
	b.c.markDirty(b.addr)
}

// setAlive records whether the backend answers on its open connection.
func (b *Handle) setAlive(alive bool, reason string) {
	b.mu.Lock()
	changed := b.alive != alive
	b.alive, b.aliveReason = alive, reason
	b.mu.Unlock()
	if changed {
		if alive {
			b.log.Info("backend answers again")
		} else {
			b.log.Warn("backend not responding", "reason", reason)
		}
		b.c.markDirty(b.addr)
	}
}

// startProbeLocked starts the liveness probe of a connection that just
// became READY; b.mu is held.
func (b *Handle) startProbeLocked() {
	lc := b.c.cfg.Liveness
	if lc.Disabled {
		return
	}
	ctx, cancel := context.WithCancel(b.ctx)
	b.stopProbe = cancel
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		probeLoop(ctx, b.cc, lc, b.busy, func(alive bool, reason string) {
			if ctx.Err() != nil {
				return
			}
			b.setAlive(alive, reason)
			if !alive && b.cc.Sever() {
				// As grpc's keepalive does: the calls in flight on a
				// backend that stopped answering fail now, UNAVAILABLE,
				// not at their deadlines, and grpc reconnects.
				b.log.Warn("backend connection cut: the backend stopped answering on it", "reason", reason)
			}
		})
	}()
}

// setServices makes the backend watch exactly svcs.
func (b *Handle) setServices(svcs map[string]bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for svc, w := range b.watches {
		if !svcs[svc] {
			b.stopLocked(w, healthpb.HealthCheckResponse_UNKNOWN, "")
			delete(b.watches, svc)
		}
	}
	for svc := range svcs {
		if _, ok := b.watches[svc]; ok {
			continue
		}
		reason := b.connReason
		if reason == "" {
			reason = waitingReason
		}
		w := &watch{h: health{status: healthpb.HealthCheckResponse_UNKNOWN, reason: reason, since: time.Now()}}
		b.watches[svc] = w
		if b.ready {
			b.startLocked(svc, w)
		}
	}
}

// facts reads what the rule of routability needs to know of the backend
// for the health-service name svc. Ejection is the caller's to fill in.
func (b *Handle) facts(svc string) facts {
	b.mu.Lock()
	defer b.mu.Unlock()
	f := facts{conn: b.ready, connReason: b.connReason, alive: b.alive, aliveReason: b.aliveReason}
	if w, ok := b.watches[svc]; ok {
		f.health = w.h
	} else {
		f.health = health{status: healthpb.HealthCheckResponse_UNKNOWN, reason: "not watched"}
	}
	return f
}

func (b *Handle) readyAt() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.readySince
}

func (b *Handle) startLocked(svc string, w *watch) {
	ctx, cancel := context.WithCancel(b.ctx)
	run := new(int)
	w.run, w.cancel = run, cancel
	b.wg.Add(1)
	go b.watchLoop(ctx, svc, run)
}

func (b *Handle) stopLocked(w *watch, st healthpb.HealthCheckResponse_ServingStatus, reason string) {
	if w.cancel != nil {
		w.cancel()
		w.run, w.cancel = nil, nil
	}
	if reason != "" {
		w.set(st, false, reason)
	}
}

func (w *watch) set(st healthpb.HealthCheckResponse_ServingStatus, routable bool, reason string) bool {
	if w.h.status == st && w.h.routable == routable && w.h.reason == reason {
		return false
	}
	w.h = health{status: st, routable: routable, reason: reason, since: time.Now()}
	return true
}

// report records what a Watch learned, if that Watch is still current.
func (b *Handle) report(svc string, run *int, st healthpb.HealthCheckResponse_ServingStatus, reason string) {
	routable := st == healthpb.HealthCheckResponse_SERVING
	b.mu.Lock()
	w, ok := b.watches[svc]
	if !ok || w.run != run {
		b.mu.Unlock()
		return
	}
	prev := w.h.status
	changed := w.set(st, routable, reason)
	firstUnknown := st == healthpb.HealthCheckResponse_SERVICE_UNKNOWN && !w.unknownLogged
	if firstUnknown {
		w.unknownLogged = true
	}
	b.mu.Unlock()
	if firstUnknown {
		b.log.Warn("backend does not know the health-service name it is asked for; it gets no calls",
			"health_service", svc, "fix", setNameHint)
	}
	if changed {
		if prev != st {
			b.log.Info("backend health changed", "service", svc, "from", prev.String(), "to", st.String(), "reason", reason)
			if ev := b.c.cfg.Events; ev != nil {
				ev.HealthChanged(b.addr, svc, prev, st)
			}
		}
		b.c.markDirty(b.addr)
	}
}

// watchLoop keeps one Watch stream open while the connection is READY. A
// failed stream makes the backend unroutable for svc and is retried after a
// jittered exponential backoff that starts over after any message.
func (b *Handle) watchLoop(ctx context.Context, svc string, run *int) {
	defer b.wg.Done()
	client := healthpb.NewHealthClient(b.cc)
	attempt := 0
	for {
		err := b.watchOnce(ctx, client, svc, run, &attempt)
		if ctx.Err() != nil {
			return
		}
		if status.Code(err) == codes.Unimplemented {
			// A17: a backend without the health service is healthy as
			// far as anyone can tell; asking again would only repeat the
			// answer.
			b.report(svc, run, healthpb.HealthCheckResponse_SERVING, "backend does not implement grpc.health.v1; treated as SERVING")
			b.mu.Lock()
			w := b.watches[svc]
			first := w != nil && !w.unimplementedLogged
			if first {
				w.unimplementedLogged = true
			}
			b.mu.Unlock()
			if first {
				b.log.Error("backend does not implement grpc.health.v1 Watch; routing to it without health checks", "service", svc)
			}
			return
		}
		b.report(svc, run, healthpb.HealthCheckResponse_UNKNOWN, "health watch failed: "+status.Convert(err).Message())
		delay := backoff.Delay(b.c.cfg.BackoffBase, b.c.cfg.BackoffMax, attempt)
		attempt++
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (b *Handle) watchOnce(ctx context.Context, client healthpb.HealthClient, svc string, run *int, attempt *int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if ev := b.c.cfg.Events; ev != nil {
		ev.WatchStarted(b.addr, svc)
	}
	stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{Service: svc})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		*attempt = 0
		b.report(svc, run, resp.GetStatus(), statusReason(resp.GetStatus(), svc))
	}
}

// setNameHint is how a user makes a backend's health server and the
// gateway agree on a name.
const setNameHint = `register the instance with Consul service meta ` + MetaHealthService + `=<name> (or tag ` + TagHealthService + `<name>; "" asks for the server's overall health), or set routes[].health_service`

func statusReason(st healthpb.HealthCheckResponse_ServingStatus, svc string) string {
	switch st {
	case healthpb.HealthCheckResponse_SERVING:
		return ""
	case healthpb.HealthCheckResponse_SERVICE_UNKNOWN:
		return fmt.Sprintf("backend reports SERVICE_UNKNOWN for health service %q: %s", svc, setNameHint)
	}
	return "backend reports " + st.String()
}
