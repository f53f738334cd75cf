package gateway_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy/proxycfg"
)

// retryConfig routes test.Svc to backends with the retry policy r.
func retryConfig(r proxycfg.Retry, backends ...string) config.Config {
	return config.Config{Routes: []config.Route{{
		Service: testutil.TestService, Backends: backends,
		Traffic: proxycfg.RoutePolicy{Retry: r},
	}}}
}

// fastRetry retries UNAVAILABLE with a backoff short enough for tests,
// and a budget that a test's bursts of calls do not exhaust.
func fastRetry() proxycfg.Retry {
	perSecond := 1000
	return proxycfg.Retry{
		Codes:   []string{"UNAVAILABLE"},
		Backoff: proxycfg.Backoff{Base: time.Millisecond, Max: 5 * time.Millisecond},
		Budget:  proxycfg.RetryBudget{MinPerSecond: &perSecond},
	}
}

// routeMetric is the value of a per-route counter of the test route.
func routeMetric(t *testing.T, h *harness, name string) float64 {
	t.Helper()
	ms := series(scrape(t, adminServer(t, h)), name, "route", testutil.TestService)
	if len(ms) != 1 {
		return 0
	}
	return ms[0].GetCounter().GetValue()
}

// waitRouteMetric waits until a per-route counter of the test route has
// the value want (cond, if given, instead): the relay records a call just
// after its client may have heard its end.
func waitRouteMetric(t *testing.T, h *harness, name string, want float64, cond ...func(float64) bool) {
	t.Helper()
	admin := adminServer(t, h)
	ok := func(v float64) bool { return v == want }
	if len(cond) > 0 {
		ok = cond[0]
	}
	var got float64
	testutil.WaitFor(t, 5*time.Second, fmt.Sprintf("%s at %v", name, want), func() bool {
		got = 0
		if ms := series(scrape(t, admin), name, "route", testutil.TestService); len(ms) == 1 {
			got = ms[0].GetCounter().GetValue()
		}
		return ok(got)
	})
}

// callIDs counts a backend's recorded calls by their x-call metadata.
func callIDs(calls []testutil.Call) map[string]int {
	ids := map[string]int{}
	for _, c := range calls {
		if v := c.MD.Get("x-call"); len(v) > 0 {
			ids[v[0]]++
		}
	}
	return ids
}

// collect sends parts on a client-streaming call and returns the answer.
func collect(ctx context.Context, cc *grpc.ClientConn, method string, parts [][]byte) ([]byte, error) {
	cs, err := testutil.RawStream(ctx, cc, method)
	if err != nil {
		return nil, err
	}
	for _, m := range parts {
		if err := cs.SendMsg(&m); err != nil {
			break
		}
	}
	cs.CloseSend()
	var got []byte
	if err := cs.RecvMsg(&got); err != nil {
		return nil, err
	}
	if err := cs.RecvMsg(&got); !errors.Is(err, io.EOF) {
		return nil, err
	}
	return got, nil
}

// TestB70_RetriesOnAnotherBackend: a backend that answers UNAVAILABLE
// (trailers-only) has each call it gets sent to the other backend, whole:
// every call succeeds, the failing backend saw each call at most once, and
// the retries show in the route's metrics. Client-streaming calls, whose
// messages the failing backend read before failing, reach the other
// backend byte-identical.
func TestB70_RetriesOnAnotherBackend(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		bad, good := testutil.StartBackend(t), testutil.StartBackend(t)
		bad.FailWith.Store(int32(codes.Unavailable))
		bad.FailAfterRequest.Store(true)
		h := e.start(t, retryConfig(fastRetry(), bad.Addr, good.Addr))
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		const n = 20
		parts := [][]byte{[]byte("one "), {}, bytes.Repeat([]byte("x"), 3000)}
		want := bytes.Join(parts, nil)
		for i := range n {
			ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-call", strconv.Itoa(i))
			if i%2 == 0 {
				got, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("hello"))
				if err != nil || string(got) != "hello" {
					t.Fatalf("unary call %d: %q, %v; want the echo", i, got, err)
				}
				continue
			}
			got, err := collect(ctx, cc, "/test.Svc/Collect", parts)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("client-streaming call %d: %d bytes, %v; want the %d sent", i, len(got), err, len(want))
			}
		}
		badCalls, goodCalls := testCalls(bad), testCalls(good)
		if len(goodCalls) != n {
			t.Fatalf("the good backend answered %d calls, want all %d", len(goodCalls), n)
		}
		for id, k := range callIDs(badCalls) {
			if k != 1 {
				t.Fatalf("call %s reached the failing backend %d times, want once", id, k)
			}
		}
		if len(badCalls) == 0 {
			t.Fatal("no call was sent to the failing backend first: nothing was retried")
		}
		for _, c := range badCalls {
			if len(c.Messages) == 3 && !bytes.Equal(bytes.Join(c.Messages, nil), want) {
				t.Fatalf("the failing backend read %q", c.Messages)
			}
		}
		for _, c := range goodCalls {
			if c.Method == "/test.Svc/Collect" && len(c.Messages) != 3 {
				t.Fatalf("a retried client-streaming call reached the good backend with %d messages, want 3", len(c.Messages))
			}
		}
		waitRouteMetric(t, h, "healthgate_route_retries_total", float64(len(badCalls)))
		waitRouteMetric(t, h, "healthgate_route_attempts_total", float64(n+len(badCalls)))
		t.Logf("%s: %d of %d calls went to the failing backend first and were retried on the other", e.name, len(badCalls), n)
	})
}

// TestB70_NotRetriedAfterResponseHeaders: once the backend's response
// headers went to the client, its status goes to the client too, even one
// the route retries; the same status as a trailers-only answer is retried.
func TestB70_NotRetriedAfterResponseHeaders(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		a, b := testutil.StartBackend(t), testutil.StartBackend(t)
		h := e.start(t, retryConfig(fastRetry(), a.Addr, b.Addr))
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		for _, tc := range []struct {
			name        string
			headerFirst bool
			attempts    int
		}{{"headers sent", true, 1}, {"trailers-only", false, 3}} {
			kv := []string{"x-status-code", strconv.Itoa(int(codes.Unavailable)), "x-status-message", "no"}
			if tc.headerFirst {
				kv = append(kv, "x-header-first", "1")
			}
			ctx := metadata.AppendToOutgoingContext(ctxT(t), kv...)
			_, err := testutil.Unary(ctx, cc, "/test.Svc/EndEarly", []byte("m"))
			if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "no" {
				t.Fatalf("%s: %v, want the backend's UNAVAILABLE", tc.name, err)
			}
			if got := len(testCalls(a)) + len(testCalls(b)); got != tc.attempts {
				t.Fatalf("%s: the backends saw %d attempts, want %d", tc.name, got, tc.attempts)
			}
		}
	})
}

// TestB70_NotRetriedPastBufferBytes: a client-streaming call whose request
// grew past buffer_bytes is not retried; one within it is, each attempt
// with every message.
func TestB70_NotRetriedPastBufferBytes(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		a, b := testutil.StartBackend(t), testutil.StartBackend(t)
		r := fastRetry()
		r.BufferBytes = 1024
		h := e.start(t, retryConfig(r, a.Addr, b.Addr))
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		for _, tc := range []struct {
			name     string
			size     int
			attempts int
		}{{"3 x 1000 bytes", 1000, 1}, {"3 x 200 bytes", 200, 3}} {
			ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-status-code", strconv.Itoa(int(codes.Unavailable)))
			m := bytes.Repeat([]byte("y"), tc.size)
			_, err := collect(ctx, cc, "/test.Svc/Sink", [][]byte{m, m, m})
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("%s: %v, want the backend's UNAVAILABLE", tc.name, err)
			}
			calls := append(testCalls(a), testCalls(b)...)
			if len(calls) != tc.attempts {
				t.Fatalf("%s: the backends saw %d attempts, want %d", tc.name, len(calls), tc.attempts)
			}
			for _, c := range calls {
				if len(c.Messages) != 3 {
					t.Fatalf("%s: an attempt reached a backend with %d messages, want 3", tc.name, len(c.Messages))
				}
			}
		}
	})
}

// TestB70_NotRetriedPastDeadline: a retry whose wait (here the backend's
// pushback) would end past the client's deadline does not happen: the
// client gets the backend's status at once, not DEADLINE_EXCEEDED later.
func TestB70_NotRetriedPastDeadline(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		bad, good := testutil.StartBackend(t), testutil.StartBackend(t)
		bad.FailWith.Store(int32(codes.Unavailable))
		tr := metadata.Pairs("grpc-retry-pushback-ms", "2000")
		bad.FailTrailer.Store(&tr)
		h := e.start(t, retryConfig(fastRetry(), bad.Addr, good.Addr))
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		for i, hit := 0, 0; hit < 2; i++ {
			if i == 50 {
				t.Fatalf("50 calls and only %d went to the failing backend", hit)
			}
			ctx, cancel := context.WithTimeout(ctxT(t), 500*time.Millisecond)
			start := time.Now()
			_, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x"))
			took := time.Since(start)
			cancel()
			badN, goodN := len(testCalls(bad)), len(testCalls(good))
			if badN == 0 {
				if err != nil || goodN != 1 {
					t.Fatalf("call %d, answered by the good backend: %v", i, err)
				}
				continue
			}
			hit++
			if status.Code(err) != codes.Unavailable || took > 400*time.Millisecond || goodN != 0 {
				t.Fatalf("call %d: %v after %v, good backend saw %d; want the failing backend's UNAVAILABLE at once", i, err, took, goodN)
			}
		}
	})
}

// TestB70_PushbackHonoured: a backend's grpc-retry-pushback-ms sets the
// wait before the retry; a negative or malformed one means no retry, and
// the client gets the status with the pushback, for its own retry policy
// to read.
func TestB70_PushbackHonoured(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		bad, good := testutil.StartBackend(t), testutil.StartBackend(t)
		bad.FailWith.Store(int32(codes.Unavailable))
		h := e.start(t, retryConfig(fastRetry(), bad.Addr, good.Addr))
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		for _, tc := range []struct {
			pushback string
			retried  bool
		}{{"300", true}, {"-1", false}, {"soon", false}} {
			tr := metadata.Pairs("grpc-retry-pushback-ms", tc.pushback)
			bad.FailTrailer.Store(&tr)
			hit := 0
			for i := 0; hit < 2; i++ {
				if i == 50 {
					t.Fatalf("pushback %q: 50 calls and only %d went to the failing backend", tc.pushback, hit)
				}
				var trailer metadata.MD
				start := time.Now()
				_, err := testutil.Unary(ctxT(t), cc, "/test.Svc/Echo", []byte("x"), grpc.Trailer(&trailer))
				took := time.Since(start)
				badN, goodN := len(testCalls(bad)), len(testCalls(good))
				if badN == 0 {
					if err != nil || goodN != 1 {
						t.Fatalf("pushback %q: a call answered by the good backend: %v", tc.pushback, err)
					}
					continue
				}
				hit++
				switch {
				case tc.retried && (err != nil || goodN != 1 || took < 300*time.Millisecond):
					t.Fatalf("pushback %q: %v after %v, good backend saw %d; want success on the good backend after the pushback", tc.pushback, err, took, goodN)
				case !tc.retried && (status.Code(err) != codes.Unavailable || goodN != 0):
					t.Fatalf("pushback %q: %v, good backend saw %d; want the backend's UNAVAILABLE, not retried", tc.pushback, err, goodN)
				case !tc.retried && len(trailer.Get("grpc-retry-pushback-ms")) == 0:
					t.Fatalf("pushback %q: the client's trailer %v lacks the pushback", tc.pushback, trailer)
				}
			}
		}
	})
}

// TestB70_CodesNotListedAreNotRetried: a status the route's policy does not
// list reaches the client as the backend sent it, from the first backend.
func TestB70_CodesNotListedAreNotRetried(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		bad, good := testutil.StartBackend(t), testutil.StartBackend(t)
		bad.FailWith.Store(int32(codes.Internal))
		h := e.start(t, retryConfig(fastRetry(), bad.Addr, good.Addr))
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		failed := 0
		for i := 0; failed < 3; i++ {
			if i == 50 {
				t.Fatalf("50 calls and only %d went to the failing backend", failed)
			}
			_, err := testutil.Unary(ctxT(t), cc, "/test.Svc/Echo", []byte("x"))
			badN, goodN := len(testCalls(bad)), len(testCalls(good))
			if err == nil {
				if badN != 0 || goodN != 1 {
					t.Fatalf("call %d succeeded after %d attempts on the failing backend", i, badN)
				}
				continue
			}
			failed++
			if status.Code(err) != codes.Internal || badN != 1 || goodN != 0 {
				t.Fatalf("call %d: %v; failing backend saw %d, good %d; want INTERNAL from the first backend alone", i, err, badN, goodN)
			}
		}
		waitRouteMetric(t, h, "healthgate_route_attempts_total", 1, func(v float64) bool { return v > 0 })
		if got := routeMetric(t, h, "healthgate_route_retries_total"); got != 0 {
			t.Fatalf("healthgate_route_retries_total %v, want 0", got)
		}
	})
}

// TestB70_ResetBeforeAnswerIsRetried: a backend that reads the call and
// resets its stream without answering counts as UNAVAILABLE, retried on
// the other backend with every request message.
func TestB70_ResetBeforeAnswerIsRetried(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		reset, good := testutil.StartResettingBackend(t, http2.ErrCodeInternal), testutil.StartBackend(t)
		h := e.start(t, retryConfig(fastRetry(), reset.Addr, good.Addr))
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		parts := [][]byte{[]byte("a"), bytes.Repeat([]byte("b"), 500)}
		for i := 0; i < 6 || reset.Refused() == 0; i++ {
			if i == 50 {
				t.Fatal("50 calls and not one went to the resetting backend")
			}
			got, err := collect(ctxT(t), cc, "/test.Svc/Collect", parts)
			if err != nil || !bytes.Equal(got, bytes.Join(parts, nil)) {
				t.Fatalf("call %d (%d reset so far): %d bytes, %v", i, reset.Refused(), len(got), err)
			}
		}
	})
}

// TestB70_PerTryTimeout: an attempt that has not answered within
// per_try_timeout is reset; it is retried when the route lists
// DEADLINE_EXCEEDED, else the client gets DEADLINE_EXCEEDED then.
func TestB70_PerTryTimeout(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		slow, good := testutil.StartBackend(t), testutil.StartBackend(t)
		slow.Hold.Store(int64(10 * time.Second))
		for _, tc := range []struct {
			codes   []string
			retried bool
		}{{[]string{"UNAVAILABLE", "DEADLINE_EXCEEDED"}, true}, {[]string{"UNAVAILABLE"}, false}} {
			r := fastRetry()
			r.Codes, r.PerTryTimeout = tc.codes, 100*time.Millisecond
			h := e.start(t, retryConfig(r, slow.Addr, good.Addr))
			h.routable(t, testutil.TestService, 2)
			cc := testutil.Dial(t, h.addr)
			hit := false
			for i := 0; !hit; i++ {
				if i == 50 {
					t.Fatalf("%v: 50 calls and not one went to the slow backend", tc.codes)
				}
				start := time.Now()
				_, err := testutil.Unary(ctxT(t), cc, "/test.Svc/Echo", []byte("x"))
				took := time.Since(start)
				goodN := len(testCalls(good))
				select {
				case <-slow.Started():
				default:
					if err != nil || goodN != 1 {
						t.Fatalf("%v: a call answered by the good backend alone: %v", tc.codes, err)
					}
					continue
				}
				hit = true
				if took < 100*time.Millisecond || took > 5*time.Second {
					t.Fatalf("%v: the call took %v, want the per-try timeout and a little", tc.codes, took)
				}
				if tc.retried && (err != nil || goodN != 1) {
					t.Fatalf("%v: %v, good backend saw %d; want success there", tc.codes, err, goodN)
				}
				if !tc.retried && (status.Code(err) != codes.DeadlineExceeded || goodN != 0) {
					t.Fatalf("%v: %v, good backend saw %d; want DEADLINE_EXCEEDED, not retried", tc.codes, err, goodN)
				}
			}
			h.stop()
			<-h.done
		}
	})
}

// TestB70_RetryStormStaysWithinBudget: every backend fails every call with
// UNAVAILABLE; with max_attempts 3 the calls would triple the load, but
// the route's budget holds the retries to its ratio of the calls plus its
// floor per second, and the exhaustion shows in the metrics.
func TestB70_RetryStormStaysWithinBudget(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		a, b := testutil.StartBackend(t), testutil.StartBackend(t)
		a.FailWith.Store(int32(codes.Unavailable))
		b.FailWith.Store(int32(codes.Unavailable))
		ratio, perSecond := 0.2, 10
		r := fastRetry()
		r.Budget = proxycfg.RetryBudget{Ratio: &ratio, MinPerSecond: &perSecond}
		h := e.start(t, retryConfig(r, a.Addr, b.Addr))
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		const n, workers = 600, 6
		var next, failed atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range workers {
			wg.Go(func() {
				for next.Add(1) <= n {
					if _, err := testutil.Unary(ctxT(t), cc, "/test.Svc/Echo", []byte("x")); status.Code(err) == codes.Unavailable {
						failed.Add(1)
					}
				}
			})
		}
		wg.Wait()
		secs := time.Since(start).Seconds()
		attempts := len(testCalls(a)) + len(testCalls(b))
		// The floor is per started second; the margin is for the
		// budget's counts racing with calls in flight.
		allowance := ratio*n + float64(perSecond)*(math.Ceil(secs)+1)
		limit := int(n + allowance + workers + 0.05*n)
		t.Logf("%s: %d calls in %.2fs made %d backend attempts (%d retries; %d without a budget; limit %d); budget exhausted %v times",
			e.name, n, secs, attempts, attempts-n, 3*n, limit, routeMetric(t, h, "healthgate_route_retry_budget_exhausted_total"))
		if failed.Load() != n {
			t.Fatalf("%d calls failed with UNAVAILABLE, want all %d", failed.Load(), n)
		}
		if attempts < n || attempts > limit {
			t.Fatalf("%d backend attempts for %d calls, want at most %d (the calls, %.0f%% of them, %d per second)", attempts, n, limit, ratio*100, perSecond)
		}
		waitRouteMetric(t, h, "healthgate_route_retries_total", float64(attempts-n))
		waitRouteMetric(t, h, "healthgate_route_retry_budget_exhausted_total", 1, func(v float64) bool { return v > 0 })
	})
}

// TestB70_BackoffWaitEndsWithTheCall: during a retry's wait the call is
// still the client's: a request that outgrows buffer_bytes meanwhile ends
// it with the answer being retried, and a cancel ends it at once; the other
// backend sees neither.
func TestB70_BackoffWaitEndsWithTheCall(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		bad, good := testutil.StartBackend(t), testutil.StartBackend(t)
		bad.FailWith.Store(int32(codes.Unavailable))
		tr := metadata.Pairs("grpc-retry-pushback-ms", "1000")
		bad.FailTrailer.Store(&tr)
		r := fastRetry()
		r.BufferBytes = 1024
		h := e.start(t, retryConfig(r, bad.Addr, good.Addr))
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		for _, cancelIt := range []bool{false, true} {
			for i, hit := 0, false; !hit; i++ {
				if i == 50 {
					t.Fatalf("cancel %v: 50 calls and not one went to the failing backend", cancelIt)
				}
				ctx, cancel := context.WithCancel(ctxT(t))
				cs, err := testutil.RawStream(ctx, cc, "/test.Svc/Collect")
				if err != nil {
					t.Fatal(err)
				}
				first := []byte("first")
				if err := cs.SendMsg(&first); err != nil {
					t.Fatal(err)
				}
				var started bool
				select {
				case <-bad.Started():
					started = true
				case <-good.Started():
				case <-time.After(5 * time.Second):
					t.Fatal("no backend started the call within 5s")
				}
				if started {
					hit = true
					if cancelIt {
						cancel()
					} else {
						big := bytes.Repeat([]byte("z"), 3000)
						_ = cs.SendMsg(&big)
					}
				}
				cs.CloseSend()
				start := time.Now()
				var got []byte
				err = cs.RecvMsg(&got)
				if err == nil {
					// The end of the call: the backend's record is in.
					if err = cs.RecvMsg(&got); errors.Is(err, io.EOF) {
						err = nil
					}
				}
				took := time.Since(start)
				cancel()
				goodN := len(testCalls(good))
				testCalls(bad)
				switch {
				case !started:
					if err != nil || goodN != 1 {
						t.Fatalf("a call answered by the good backend alone: %v", err)
					}
				case cancelIt && (status.Code(err) != codes.Canceled || took > 500*time.Millisecond || goodN != 0):
					t.Fatalf("cancelled during the wait: %v after %v, good backend saw %d; want CANCELED at once", err, took, goodN)
				case !cancelIt && (status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "testutil backend: failing on purpose" || goodN != 0):
					t.Fatalf("request outgrew the buffer: %v, good backend saw %d; want the failing backend's answer", err, goodN)
				}
			}
		}
	})
}

// TestB70_RetryPolicyReloads: a route's retry policy changes with a reload,
// for the calls that start after it.
func TestB70_RetryPolicyReloads(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		bad, good := testutil.StartBackend(t), testutil.StartBackend(t)
		bad.FailWith.Store(int32(codes.Unavailable))
		cfg := e.config(retryConfig(proxycfg.Retry{}, bad.Addr, good.Addr))
		h := e.start(t, cfg)
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		calls := func() (failed int) {
			for range 10 {
				if _, err := testutil.Unary(ctxT(t), cc, "/test.Svc/Echo", []byte("x")); err != nil {
					failed++
				}
			}
			return failed
		}
		if n := calls(); n == 0 {
			t.Fatal("without retries, no call failed on the failing backend")
		}
		if _, err := h.g.Reload(e.config(retryConfig(fastRetry(), bad.Addr, good.Addr))); err != nil {
			t.Fatal(err)
		}
		if n := calls(); n != 0 {
			t.Fatalf("with retries reloaded, %d of 10 calls failed", n)
		}
		if _, err := h.g.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		if n := calls(); n == 0 {
			t.Fatal("with retries reloaded away, no call failed")
		}
	})
}
