package proxy

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/healthgate/healthgate/proxy/proxycfg"
)

// TestRetryBudget: retries are allowed up to the ratio of the window's
// calls, then up to the floor in each second, and calls older than the
// window no longer count.
func TestRetryBudget(t *testing.T) {
	var b retryBudget
	for range 100 {
		b.call(1)
	}
	allowed := 0
	for b.allow(1, 0.2, 5) {
		allowed++
	}
	if allowed != 25 {
		t.Fatalf("second 1: %d retries allowed after 100 calls, want 20 (ratio) + 5 (floor)", allowed)
	}
	// A new second brings a new floor, and nothing more.
	allowed = 0
	for b.allow(2, 0.2, 5) {
		allowed++
	}
	if allowed != 5 {
		t.Fatalf("second 2: %d retries allowed, want the floor of 5", allowed)
	}
	// Once the window has passed, the old calls and retries are forgotten:
	// 10 new calls allow 2 retries, and the floor 5.
	sec := int64(1 + budgetSlots + 1)
	for range 10 {
		b.call(sec)
	}
	allowed = 0
	for b.allow(sec, 0.2, 5) {
		allowed++
	}
	if allowed != 7 {
		t.Fatalf("after the window: %d retries allowed, want 2 + 5", allowed)
	}
	// Ratio 0 and no floor: no retries at all.
	var none retryBudget
	none.call(1)
	if none.allow(1, 0, 0) {
		t.Fatal("a budget of nothing allowed a retry")
	}
}

// TestRetryBudgetConcurrent: calls and retries from many goroutines stay
// within the budget, give or take the goroutines racing.
func TestRetryBudgetConcurrent(t *testing.T) {
	var b retryBudget
	const workers, calls = 8, 1000
	var mu sync.Mutex
	allowed := 0
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range calls {
				b.call(3)
				if b.allow(3, 0.1, 0) {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if limit := workers*calls/10 + workers; allowed > limit {
		t.Fatalf("%d retries allowed for %d calls, want at most %d", allowed, workers*calls, limit)
	}
}

func TestBackoffDelay(t *testing.T) {
	b := proxycfg.Backoff{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	for n, cap := range []time.Duration{10, 20, 40, 50, 50} {
		cap *= time.Millisecond
		var top time.Duration
		for range 500 {
			d := backoffDelay(b, n+1)
			if d < 0 || d > cap {
				t.Fatalf("retry %d: %v, want within [0, %v]", n+1, d, cap)
			}
			top = max(top, d)
		}
		if top < cap/2 {
			t.Fatalf("retry %d: 500 waits all below %v, want them spread up to %v", n+1, top, cap)
		}
	}
}

func TestParsePushback(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true}, {"250", 250 * time.Millisecond, true}, {"2147483647", 2147483647 * time.Millisecond, true},
		{"", 0, false}, {"-1", 0, false}, {"1.5", 0, false}, {" 5", 0, false}, {"2147483648", 0, false}, {"soon", 0, false},
	} {
		got, ok := parsePushback(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parsePushback(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// TestRetryDecision: each rule of a retry, one at a time.
func TestRetryDecision(t *testing.T) {
	perSecond := 1000
	pol := proxycfg.Retry{Codes: []string{"UNAVAILABLE"}, Backoff: proxycfg.Backoff{Base: time.Millisecond, Max: time.Millisecond},
		Budget: proxycfg.RetryBudget{MinPerSecond: &perSecond}}
	p := &Proxy{retries: newRetries()}
	now := time.Now()
	ok := attemptEnd{code: codes.Unavailable, kept: true, attempts: 1}
	for _, tc := range []struct {
		name     string
		e        func(attemptEnd) attemptEnd
		deadline time.Time
		want     bool
	}{
		{"retryable", func(e attemptEnd) attemptEnd { return e }, time.Time{}, true},
		{"code not listed", func(e attemptEnd) attemptEnd { e.code = codes.Internal; return e }, time.Time{}, false},
		{"answered", func(e attemptEnd) attemptEnd { e.answered = true; return e }, time.Time{}, false},
		{"request not kept", func(e attemptEnd) attemptEnd { e.kept = false; return e }, time.Time{}, false},
		{"attempts used up", func(e attemptEnd) attemptEnd { e.attempts = 3; return e }, time.Time{}, false},
		{"deadline too close", func(e attemptEnd) attemptEnd { return e }, now.Add(3 * time.Millisecond), false},
		{"deadline far", func(e attemptEnd) attemptEnd { return e }, now.Add(time.Second), true},
		{"pushback", func(e attemptEnd) attemptEnd { e.pushback, e.hasPushback = "20", true; return e }, time.Time{}, true},
		{"pushback past the deadline", func(e attemptEnd) attemptEnd { e.pushback, e.hasPushback = "2000", true; return e }, now.Add(time.Second), false},
		{"negative pushback", func(e attemptEnd) attemptEnd { e.pushback, e.hasPushback = "-1", true; return e }, time.Time{}, false},
		{"malformed pushback", func(e attemptEnd) attemptEnd { e.pushback, e.hasPushback = "x", true; return e }, time.Time{}, false},
	} {
		rt := Route{Name: "r", Policy: &proxycfg.RoutePolicy{Retry: pol}}
		rc := p.retryFor(&rt, now)
		wait, got := rc.next(tc.e(ok), now, tc.deadline)
		if got != tc.want {
			t.Errorf("%s: retry %v, want %v", tc.name, got, tc.want)
		}
		if tc.name == "pushback" && wait != 20*time.Millisecond {
			t.Errorf("pushback 20: wait %v", wait)
		}
	}
	// No policy, or one without codes: nothing is retried, and the budget
	// is never touched.
	for _, pp := range []*proxycfg.RoutePolicy{nil, {}} {
		rt := Route{Name: "none", Policy: pp}
		rc := p.retryFor(&rt, now)
		if _, got := rc.next(ok, now, time.Time{}); got || rc.on() {
			t.Fatalf("policy %v retried", pp)
		}
	}
	if _, ok := p.retries.budgets.Load("none"); ok {
		t.Fatal("a route without retries has a budget")
	}
	// An exhausted budget says so.
	zero, none := 0.0, 0
	pol.Budget = proxycfg.RetryBudget{Ratio: &zero, MinPerSecond: &none}
	rt := Route{Name: "broke", Policy: &proxycfg.RoutePolicy{Retry: pol}}
	rc := p.retryFor(&rt, now)
	if _, got := rc.next(ok, now, time.Time{}); got || !rc.exhausted {
		t.Fatalf("an empty budget: retry %v, exhausted %v", got, rc.exhausted)
	}
}

// FuzzPushback: any grpc-retry-pushback-ms value is either a wait of at
// most 2^31-1 ms that reads back the same, or no retry.
func FuzzPushback(f *testing.F) {
	for _, s := range []string{"0", "100", "-1", "", "2147483648", "1e3", "٣"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := parsePushback(s)
		if !ok {
			return
		}
		if d < 0 || d > (1<<31-1)*time.Millisecond {
			t.Fatalf("parsePushback(%q) = %v", s, d)
		}
		if n, err := strconv.ParseInt(s, 10, 64); err != nil || time.Duration(n)*time.Millisecond != d {
			t.Fatalf("parsePushback(%q) = %v, strconv says %d, %v", s, d, n, err)
		}
	})
}
