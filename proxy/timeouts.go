package proxy

import (
	"fmt"

	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// A route's timeouts (README "Traffic policy"), decided here for both
// engines: each engine only measures its own client's grpc-timeout and
// tells the idle timer when something moved.

// callTimeout is the timeout a call on route rt runs with, given the one
// the client sent (client, when has): the client's own, else the route's
// timeout, else default_timeout; any of them capped by the route's
// max_timeout, which bounds calls without a deadline too. ok false: the
// call runs without one. capped: max_timeout cut it short, which the
// status of a call that runs out says.
func (p *Proxy) callTimeout(rt *Route, client time.Duration, has bool) (d time.Duration, ok, capped bool) {
	if !has {
		client, has = p.timeout(rt)
	}
	if rt.Policy != nil && rt.Policy.MaxTimeout > 0 && (!has || client > rt.Policy.MaxTimeout) {
		return rt.Policy.MaxTimeout, true, true
	}
	return client, has, false
}

// cappedMessage is the status message of a call whose deadline, capped
// by the route's max_timeout d, passed: the client learns why it came
// sooner than it asked.
func cappedMessage(route string, d time.Duration) string {
	return fmt.Sprintf("healthgate: deadline exceeded: capped at max_timeout %s of route %s", d, route)
}

// limitsDeadline reports whether the route may set or shorten a call's
// deadline, so that an engine asks callTimeout only then.
func (p *Proxy) limitsDeadline(rt *Route) bool {
	return p.cfg.DefaultTimeout > 0 || (rt.Policy != nil && (rt.Policy.Timeout > 0 || rt.Policy.MaxTimeout > 0))
}

// idleTimeout is the route's idle_timeout for a call with the given time
// left (hasLeft false: no deadline); zero for none. A call whose deadline
// comes first can never be idle that long: it needs no idle timer, which
// would cost a timer per call for nothing.
func idleTimeout(rt *Route, left time.Duration, hasLeft bool) time.Duration {
	if rt.Policy == nil || (hasLeft && left <= rt.Policy.IdleTimeout) {
		return 0
	}
	return rt.Policy.IdleTimeout
}

// idleMessage is the status message of a call ended for idling.
func idleMessage(route string, d time.Duration) string {
	return fmt.Sprintf("healthgate: stream idle for %s on route %s", d, route)
}

// idleTimer ends a call that moves nothing for a while. What the call
// moves only stores the time (touch): the timer is not reset for every
// message. When it fires, it looks at the last touch and, unless the call
// has been quiet for the whole period, sets itself again for what is left
// of it: a busy call costs a clock read per message and one wake-up per
// period, and no goroutine waits for it.
type idleTimer struct {
	idle  time.Duration
	start time.Time
	// last is when the call last moved, as time since start (monotonic).
	last atomic.Int64
	fire func()

	mu sync.Mutex // guards the fields below
	t  *time.Timer
	// over: the timer fired for good or was stopped; it is not set again.
	over bool
}

// newIdleTimer calls fire once the call has moved nothing for idle.
func newIdleTimer(idle time.Duration, fire func()) *idleTimer {
	it := &idleTimer{idle: idle, start: time.Now(), fire: fire}
	it.mu.Lock()
	// Set under the lock, so that check, which takes it, sees t.
	it.t = time.AfterFunc(idle, it.check)
	it.mu.Unlock()
	return it
}

// touch records that the call moved something now.
func (it *idleTimer) touch() {
	it.last.Store(int64(time.Since(it.start)))
}

func (it *idleTimer) check() {
	it.mu.Lock()
	if it.over {
		it.mu.Unlock()
		return
	}
	quiet := time.Since(it.start) - time.Duration(it.last.Load())
	if quiet < it.idle {
		it.t.Reset(it.idle - quiet)
		it.mu.Unlock()
		return
	}
	it.over = true
	it.mu.Unlock()
	it.fire()
}

// stop ends the timer: fire is not called after stop returns, unless it
// had begun already.
func (it *idleTimer) stop() {
	it.mu.Lock()
	it.over = true
	it.t.Stop()
	it.mu.Unlock()
}

// idleServerStream is the grpc engine's client stream with every message
// and header through it counted as the call moving: requests from the
// client (RecvMsg) and the backend's answer on its way (SendHeader,
// SendMsg).
type idleServerStream struct {
	grpc.ServerStream
	it *idleTimer
}

func (s idleServerStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	s.it.touch()
	return err
}

func (s idleServerStream) SendMsg(m any) error {
	s.it.touch()
	return s.ServerStream.SendMsg(m)
}

func (s idleServerStream) SendHeader(md metadata.MD) error {
	s.it.touch()
	return s.ServerStream.SendHeader(md)
}

// deadlineSlack is how early before the gateway's idea of a call's
// deadline a client's cancel still counts as the deadline passing. The
// gateway's deadline is later than the client's by the time its HEADERS
// took to arrive (grpc-timeout is what remained when they were sent), and
// the client's cancel may take less time to arrive than they did: a tenth
// of the timeout, within 2 ms to 100 ms, tells the two apart in practice.
// Both engines judge by it.
func deadlineSlack(timeout time.Duration) time.Duration {
	return min(max(timeout/10, 2*time.Millisecond), 100*time.Millisecond)
}
