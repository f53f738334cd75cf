package gateway_test

// B71: a route's timeouts, through each engine to real backends.

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy/proxycfg"
)

// routeTo is a config with one route, test.Svc, to the backends at addrs.
func routeTo(addrs ...string) config.Config {
	return config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: addrs}}}
}

// TestB71_TimeoutAndMaxTimeoutReachTheBackend: a call without a deadline
// gets the route's timeout, a client deadline longer than max_timeout is
// capped and the backend is sent the capped one, a shorter one passes
// unchanged, and a capped call that runs out ends DEADLINE_EXCEEDED at the
// cap, long before the client's own deadline.
func TestB71_TimeoutAndMaxTimeoutReachTheBackend(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		cfg := routeTo(b.Addr)
		cfg.Routes[0].Traffic = proxycfg.RoutePolicy{Timeout: 3 * time.Second, MaxTimeout: 5 * time.Second}
		h := e.start(t, cfg)
		h.routable(t, testutil.TestService, 1)
		cc := testutil.Dial(t, h.addr)

		// within checks that the backend's deadline is d after the call
		// began, give or take the call's own time.
		within := func(what string, start time.Time, took time.Duration, c testutil.Call, d time.Duration) {
			t.Helper()
			if c.Deadline.IsZero() {
				t.Fatalf("%s: the backend got no deadline, want %s", what, d)
			}
			if c.Deadline.Before(start.Add(d-time.Second)) || c.Deadline.After(start.Add(d+took)) {
				t.Fatalf("%s: the backend's deadline is %s after the call began, want %s", what, c.Deadline.Sub(start), d)
			}
		}
		cases := []struct {
			name   string
			client time.Duration // 0: no deadline
			want   time.Duration
		}{
			{"no deadline gets timeout", 0, 3 * time.Second},
			{"longer deadline capped", time.Minute, 5 * time.Second},
			{"shorter deadline kept", 2 * time.Second, 2 * time.Second},
		}
		for _, tc := range cases {
			ctx := context.Background()
			if tc.client > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.client)
				defer cancel()
			}
			start := time.Now()
			if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x")); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			within(tc.name, start, time.Since(start), b.NextCall(t), tc.want)
		}

		// A cap that runs out: DEADLINE_EXCEEDED at the cap.
		cfg.Routes[0].Traffic = proxycfg.RoutePolicy{MaxTimeout: 300 * time.Millisecond}
		if _, err := h.g.Reload(e.config(cfg)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		start := time.Now()
		_, err := testutil.Unary(ctx, cc, "/test.Svc/Block", nil)
		took := time.Since(start)
		const capMsg = "healthgate: deadline exceeded: capped at max_timeout 300ms of route test.Svc"
		if st := status.Convert(err); st.Code() != codes.DeadlineExceeded || st.Message() != capMsg {
			t.Fatalf("a call over max_timeout got %v, want DEADLINE_EXCEEDED %q", err, capMsg)
		}
		if took < 300*time.Millisecond || took > 10*time.Second {
			t.Fatalf("a call capped at 300ms ended after %s", took)
		}
		c := b.NextCall(t)
		within("capped and expired", start, took, c, 300*time.Millisecond)
		if c.Err == nil {
			t.Fatal("the backend's call did not end with the capped deadline")
		}
	})
}

// TestB71_IdleStreamEndedActiveStreamNot: on a route with idle_timeout, a
// stream that moves nothing is ended with DEADLINE_EXCEEDED and a message
// naming the route and the timeout, while a stream on the same route that
// keeps moving messages runs on past several idle periods and ends OK.
func TestB71_IdleStreamEndedActiveStreamNot(t *testing.T) {
	// Long enough that a busy machine does not stall the active stream
	// that long between two of its messages.
	const idle = 800 * time.Millisecond
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		cfg := routeTo(b.Addr)
		cfg.Routes[0].Traffic = proxycfg.RoutePolicy{IdleTimeout: idle}
		h := e.start(t, cfg)
		h.routable(t, testutil.TestService, 1)
		cc := testutil.Dial(t, h.addr)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()

		active, err := testutil.RawStream(ctx, cc, "/test.Svc/Echo")
		if err != nil {
			t.Fatal(err)
		}
		quiet, err := testutil.RawStream(ctx, cc, "/test.Svc/Echo")
		if err != nil {
			t.Fatal(err)
		}
		quietStart := time.Now()
		quietDone := make(chan error, 1)
		go func() {
			var m []byte
			quietDone <- quiet.RecvMsg(&m)
		}()

		// The active stream echoes a message every idle/8 until the quiet
		// one has ended and two more idle periods have passed.
		tick := time.NewTicker(idle / 8)
		defer tick.Stop()
		var quietErr error
		var quietTook time.Duration
		var until <-chan time.Time
		sent := 0
	loop:
		for {
			select {
			case quietErr = <-quietDone:
				quietTook = time.Since(quietStart)
				until = time.After(2 * idle)
				quietDone = nil
			case <-until:
				break loop
			case <-tick.C:
				if err := testutil.Echo(active, "ping"); err != nil {
					if errors.Is(err, io.EOF) {
						var m []byte
						err = active.RecvMsg(&m)
					}
					t.Fatalf("the active stream failed after %d echoes: %v", sent, err)
				}
				sent++
			case <-ctx.Done():
				t.Fatal("the quiet stream was not ended within 30s")
			}
		}
		st := status.Convert(quietErr)
		want := "healthgate: stream idle for 800ms on route test.Svc"
		if st.Code() != codes.DeadlineExceeded || st.Message() != want {
			t.Fatalf("the quiet stream ended with %v, want DEADLINE_EXCEEDED %q", quietErr, want)
		}
		if quietTook < idle {
			t.Fatalf("the quiet stream ended after %s, before its idle timeout of %s", quietTook, idle)
		}
		if err := active.CloseSend(); err != nil {
			t.Fatal(err)
		}
		var m []byte
		if err := active.RecvMsg(&m); !errors.Is(err, io.EOF) {
			t.Fatalf("the active stream ended with %v after %d echoes, want OK", err, sent)
		}
		if sent < 16 {
			t.Fatalf("the active stream moved only %d messages", sent)
		}
		// The backend's side of the quiet stream was cancelled too.
		cancelled := 0
		for range 2 {
			if c := b.NextCall(t); len(c.Messages) == 0 && c.Err != nil {
				cancelled++
			}
		}
		if cancelled != 1 {
			t.Fatalf("%d backend calls without messages ended cancelled, want the quiet stream's", cancelled)
		}
	})
}
