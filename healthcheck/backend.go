package healthcheck

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// backend owns one address's connection, the goroutine that follows the
// connection's state, and the Watch goroutines on it.
type backend struct {
	addr string
	cc   *grpc.ClientConn
	c    *Checker
	log  *slog.Logger
	// ctx is the backend's lifetime: cancelled by close, it ends the
	// monitor and every Watch.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the monitor and every Watch goroutine

	mu sync.Mutex // guards the fields below
	// ready is whether the connection is READY; Watches run only then.
	ready bool
	// connReason says why the connection is not ready.
	connReason string
	watches    map[string]*watch
}

// watch is the health of one health-service name on one backend.
type watch struct {
	// run identifies the running Watch goroutine; a goroutine whose run is
	// no longer current has been cancelled and must not report.
	run    *int
	cancel context.CancelFunc
	h      health
	// unimplementedLogged keeps the UNIMPLEMENTED error to one line for
	// the life of the backend, across reconnects.
	unimplementedLogged bool
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

func (c *Checker) newBackend(ctx context.Context, addr string) (*backend, error) {
	// passthrough: the address is already resolved by discovery, and a DNS
	// resolver per backend would only add goroutines and delay.
	cc, err := grpc.NewClient("passthrough:///"+addr, c.cfg.DialOptions...)
	if err != nil {
		return nil, fmt.Errorf("healthcheck: connect %s: %w", addr, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	b := &backend{
		addr: addr, cc: cc, c: c, ctx: ctx, cancel: cancel,
		log:        c.log.With("addr", addr),
		connReason: "connecting",
		watches:    map[string]*watch{},
	}
	b.wg.Add(1)
	go b.monitor()
	return b, nil
}

// close stops every goroutine of the backend and closes its connection;
// calls still in flight on it fail.
func (b *backend) close() {
	b.cancel()
	b.wg.Wait()
	b.cc.Close()
}

// monitor follows the connection's state. Watches start when it is READY and
// stop when it leaves READY: a backend that sends GOAWAY (GracefulStop) must
// see its Watch streams end, or its graceful stop would wait on them.
func (b *backend) monitor() {
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

func (b *backend) setConn(st connectivity.State) {
	ready := st == connectivity.Ready
	b.mu.Lock()
	wasReady := b.ready
	b.ready = ready
	switch {
	case ready && !wasReady:
		b.connReason = ""
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
	b.c.poke()
}

// setServices makes the backend watch exactly svcs.
func (b *backend) setServices(svcs map[string]bool) {
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

func (b *backend) health(svc string) health {
	b.mu.Lock()
	defer b.mu.Unlock()
	if w, ok := b.watches[svc]; ok {
		return w.h
	}
	return health{status: healthpb.HealthCheckResponse_UNKNOWN, reason: "not watched"}
}

func (b *backend) startLocked(svc string, w *watch) {
	ctx, cancel := context.WithCancel(b.ctx)
	run := new(int)
	w.run, w.cancel = run, cancel
	b.wg.Add(1)
	go b.watchLoop(ctx, svc, run)
}

func (b *backend) stopLocked(w *watch, st healthpb.HealthCheckResponse_ServingStatus, reason string) {
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
func (b *backend) report(svc string, run *int, st healthpb.HealthCheckResponse_ServingStatus, reason string) {
	routable := st == healthpb.HealthCheckResponse_SERVING
	b.mu.Lock()
	w, ok := b.watches[svc]
	if !ok || w.run != run {
		b.mu.Unlock()
		return
	}
	prev := w.h.status
	changed := w.set(st, routable, reason)
	b.mu.Unlock()
	if changed {
		if prev != st {
			b.log.Info("backend health changed", "service", svc, "from", prev.String(), "to", st.String(), "reason", reason)
			if ev := b.c.cfg.Events; ev != nil {
				ev.HealthChanged(b.addr, svc, prev, st)
			}
		}
		b.c.poke()
	}
}

// watchLoop keeps one Watch stream open while the connection is READY. A
// failed stream makes the backend unroutable for svc and is retried after a
// jittered exponential backoff that starts over after any message.
func (b *backend) watchLoop(ctx context.Context, svc string, run *int) {
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
		delay := backoff(b.c.cfg.BackoffBase, b.c.cfg.BackoffMax, attempt)
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

func (b *backend) watchOnce(ctx context.Context, client healthpb.HealthClient, svc string, run *int, attempt *int) error {
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
		b.report(svc, run, resp.GetStatus(), statusReason(resp.GetStatus()))
	}
}

func statusReason(st healthpb.HealthCheckResponse_ServingStatus) string {
	if st == healthpb.HealthCheckResponse_SERVING {
		return ""
	}
	return "backend reports " + st.String()
}

// backoff is base * 1.6^attempt, capped at max, with ±20% jitter so that
// many backends failing together do not retry together.
func backoff(base, max time.Duration, attempt int) time.Duration {
	d := float64(base)
	for range attempt {
		d *= 1.6
		if d >= float64(max) {
			d = float64(max)
			break
		}
	}
	d *= 0.8 + 0.4*rand.Float64()
	return time.Duration(d)
}
