package healthcheck

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/healthcheck/healthcheckcfg"
)

// LivenessConfig tunes the probe that tells a hung backend from a quiet one.
//
// A backend that stops answering (SIGSTOP, a wedged process, a host gone
// behind a TCP path that still holds) keeps its connection READY and its
// Watch streams open: nothing is said on them, so nothing fails, and the
// backend stays routable. HTTP/2 PING keepalive cannot find it quickly:
// grpc-go's client floors the keepalive time at 10s, and a default grpc-go
// server answers PINGs more frequent than every 5 minutes on a connection it
// sends nothing on with GOAWAY too_many_pings. A unary Health/Check is an
// ordinary call that every gRPC server answers, even one without the health
// service (UNIMPLEMENTED), and it travels the connection the proxied calls
// use, so its silence is theirs.
type LivenessConfig = healthcheckcfg.Liveness

// connTracker dials a backend's TCP connections and keeps the latest, so
// that a backend found not responding can have its connection closed under
// grpc's feet, as grpc's own keepalive does when a PING goes unanswered: the
// calls in flight on it then fail UNAVAILABLE at once instead of at their
// deadlines, and grpc reconnects with its backoff. The zero value is ready to
// use; one tracker serves one *grpc.ClientConn. Dialer and Sever may run
// at the same time.
type connTracker struct {
	d net.Dialer

	mu sync.Mutex // guards conn and lastErr
	// conn is the latest connection dialed, nil before the first dial and
	// after Sever. grpc dials one connection at a time per address, so the
	// latest is the one in use.
	conn net.Conn
	// lastErr is why the latest attempt to connect failed: the dial or the
	// TLS handshake; nil after a dial that succeeded.
	lastErr error
}

func (t *connTracker) failed(err error) {
	t.mu.Lock()
	t.lastErr = err
	t.mu.Unlock()
}

// LastErr is why the latest attempt to connect failed; nil if it did not.
func (t *connTracker) LastErr() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastErr
}

// Dialer is for grpc.WithContextDialer.
func (t *connTracker) Dialer() func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := t.d.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.failed(err)
			return nil, err
		}
		t.mu.Lock()
		t.conn, t.lastErr = c, nil
		t.mu.Unlock()
		return c, nil
	}
}

// Sever closes the current connection and reports whether there was one
// still open. grpc sees its reads and writes fail, fails the calls on the
// connection and dials again.
func (t *connTracker) Sever() bool {
	t.mu.Lock()
	c := t.conn
	t.conn = nil
	t.mu.Unlock()
	// Closing outside the lock: a dial that completes meanwhile must not
	// wait for it. A connection grpc has already closed reports an error
	// here, and that is not a connection severed.
	return c != nil && c.Close() == nil
}

// notRespondingReason is what probeLoop reports for a backend that let a
// probe's deadline pass.
func notRespondingReason(timeout time.Duration) string {
	return fmt.Sprintf("not responding: no answer to a health check within %s", timeout)
}

// probeLoop sends a Health/Check for "" on cc at once and then every
// cfg.Interval while busy reports calls since the last look (nil: always),
// every cfg.IdleInterval otherwise, until ctx ends, and reports whether the
// backend answers: the first result, then each change. cfg must have its
// defaults applied.
//
// Any answer proves the backend alive, whatever the status (SERVING,
// NOT_FOUND, UNIMPLEMENTED...): serving status is the Watch's business. A
// probe whose deadline passes after it was sent on a connection reports the
// backend not responding. A probe that never reached a connection
// (UNAVAILABLE while the connection is down, or a deadline that passed while
// it waited for one) reports nothing: the connection's state already says
// so, and saying it again every Interval would only be noise.
//
// report is called on probeLoop's goroutine and must not block for long: it
// delays the next probe.
func probeLoop(ctx context.Context, cc grpc.ClientConnInterface, cfg LivenessConfig, busy func() bool, report func(alive bool, reason string)) {
	client := healthpb.NewHealthClient(cc)
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	var known, alive bool
	var last time.Time
	for {
		// A backend with calls is probed every Interval; an idle one
		// every IdleInterval.
		if busy == nil || busy() || time.Since(last) >= cfg.IdleInterval {
			last = time.Now()
		} else {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			continue
		}
		if a, ok := probe(ctx, client, cfg.Timeout); ok && (!known || a != alive) {
			known, alive = true, a
			reason := ""
			if !a {
				reason = notRespondingReason(cfg.Timeout)
			}
			report(a, reason)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// probe sends one Check. ok is false when the outcome says nothing about
// whether the backend answers.
func probe(ctx context.Context, client healthpb.HealthClient, timeout time.Duration) (alive, ok bool) {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// The peer is filled in only for a call that was given a connection:
	// what tells a backend that did not answer from a connection that was
	// never there.
	var p peer.Peer
	// Not WaitForReady: while the connection is down the probe fails at
	// once instead of spending its deadline on a question the connection's
	// state already answers.
	_, err := client.Check(pctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false), grpc.Peer(&p))
	if err == nil {
		return true, true
	}
	if ctx.Err() != nil {
		return false, false
	}
	switch status.Code(err) {
	case codes.DeadlineExceeded:
		if pctx.Err() == nil {
			// The backend itself answered DEADLINE_EXCEEDED.
			return true, true
		}
		return false, p.Addr != nil
	case codes.Unavailable, codes.Canceled:
		// The connection failed or is closing. A backend that answers
		// UNAVAILABLE itself cannot be told from that here; reporting
		// nothing for it only delays a result, never gives a wrong one.
		return false, false
	}
	return true, true
}
