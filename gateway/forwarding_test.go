package gateway_test

// The forwarding contract (B01-B09, B12, B17) through a whole gateway, run
// against each forwarding engine: through health checking and the balancer
// to real backend connections, which is what an engine that relays frames
// on those connections needs. These are the contract's only copy; proxy's
// tests keep what only a fake picker sees (what each upstream's Done and
// each pick are told).

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy/proxycfg"
)

// fwd is a gateway with e in front of one real backend.
type fwd struct {
	backend *testutil.Backend
	h       *harness
	direct  *grpc.ClientConn // client -> backend, no gateway
	gw      *grpc.ClientConn // client -> gateway -> backend
}

// forward starts a backend with backendOpts and a gateway with e and
// settings routing test.Svc to it, and waits until it is routable.
// clientOpts configure both client connections.
func (e *engine) forward(t *testing.T, settings proxycfg.Settings, backendOpts []grpc.ServerOption, clientOpts ...grpc.DialOption) *fwd {
	t.Helper()
	f := &fwd{backend: testutil.StartBackend(t, backendOpts...)}
	f.h = e.start(t, config.Config{
		Routes: []config.Route{{Service: testutil.TestService, Backends: []string{f.backend.Addr}}},
		Proxy:  settings,
	})
	f.h.routable(t, testutil.TestService, 1)
	f.direct = testutil.Dial(t, f.backend.Addr, clientOpts...)
	f.gw = testutil.Dial(t, f.h.addr, clientOpts...)
	return f
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestB01_AllFourKindsThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		f := e.forward(t, proxycfg.Settings{}, nil)
		ctx := ctxT(t)
		max := make([]byte, proxycfg.DefaultMaxMessageBytes)
		for i := range max {
			max[i] = byte(i)
		}

		t.Run("unary", func(t *testing.T) {
			for _, req := range [][]byte{{}, []byte("x"), max} {
				got, err := testutil.Unary(ctx, f.gw, "/test.Svc/Echo", req)
				if err != nil {
					t.Fatalf("unary of %d bytes: %v", len(req), err)
				}
				if !bytes.Equal(got, req) {
					t.Fatalf("unary of %d bytes: got %d bytes back, not the same", len(req), len(got))
				}
			}
		})
		t.Run("client streaming", func(t *testing.T) {
			f.backend.Drain()
			cs, err := testutil.RawStream(ctx, f.gw, "/test.Svc/Collect")
			if err != nil {
				t.Fatal(err)
			}
			parts := [][]byte{[]byte("a"), {}, []byte("bc")}
			for _, p := range parts {
				if err := cs.SendMsg(&p); err != nil {
					t.Fatal(err)
				}
			}
			cs.CloseSend()
			var got []byte
			if err := cs.RecvMsg(&got); err != nil {
				t.Fatal(err)
			}
			if string(got) != "abc" {
				t.Fatalf("got %q, want %q", got, "abc")
			}
			if err := cs.RecvMsg(&got); !errors.Is(err, io.EOF) {
				t.Fatalf("after the response: got %v, want EOF", err)
			}
			if c := f.backend.NextCall(t); len(c.Messages) != 3 || len(c.Messages[1]) != 0 {
				t.Fatalf("backend got %d messages (%q), want 3 with an empty one", len(c.Messages), c.Messages)
			}
		})
		t.Run("server streaming", func(t *testing.T) {
			cs, err := testutil.RawStream(metadata.AppendToOutgoingContext(ctx, "x-repeat", "5"), f.gw, "/test.Svc/Repeat")
			if err != nil {
				t.Fatal(err)
			}
			req := []byte("r")
			cs.SendMsg(&req)
			cs.CloseSend()
			n := 0
			for {
				var m []byte
				err := cs.RecvMsg(&m)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if string(m) != "r" {
					t.Fatalf("message %d: got %q", n, m)
				}
				n++
			}
			if n != 5 {
				t.Fatalf("got %d messages, want 5", n)
			}
		})
		t.Run("bidi", func(t *testing.T) {
			cs, err := testutil.RawStream(ctx, f.gw, "/test.Svc/Echo")
			if err != nil {
				t.Fatal(err)
			}
			// Lock-step: each reply must come back before the next
			// request is sent, so the gateway cannot be batching either
			// direction.
			for i, m := range [][]byte{[]byte("one"), {}, max[:1<<20]} {
				if err := cs.SendMsg(&m); err != nil {
					t.Fatal(err)
				}
				var got []byte
				if err := cs.RecvMsg(&got); err != nil {
					t.Fatalf("reply %d: %v", i, err)
				}
				if !bytes.Equal(got, m) {
					t.Fatalf("reply %d: %d bytes, not the %d sent", i, len(got), len(m))
				}
			}
			cs.CloseSend()
			var got []byte
			if err := cs.RecvMsg(&got); !errors.Is(err, io.EOF) {
				t.Fatalf("after half-close: got %v, want EOF", err)
			}
		})
	})
}

func TestB02_RawBytesAndContentSubtypeThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		f := e.forward(t, proxycfg.Settings{}, nil)
		ctx := ctxT(t)
		// Not valid protobuf: field 0 with a reserved wire type.
		payload := []byte{0xff, 0xff, 0xff, 0x07, 0x00, 'n', 'o', 't', '-', 'p', 'b'}
		got, err := testutil.Unary(ctx, f.gw, "/test.Svc/Echo", payload, grpc.ForceCodecV2(testutil.RawCodec{Subtype: "xyz"}))
		if err != nil {
			t.Fatal(err)
		}
		c := f.backend.NextCall(t)
		if len(c.Messages) != 1 || !bytes.Equal(c.Messages[0], payload) {
			t.Fatalf("backend got %x, want %x", c.Messages, payload)
		}
		if c.ContentSubtype != "xyz" {
			t.Fatalf("backend saw content subtype %q, want xyz", c.ContentSubtype)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("client got %x, want %x", got, payload)
		}
		// Without a subtype the call stays plain application/grpc.
		if _, err := testutil.Unary(ctx, f.gw, "/test.Svc/Echo", payload); err != nil {
			t.Fatal(err)
		}
		if c := f.backend.NextCall(t); c.ContentSubtype != "" {
			t.Fatalf("backend saw content subtype %q, want none", c.ContentSubtype)
		}
	})
}

func TestB03_HeadersBeforeMessagesAndOnErrorsThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		f := e.forward(t, proxycfg.Settings{}, nil)
		ctx := ctxT(t)

		t.Run("before the first message", func(t *testing.T) {
			// The backend sends its header, then waits for the cancel:
			// the header must arrive while no message exists yet.
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			md := metadata.Pairs("x-set-header", "x-early=yes", "x-header-first", "1")
			cs, err := testutil.RawStream(metadata.NewOutgoingContext(ctx, md), f.gw, "/test.Svc/Block")
			if err != nil {
				t.Fatal(err)
			}
			h, err := cs.Header()
			if err != nil {
				t.Fatal(err)
			}
			if got := h.Get("x-early"); len(got) != 1 || got[0] != "yes" {
				t.Fatalf("header x-early = %q, want [yes]", got)
			}
			cancel()
			f.backend.NextCall(t)
		})

		for _, tc := range []struct {
			name   string
			method string
			md     metadata.MD
		}{
			{"error after header, no message", "/test.Svc/EndEarly", metadata.Pairs("x-set-header", "x-h=1", "x-header-first", "1", "x-status-code", "9", "x-status-message", "nope")},
			{"error, header never sent (trailers-only)", "/test.Svc/EndEarly", metadata.Pairs("x-set-header", "x-h=1", "x-status-code", "9")},
			{"ok with zero messages", "/test.Svc/Repeat", metadata.Pairs("x-set-header", "x-h=1", "x-repeat", "0")},
			{"ok with zero messages, header first", "/test.Svc/Repeat", metadata.Pairs("x-set-header", "x-h=1", "x-header-first", "1", "x-repeat", "0")},
		} {
			t.Run(tc.name, func(t *testing.T) {
				want := testutil.Observe(ctx, t, f.direct, tc.method, tc.md, 1)
				got := testutil.Observe(ctx, t, f.gw, tc.method, tc.md, 1)
				if !testutil.EqualMD(got.Header, want.Header) {
					t.Errorf("header: got %v, want %v (direct)", got.Header, want.Header)
				}
				if got.Code != want.Code || got.N != want.N {
					t.Errorf("got %v after %d messages, want %v after %d", got.Code, got.N, want.Code, want.N)
				}
			})
		}
	})
}

// A backend's status-only answer stays status-only through the gateway, so
// that a client's retry policy (which retries only those) works as it does
// against the backend directly.
func TestB03_TrailersOnlyStaysTrailersOnlyThroughGateway(t *testing.T) {
	retry := grpc.WithDefaultServiceConfig(`{"methodConfig":[{"name":[{"service":"test.Svc"}],
		"retryPolicy":{"maxAttempts":4,"initialBackoff":"0.001s","maxBackoff":"0.01s","backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]}`)
	forEachEngine(t, func(t *testing.T, e *engine) {
		f := e.forward(t, proxycfg.Settings{}, nil, retry)
		f.backend.FailWith.Store(int32(codes.Unavailable))
		for _, path := range []struct {
			name string
			cc   *grpc.ClientConn
		}{{"direct", f.direct}, {"gateway", f.gw}} {
			f.backend.Drain()
			if _, err := testutil.Unary(ctxT(t), path.cc, "/test.Svc/Echo", []byte("x")); err == nil {
				t.Fatalf("%s: the call succeeded against a backend that fails every call", path.name)
			}
			// Each attempt's record is sent before its status, so all
			// are in.
			if n := len(testCalls(f.backend)); n != 4 {
				t.Fatalf("%s: the backend saw %d attempts, want the 4 of the retry policy", path.name, n)
			}
		}
	})
}

func TestB04_TrailersAndStatusExactThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		f := e.forward(t, proxycfg.Settings{}, nil)
		ctx := ctxT(t)
		md := metadata.Pairs(
			"x-set-trailer", "x-t=trailer value",
			"x-status-code", "3",
			"x-status-message", "SPECIAL",
			"x-status-details", "1",
		)
		want := testutil.Observe(ctx, t, f.direct, "/test.Svc/Echo", md, 2)
		got := testutil.Observe(ctx, t, f.gw, "/test.Svc/Echo", md, 2)
		if want.Code != codes.InvalidArgument || want.Details == "" {
			t.Fatalf("direct call: %v with details %q; the test backend is not doing its part", want.Code, want.Details)
		}
		if got.Code != want.Code || got.Msg != want.Msg {
			t.Errorf("status: got %v %q, want %v %q", got.Code, got.Msg, want.Code, want.Msg)
		}
		if got.Details != want.Details {
			t.Errorf("grpc-status-details-bin: got %x, want %x", got.Details, want.Details)
		}
		if !testutil.EqualMD(got.Trailer, want.Trailer) {
			t.Errorf("trailer: got %v, want %v", got.Trailer, want.Trailer)
		}
		if got.N != 2 {
			t.Errorf("got %d messages before the status, want 2", got.N)
		}
	})
}

func TestB05_RequestMetadataThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		f := e.forward(t, proxycfg.Settings{}, nil)
		ctx := metadata.AppendToOutgoingContext(ctxT(t),
			"x-custom", "one", "x-custom", "two",
			"x-bin-bin", string([]byte{0, 1, 2}),
			"x-forwarded-for", "192.0.2.7",
		)
		if _, err := testutil.Unary(ctx, f.gw, "/test.Svc/Echo", nil); err != nil {
			t.Fatal(err)
		}
		c := f.backend.NextCall(t)
		if got := c.MD.Get("x-custom"); strings.Join(got, ",") != "one,two" {
			t.Errorf("x-custom = %q, want [one two]", got)
		}
		if got := c.MD.Get("x-bin-bin"); len(got) != 1 || got[0] != string([]byte{0, 1, 2}) {
			t.Errorf("x-bin-bin = %q, want the three bytes", got)
		}
		for _, k := range []string{"grpc-accept-encoding", "user-agent", ":authority", "content-type"} {
			if n := len(c.MD.Get(k)); n > 1 {
				t.Errorf("%s appears %d times: %q", k, n, c.MD.Get(k))
			}
		}
		if got := c.MD.Get("x-forwarded-for"); strings.Join(got, ",") != "127.0.0.1" {
			t.Errorf("x-forwarded-for = %q, want [127.0.0.1]: an untrusted client's own value is replaced (B17)", got)
		}
		if got := c.MD.Get("x-forwarded-host"); len(got) != 1 || got[0] != f.h.addr {
			t.Errorf("x-forwarded-host = %q, want [%s] (the client's :authority)", got, f.h.addr)
		}
		if got := c.MD.Get(":authority"); len(got) == 1 && got[0] != f.backend.Addr {
			t.Errorf(":authority = %q, want the backend's address %s", got, f.backend.Addr)
		}

		// A client may name the identity encoding, which compresses
		// nothing; grpc-go accepts it on every side, so the call must not
		// be lost at the gateway.
		if _, err := testutil.Unary(ctx, f.gw, "/test.Svc/Echo", nil, grpc.UseCompressor("identity")); err != nil {
			t.Errorf("a call with grpc-encoding identity: %v, want it forwarded", err)
		}
	})
}

func TestB06_DeadlinePropagatesThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		t.Run("client deadline", func(t *testing.T) {
			f := e.forward(t, proxycfg.Settings{}, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 7*time.Second)
			defer cancel()
			clientDeadline, _ := ctx.Deadline()
			start := time.Now()
			if _, err := testutil.Unary(ctx, f.gw, "/test.Svc/Echo", nil); err != nil {
				t.Fatal(err)
			}
			// grpc-timeout carries the time left, so each hop's deadline
			// is its arrival time plus that: never later than the
			// client's by more than the time the call spent in transit.
			transit := time.Since(start)
			c := f.backend.NextCall(t)
			if c.Deadline.IsZero() || c.Deadline.After(clientDeadline.Add(transit)) {
				t.Fatalf("backend deadline %v, want one no later than the client's %v (+%v in transit)", c.Deadline, clientDeadline, transit)
			}
		})
		t.Run("no deadline stays none", func(t *testing.T) {
			f := e.forward(t, proxycfg.Settings{}, nil)
			if _, err := testutil.Unary(context.Background(), f.gw, "/test.Svc/Echo", nil); err != nil {
				t.Fatal(err)
			}
			if c := f.backend.NextCall(t); !c.Deadline.IsZero() {
				t.Fatalf("backend got deadline %v for a call without one", c.Deadline)
			}
		})
		t.Run("configured default", func(t *testing.T) {
			f := e.forward(t, proxycfg.Settings{DefaultTimeout: 3 * time.Second}, nil)
			start := time.Now()
			if _, err := testutil.Unary(context.Background(), f.gw, "/test.Svc/Echo", nil); err != nil {
				t.Fatal(err)
			}
			c := f.backend.NextCall(t)
			if c.Deadline.IsZero() || c.Deadline.After(start.Add(3*time.Second+time.Second)) {
				t.Fatalf("backend deadline %v, want about 3s after %v", c.Deadline, start)
			}
		})
	})
}

// handled waits until the gateway has counted n calls to method ending with
// code in healthgate_proxy_handled_total: how a test sees what the gateway
// recorded.
func handled(t *testing.T, h *harness, method string, code codes.Code, n float64) {
	t.Helper()
	admin := adminServer(t, h)
	var got float64
	testutil.WaitFor(t, 10*time.Second, "the gateway to record "+method+" "+code.String(), func() bool {
		ms := series(scrape(t, admin), "healthgate_proxy_handled_total", "grpc_method", method, "grpc_code", code.String())
		got = 0
		for _, m := range ms {
			got += m.GetCounter().GetValue()
		}
		return got == n
	})
}

func TestB07_CancelAndDeadlineCodesThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		f := e.forward(t, proxycfg.Settings{}, nil)
		t.Run("cancel", func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cs, err := testutil.RawStream(ctx, f.gw, "/test.Svc/Block")
			if err != nil {
				t.Fatal(err)
			}
			m := []byte("x")
			cs.SendMsg(&m)
			<-f.backend.Started()
			cancel()
			c := f.backend.NextCall(t)
			if !errors.Is(c.Err, context.Canceled) {
				t.Fatalf("backend call ended with %v, want context.Canceled", c.Err)
			}
			handled(t, f.h, "Block", codes.Canceled, 1)
		})
		t.Run("deadline", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			_, err := testutil.Unary(ctx, f.gw, "/test.Svc/Block", nil)
			if got := status.Code(err); got != codes.DeadlineExceeded {
				t.Fatalf("client got %v, want DeadlineExceeded", err)
			}
			handled(t, f.h, "Block", codes.DeadlineExceeded, 1)
			if c := f.backend.NextCall(t); c.Err == nil {
				t.Fatal("backend call did not see the deadline")
			}
		})
	})
}

func TestB08_HalfCloseAndEarlyEndThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		f := e.forward(t, proxycfg.Settings{}, nil)
		ctx := ctxT(t)
		t.Run("half-close completes client streaming", func(t *testing.T) {
			cs, err := testutil.RawStream(ctx, f.gw, "/test.Svc/Collect")
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{"x", "y"} {
				m := []byte(s)
				cs.SendMsg(&m)
			}
			if err := cs.CloseSend(); err != nil {
				t.Fatal(err)
			}
			var got []byte
			if err := cs.RecvMsg(&got); err != nil || string(got) != "xy" {
				t.Fatalf("got %q, %v; want xy", got, err)
			}
		})
		t.Run("backend ends bidi early", func(t *testing.T) {
			md := metadata.Pairs("x-status-code", "9", "x-status-message", "done early")
			cs, err := testutil.RawStream(metadata.NewOutgoingContext(ctx, md), f.gw, "/test.Svc/EndEarly")
			if err != nil {
				t.Fatal(err)
			}
			m := []byte("x")
			cs.SendMsg(&m)
			// No CloseSend: the client keeps its side open, and still
			// gets the backend's status.
			var got []byte
			err = cs.RecvMsg(&got)
			if st := status.Convert(err); st.Code() != codes.FailedPrecondition || st.Message() != "done early" {
				t.Fatalf("got %v, want FailedPrecondition \"done early\"", err)
			}
		})
	})
}

func TestB09_MessageLimitsThroughGateway(t *testing.T) {
	big := bytes.Repeat([]byte{'z'}, 5<<20)
	bigClient := grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(6 << 20))
	bigBackend := []grpc.ServerOption{grpc.MaxRecvMsgSize(6 << 20)}
	forEachEngine(t, func(t *testing.T, e *engine) {
		t.Run("request over the default limit", func(t *testing.T) {
			f := e.forward(t, proxycfg.Settings{}, nil)
			_, err := testutil.Unary(ctxT(t), f.gw, "/test.Svc/Echo", big)
			if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "larger than max") {
				t.Fatalf("got %v, want ResourceExhausted naming the limit", err)
			}
		})
		t.Run("response over the limit", func(t *testing.T) {
			f := e.forward(t, proxycfg.Settings{MaxRequestBytes: 6 << 20}, bigBackend, bigClient)
			_, err := testutil.Unary(ctxT(t), f.gw, "/test.Svc/Echo", big)
			if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "larger than max") {
				t.Fatalf("got %v, want ResourceExhausted naming the limit", err)
			}
		})
		t.Run("5 MiB when configured", func(t *testing.T) {
			f := e.forward(t, proxycfg.Settings{MaxRequestBytes: 6 << 20, MaxResponseBytes: 6 << 20}, bigBackend, bigClient)
			got, err := testutil.Unary(ctxT(t), f.gw, "/test.Svc/Echo", big)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, big) {
				t.Fatal("5 MiB came back changed")
			}
		})
	})
}

// TestB12_NoLeaksThroughGateway: after completed calls, calls cancelled
// after the backend answered and while it held them unanswered, and calls
// failed by the backend and by the gateway, the goroutines and file
// descriptors of the process (gateway, backend and client) are back to
// where they were.
func TestB12_NoLeaksThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		f := e.forward(t, proxycfg.Settings{}, nil)
		// Warm the connections so that their goroutines are in the
		// baseline.
		if _, err := testutil.Unary(ctxT(t), f.gw, "/test.Svc/Echo", nil); err != nil {
			t.Fatal(err)
		}
		baseG, baseFD := runtime.NumGoroutine(), openFDs(t)

		for i := range 60 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			switch i % 5 {
			case 0: // completed
				if _, err := testutil.Unary(ctx, f.gw, "/test.Svc/Echo", []byte("x")); err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
			case 1: // cancelled mid-stream, once the backend has answered
				cs, err := testutil.RawStream(ctx, f.gw, "/test.Svc/Echo")
				if err != nil {
					t.Fatal(err)
				}
				if err := testutil.Echo(cs, "x"); err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
			case 2: // failed by the backend
				_, err := testutil.Unary(metadata.AppendToOutgoingContext(ctx, "x-status-code", "13"), f.gw, "/test.Svc/Echo", nil)
				if status.Code(err) != codes.Internal {
					t.Fatalf("call %d: %v, want the backend's INTERNAL", i, err)
				}
			case 3: // failed by the gateway
				_, err := testutil.Unary(ctx, f.gw, "/test.Svc/Echo", make([]byte, proxycfg.DefaultMaxMessageBytes+1))
				if status.Code(err) != codes.ResourceExhausted {
					t.Fatalf("call %d: %v, want RESOURCE_EXHAUSTED", i, err)
				}
			case 4: // cancelled while the backend holds it, before any message
				// The backend sends its header first, so that its
				// arrival proves the stream open at both ends when the
				// cancel comes.
				cs, err := testutil.RawStream(metadata.AppendToOutgoingContext(ctx, "x-header-first", "1"), f.gw, "/test.Svc/Block")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := cs.Header(); err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
			}
			cancel()
		}
		testutil.WaitFor(t, 10*time.Second, "goroutines and fds back to baseline", func() bool {
			return runtime.NumGoroutine() <= baseG && openFDs(t) <= baseFD
		})
	})
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestB17_ForwardedHeadersReplacedUnlessTrustedThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		for _, tc := range []struct {
			name            string
			trusted         []string
			wantFor         string
			wantHostFromCli bool
		}{
			{"stranger", nil, "127.0.0.1", false},
			{"other network trusted", []string{"10.0.0.0/8"}, "127.0.0.1", false},
			{"trusted proxy", []string{"127.0.0.0/8"}, "192.0.2.7,198.51.100.1,127.0.0.1", true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				f := e.forward(t, proxycfg.Settings{TrustedProxies: tc.trusted}, nil)
				ctx := metadata.AppendToOutgoingContext(ctxT(t),
					"x-forwarded-for", "192.0.2.7", "x-forwarded-for", "198.51.100.1",
					"x-forwarded-host", "spoofed.example")
				if _, err := testutil.Unary(ctx, f.gw, "/test.Svc/Echo", nil); err != nil {
					t.Fatal(err)
				}
				c := f.backend.NextCall(t)
				if got := strings.Join(c.MD.Get("x-forwarded-for"), ","); got != tc.wantFor {
					t.Errorf("x-forwarded-for = %q, want %q", got, tc.wantFor)
				}
				wantHost := f.h.addr
				if tc.wantHostFromCli {
					wantHost = "spoofed.example"
				}
				if got := c.MD.Get("x-forwarded-host"); len(got) != 1 || got[0] != wantHost {
					t.Errorf("x-forwarded-host = %q, want [%s]", got, wantHost)
				}
			})
		}
	})
}
