package proxy

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/healthgate/healthgate/proxy/proxycfg"
)

// Retries: the decisions both engines take when a backend answered a call
// with a status the route retries, or failed it before answering. The
// engines only report how an attempt ended and wait as told; see the
// README's "Retries".

// pushbackKey is the trailer with which a backend asks for a retry after
// a delay, or for none (gRPC A6).
const pushbackKey = "grpc-retry-pushback-ms"

// minAttemptTime is the least of the client's deadline a retry must leave
// for the attempt itself once its wait is over: with less, the backend
// could not answer in time and the retry would only add load.
const minAttemptTime = 5 * time.Millisecond

// retries holds the routes' budgets, by route name. A budget outlives
// reloads (its limits are read from the call's policy each time), so a
// reload does not give a failing route a fresh allowance; there is one per
// route name that had a call with retries.
type retries struct {
	epoch   time.Time
	budgets sync.Map // route name -> *retryBudget
}

func newRetries() *retries { return &retries{epoch: time.Now()} }

// second is now as the budgets count time: whole seconds since the proxy
// began, from 1, on the monotonic clock.
func (r *retries) second(now time.Time) int64 {
	return int64(now.Sub(r.epoch)/time.Second) + 1
}

// budgetSlots is how many seconds a budget remembers: RetryWindow.
const budgetSlots = int(proxycfg.RetryWindow / time.Second)

// retryBudget counts a route's calls and retries per second over the last
// RetryWindow, in a ring of one slot per second, without a lock. A slot is
// taken over by the first event of a new second; an event that races with
// that may be lost, which only makes the budget approximate by a count or
// two.
type retryBudget struct {
	slots [budgetSlots]budgetSlot
}

type budgetSlot struct {
	// sec is the second the slot counts; 0 for never.
	sec atomic.Int64
	// calls are first attempts; retries are the retries allowed, floor
	// those of them allowed by the per-second floor.
	calls, retries, floor atomic.Int64
}

// slot is the slot of second sec, reset first if it counted an older one.
func (b *retryBudget) slot(sec int64) *budgetSlot {
	s := &b.slots[sec%int64(budgetSlots)]
	for {
		old := s.sec.Load()
		if old >= sec {
			// A goroutine that read the clock a little earlier counts in
			// the newer second: close enough.
			return s
		}
		if s.sec.CompareAndSwap(old, sec) {
			s.calls.Store(0)
			s.retries.Store(0)
			s.floor.Store(0)
			return s
		}
	}
}

// call counts a call at second sec.
func (b *retryBudget) call(sec int64) { b.slot(sec).calls.Add(1) }

// allow takes a retry at second sec from the budget: while the retries of
// the window stay within ratio of its calls, else while the retries of this
// second allowed by the floor stay within perSecond. It reports false when
// the budget is spent.
func (b *retryBudget) allow(sec int64, ratio float64, perSecond int) bool {
	cur := b.slot(sec)
	var calls, retried int64
	for i := range b.slots {
		s := &b.slots[i]
		if s.sec.Load() > sec-int64(budgetSlots) {
			calls += s.calls.Load()
			retried += s.retries.Load()
		}
	}
	if float64(retried) < ratio*float64(calls) {
		cur.retries.Add(1)
		return true
	}
	if cur.floor.Add(1) <= int64(perSecond) {
		cur.retries.Add(1)
		return true
	}
	return false
}

// budget is the retry budget of route name.
func (r *retries) budget(name string) *retryBudget {
	if b, ok := r.budgets.Load(name); ok {
		return b.(*retryBudget)
	}
	b, _ := r.budgets.LoadOrStore(name, &retryBudget{})
	return b.(*retryBudget)
}

// retryCall is one call's retries. The zero value retries nothing and
// costs nothing: a route without retries never reaches the budget.
type retryCall struct {
	pol    *proxycfg.Retry
	budget *retryBudget
	r      *retries
	// retried counts the retries made; exhausted is set when the budget
	// refused one.
	retried   int
	exhausted bool
}

// retryFor starts the retries of a call on route rt at now.
func (p *Proxy) retryFor(rt *Route, now time.Time) retryCall {
	if rt.Policy == nil || !rt.Policy.Retry.Enabled() {
		return retryCall{}
	}
	b := p.retries.budget(rt.Name)
	b.call(p.retries.second(now))
	return retryCall{pol: &rt.Policy.Retry, budget: b, r: p.retries}
}

// on reports whether the call may be retried at all; the engines keep the
// request for a retry only then.
func (rc *retryCall) on() bool { return rc.pol != nil }

// buffer is how many request bytes a call keeps for a retry.
func (rc *retryCall) buffer() int {
	if rc.pol == nil {
		return 0
	}
	return rc.pol.Buffer()
}

// perTry is the per-try timeout; zero for none.
func (rc *retryCall) perTry() time.Duration {
	if rc.pol == nil {
		return 0
	}
	return rc.pol.PerTryTimeout
}

// pick chooses the upstream of an attempt: one the call was not sent to
// yet. Once every routable backend had it, a retry goes to any of them
// again, so that a route of one backend, or of fewer backends than
// attempts, still retries (after the backoff, which is what spares that
// backend).
func (rc *retryCall) pick(b Backends, tried []Upstream) (Upstream, error) {
	up, err := b.Pick(tried)
	if err != nil && rc.retried > 0 {
		if again, aerr := b.Pick(nil); aerr == nil {
			return again, nil
		}
	}
	return up, err
}

// attemptEnd is how an attempt ended, as far as a retry depends on it.
type attemptEnd struct {
	// code is the backend's status, UNAVAILABLE for a reset stream or a
	// broken connection, DEADLINE_EXCEEDED for the per-try timeout.
	code codes.Code
	// pushback is the backend's grpc-retry-pushback-ms, if it sent one
	// (hasPushback).
	pushback    string
	hasPushback bool
	// answered: something of the response reached the client.
	answered bool
	// kept: every request byte sent so far is kept for a retry.
	kept bool
	// attempts is how many backends the call was sent to so far.
	attempts int
}

// next decides whether a call whose attempt ended as e is retried at now,
// within deadline (zero for none), and how long to wait first. Checks that
// take nothing come first: the budget is asked last, so that a retry it
// allows is one that happens.
func (rc *retryCall) next(e attemptEnd, now, deadline time.Time) (time.Duration, bool) {
	if rc.pol == nil || e.answered || !e.kept || e.attempts >= rc.pol.Attempts() || !rc.pol.Retries(uint32(e.code)) {
		return 0, false
	}
	var wait time.Duration
	if e.hasPushback {
		d, ok := parsePushback(e.pushback)
		if !ok {
			// A6: a negative or malformed pushback asks for no retry.
			return 0, false
		}
		wait = d
	} else {
		wait = backoffDelay(rc.pol.BackoffRange(), rc.retried+1)
	}
	if !deadline.IsZero() && !now.Add(wait+minAttemptTime).Before(deadline) {
		return 0, false
	}
	if !rc.budget.allow(rc.r.second(now), rc.pol.Budget.EffectiveRatio(), rc.pol.Budget.EffectivePerSecond()) {
		rc.exhausted = true
		return 0, false
	}
	rc.retried++
	return wait, true
}

// backoffDelay is the wait before retry n (from 1): a random duration in
// [0, min(base×2^(n-1), max)], as gRPC's own retries wait (A6), so that
// retries of calls that failed together spread out.
func backoffDelay(b proxycfg.Backoff, n int) time.Duration {
	c := b.Base
	for i := 1; i < n && c < b.Max; i++ {
		c *= 2
	}
	c = min(c, b.Max)
	if c <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(c) + 1))
}

// parsePushback reads grpc-retry-pushback-ms: a non-negative decimal number
// of milliseconds. Anything else is false: no retry.
func parsePushback(v string) (time.Duration, bool) {
	if v == "" || len(v) > 10 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if n > 1<<31-1 {
		return 0, false
	}
	return time.Duration(n) * time.Millisecond, true
}
