package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy"
)

// The tests of this package are the grpc engine's unit tests: they build it
// with proxy.New in front of a fake picker. An engine that relays frames
// needs backend connections owned by healthcheck, so the forwarding
// contract runs against every engine (HEALTHGATE_ENGINES) through a whole
// gateway instead, with the same assertions: B01-B09, B12 and B17 in
// gateway/forwarding_test.go (TestBnn_...ThroughGateway), B13 in
// gateway/b13_b14_test.go and gateway/b13_refused_test.go.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// upstream sends every call to one real backend connection and reports how
// each call ended.
type upstream struct {
	*grpc.ClientConn
	done chan proxy.Outcome
}

func (u upstream) Addr() string { return u.Target() }

func (u upstream) Done(o proxy.Outcome) {
	select {
	case u.done <- o:
	default:
	}
}

type picker struct {
	up  upstream
	err error
}

func (p *picker) Route(string, proxy.Headers) (proxy.Route, error) {
	return proxy.Route{Name: "test", Backends: p}, nil
}

func (p *picker) Pick([]proxy.Upstream) (proxy.Upstream, error) {
	if p.err != nil {
		return nil, p.err
	}
	return p.up, nil
}

type env struct {
	backend *testutil.Backend
	direct  *grpc.ClientConn // client -> backend, no gateway
	gw      *grpc.ClientConn // client -> gateway -> backend
	gwAddr  string
	done    chan proxy.Outcome
}

// newEnv starts a real backend and a gateway in front of it. backendOpts
// configure the backend server; clientOpts the clients' connections.
func newEnv(t *testing.T, cfg proxy.Config, backendOpts []grpc.ServerOption, clientOpts ...grpc.DialOption) *env {
	t.Helper()
	e := &env{backend: testutil.StartBackend(t, backendOpts...), done: make(chan proxy.Outcome, 1024)}
	p, err := proxy.New(cfg, &picker{up: upstream{testutil.Dial(t, e.backend.Addr), e.done}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.gwAddr = serve(t, grpc.NewServer(p.ServerOptions()...))
	e.direct = testutil.Dial(t, e.backend.Addr, clientOpts...)
	e.gw = testutil.Dial(t, e.gwAddr, clientOpts...)
	return e
}

func serve(t *testing.T, srv *grpc.Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis) //nolint:errcheck // ends with Stop
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestB01_AllFourKindsPassThrough(t *testing.T) {
	e := newEnv(t, proxy.Config{}, nil)
	ctx := ctxT(t)
	max := make([]byte, proxy.DefaultMaxMessageBytes)
	for i := range max {
		max[i] = byte(i)
	}

	t.Run("unary", func(t *testing.T) {
		for _, req := range [][]byte{{}, []byte("x"), max} {
			got, err := testutil.Unary(ctx, e.gw, "/test.Svc/Echo", req)
			if err != nil {
				t.Fatalf("unary of %d bytes: %v", len(req), err)
			}
			if !bytes.Equal(got, req) {
				t.Fatalf("unary of %d bytes: got %d bytes back, not the same", len(req), len(got))
			}
		}
	})
	t.Run("client streaming", func(t *testing.T) {
		e.backend.Drain()
		cs, err := testutil.RawStream(ctx, e.gw, "/test.Svc/Collect")
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
		if c := e.backend.NextCall(t); len(c.Messages) != 3 || len(c.Messages[1]) != 0 {
			t.Fatalf("backend got %d messages (%q), want 3 with an empty one", len(c.Messages), c.Messages)
		}
	})
	t.Run("server streaming", func(t *testing.T) {
		cs, err := testutil.RawStream(metadata.AppendToOutgoingContext(ctx, "x-repeat", "5"), e.gw, "/test.Svc/Repeat")
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
		cs, err := testutil.RawStream(ctx, e.gw, "/test.Svc/Echo")
		if err != nil {
			t.Fatal(err)
		}
		// Lock-step: each reply must come back before the next request is
		// sent, so the proxy cannot be batching either direction.
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
}

func TestB02_RawBytesAndContentSubtype(t *testing.T) {
	e := newEnv(t, proxy.Config{}, nil)
	ctx := ctxT(t)
	// Not valid protobuf: field 0 with a reserved wire type.
	payload := []byte{0xff, 0xff, 0xff, 0x07, 0x00, 'n', 'o', 't', '-', 'p', 'b'}
	got, err := testutil.Unary(ctx, e.gw, "/test.Svc/Echo", payload, grpc.ForceCodecV2(testutil.RawCodec{Subtype: "xyz"}))
	if err != nil {
		t.Fatal(err)
	}
	c := e.backend.NextCall(t)
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
	if _, err := testutil.Unary(ctx, e.gw, "/test.Svc/Echo", payload); err != nil {
		t.Fatal(err)
	}
	if c := e.backend.NextCall(t); c.ContentSubtype != "" {
		t.Fatalf("backend saw content subtype %q, want none", c.ContentSubtype)
	}
}

func TestB03_HeadersBeforeMessagesAndOnErrors(t *testing.T) {
	e := newEnv(t, proxy.Config{}, nil)
	ctx := ctxT(t)

	t.Run("before the first message", func(t *testing.T) {
		// The backend sends its header, then waits for the cancel: the
		// header must arrive while no message exists yet.
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		md := metadata.Pairs("x-set-header", "x-early=yes", "x-header-first", "1")
		cs, err := testutil.RawStream(metadata.NewOutgoingContext(ctx, md), e.gw, "/test.Svc/Block")
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
		e.backend.NextCall(t)
	})

	cases := []struct {
		name   string
		method string
		md     metadata.MD
		send   int
	}{
		{"error after header, no message", "/test.Svc/EndEarly", metadata.Pairs("x-set-header", "x-h=1", "x-header-first", "1", "x-status-code", "9", "x-status-message", "nope"), 1},
		{"error, header never sent (trailers-only)", "/test.Svc/EndEarly", metadata.Pairs("x-set-header", "x-h=1", "x-status-code", "9"), 1},
		{"ok with zero messages", "/test.Svc/Repeat", metadata.Pairs("x-set-header", "x-h=1", "x-repeat", "0"), 1},
		{"ok with zero messages, header first", "/test.Svc/Repeat", metadata.Pairs("x-set-header", "x-h=1", "x-header-first", "1", "x-repeat", "0"), 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := testutil.Observe(ctx, t, e.direct, tc.method, tc.md, tc.send)
			got := testutil.Observe(ctx, t, e.gw, tc.method, tc.md, tc.send)
			if !testutil.EqualMD(got.Header, want.Header) {
				t.Errorf("header: got %v, want %v (direct)", got.Header, want.Header)
			}
			if got.Code != want.Code || got.N != want.N {
				t.Errorf("got %v after %d messages, want %v after %d", got.Code, got.N, want.Code, want.N)
			}
		})
	}
}

func TestB04_TrailersAndStatusExact(t *testing.T) {
	e := newEnv(t, proxy.Config{}, nil)
	ctx := ctxT(t)
	md := metadata.Pairs(
		"x-set-trailer", "x-t=trailer value",
		"x-status-code", "3",
		"x-status-message", "SPECIAL",
		"x-status-details", "1",
	)
	want := testutil.Observe(ctx, t, e.direct, "/test.Svc/Echo", md, 2)
	got := testutil.Observe(ctx, t, e.gw, "/test.Svc/Echo", md, 2)
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
}

func TestB05_RequestMetadata(t *testing.T) {
	e := newEnv(t, proxy.Config{}, nil)
	ctx := metadata.AppendToOutgoingContext(ctxT(t),
		"x-custom", "one", "x-custom", "two",
		"x-bin-bin", string([]byte{0, 1, 2}),
		"x-forwarded-for", "192.0.2.7",
	)
	if _, err := testutil.Unary(ctx, e.gw, "/test.Svc/Echo", nil, grpc.UseCompressor("identity")); err != nil && status.Code(err) != codes.Internal {
		t.Fatal(err)
	}
	if _, err := testutil.Unary(ctx, e.gw, "/test.Svc/Echo", nil); err != nil {
		t.Fatal(err)
	}
	var c testutil.Call
	for c = e.backend.NextCall(t); len(e.backend.Calls()) > 0; c = e.backend.NextCall(t) {
	}
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
	if got := c.MD.Get("x-forwarded-host"); len(got) != 1 || got[0] != e.gwAddr {
		t.Errorf("x-forwarded-host = %q, want [%s] (the client's :authority)", got, e.gwAddr)
	}
	if got := c.MD.Get(":authority"); len(got) == 1 && got[0] != e.backend.Addr {
		t.Errorf(":authority = %q, want the backend's address %s", got, e.backend.Addr)
	}
}

func TestB17_ForwardedHeadersReplacedUnlessTrusted(t *testing.T) {
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
			e := newEnv(t, proxy.Config{Settings: proxy.Settings{TrustedProxies: tc.trusted}}, nil)
			ctx := metadata.AppendToOutgoingContext(ctxT(t),
				"x-forwarded-for", "192.0.2.7", "x-forwarded-for", "198.51.100.1",
				"x-forwarded-host", "spoofed.example")
			if _, err := testutil.Unary(ctx, e.gw, "/test.Svc/Echo", nil); err != nil {
				t.Fatal(err)
			}
			c := e.backend.NextCall(t)
			if got := strings.Join(c.MD.Get("x-forwarded-for"), ","); got != tc.wantFor {
				t.Errorf("x-forwarded-for = %q, want %q", got, tc.wantFor)
			}
			wantHost := e.gwAddr
			if tc.wantHostFromCli {
				wantHost = "spoofed.example"
			}
			if got := c.MD.Get("x-forwarded-host"); len(got) != 1 || got[0] != wantHost {
				t.Errorf("x-forwarded-host = %q, want [%s]", got, wantHost)
			}
		})
	}
}

func TestB06_DeadlinePropagates(t *testing.T) {
	t.Run("client deadline", func(t *testing.T) {
		e := newEnv(t, proxy.Config{}, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 7*time.Second)
		defer cancel()
		clientDeadline, _ := ctx.Deadline()
		start := time.Now()
		if _, err := testutil.Unary(ctx, e.gw, "/test.Svc/Echo", nil); err != nil {
			t.Fatal(err)
		}
		// grpc-timeout carries the time left, so each hop's deadline is its
		// arrival time plus that: never later than the client's by more
		// than the time the call spent in transit.
		transit := time.Since(start)
		c := e.backend.NextCall(t)
		if c.Deadline.IsZero() || c.Deadline.After(clientDeadline.Add(transit)) {
			t.Fatalf("backend deadline %v, want one no later than the client's %v (+%v in transit)", c.Deadline, clientDeadline, transit)
		}
	})
	t.Run("no deadline stays none", func(t *testing.T) {
		e := newEnv(t, proxy.Config{}, nil)
		if _, err := testutil.Unary(context.Background(), e.gw, "/test.Svc/Echo", nil); err != nil {
			t.Fatal(err)
		}
		if c := e.backend.NextCall(t); !c.Deadline.IsZero() {
			t.Fatalf("backend got deadline %v for a call without one", c.Deadline)
		}
	})
	t.Run("configured default", func(t *testing.T) {
		e := newEnv(t, proxy.Config{Settings: proxy.Settings{DefaultTimeout: 3 * time.Second}}, nil)
		start := time.Now()
		if _, err := testutil.Unary(context.Background(), e.gw, "/test.Svc/Echo", nil); err != nil {
			t.Fatal(err)
		}
		c := e.backend.NextCall(t)
		if c.Deadline.IsZero() || c.Deadline.After(start.Add(3*time.Second+time.Second)) {
			t.Fatalf("backend deadline %v, want about 3s after %v", c.Deadline, start)
		}
	})
}

func TestB07_CancelAndDeadlineCodes(t *testing.T) {
	e := newEnv(t, proxy.Config{}, nil)
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cs, err := testutil.RawStream(ctx, e.gw, "/test.Svc/Block")
		if err != nil {
			t.Fatal(err)
		}
		m := []byte("x")
		cs.SendMsg(&m)
		<-e.backend.Started()
		cancel()
		c := e.backend.NextCall(t)
		if !errors.Is(c.Err, context.Canceled) {
			t.Fatalf("backend call ended with %v, want context.Canceled", c.Err)
		}
		if got := waitDone(t, e.done).Code; got != codes.Canceled {
			t.Fatalf("gateway recorded %v, want Canceled", got)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := testutil.Unary(ctx, e.gw, "/test.Svc/Block", nil)
		if got := status.Code(err); got != codes.DeadlineExceeded {
			t.Fatalf("client got %v, want DeadlineExceeded", err)
		}
		if got := waitDone(t, e.done).Code; got != codes.DeadlineExceeded {
			t.Fatalf("gateway recorded %v, want DeadlineExceeded", got)
		}
		if c := e.backend.NextCall(t); c.Err == nil {
			t.Fatal("backend call did not see the deadline")
		}
	})
}

func waitDone(t *testing.T, done chan proxy.Outcome) proxy.Outcome {
	t.Helper()
	select {
	case o := <-done:
		return o
	case <-time.After(10 * time.Second):
		t.Fatal("the call's Done was not reported within 10s")
		return proxy.Outcome{}
	}
}

func TestB08_HalfCloseAndEarlyEnd(t *testing.T) {
	e := newEnv(t, proxy.Config{}, nil)
	ctx := ctxT(t)
	t.Run("half-close completes client streaming", func(t *testing.T) {
		cs, err := testutil.RawStream(ctx, e.gw, "/test.Svc/Collect")
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
		cs, err := testutil.RawStream(metadata.NewOutgoingContext(ctx, md), e.gw, "/test.Svc/EndEarly")
		if err != nil {
			t.Fatal(err)
		}
		m := []byte("x")
		cs.SendMsg(&m)
		// No CloseSend: the client keeps its side open, and still gets the
		// backend's status.
		var got []byte
		err = cs.RecvMsg(&got)
		if st := status.Convert(err); st.Code() != codes.FailedPrecondition || st.Message() != "done early" {
			t.Fatalf("got %v, want FailedPrecondition \"done early\"", err)
		}
	})
}

func TestB09_MessageLimits(t *testing.T) {
	big := bytes.Repeat([]byte{'z'}, 5<<20)
	t.Run("default limit", func(t *testing.T) {
		e := newEnv(t, proxy.Config{}, nil)
		_, err := testutil.Unary(ctxT(t), e.gw, "/test.Svc/Echo", big)
		st := status.Convert(err)
		if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "larger than max") {
			t.Fatalf("got %v, want ResourceExhausted naming the limit", err)
		}
	})
	t.Run("response over the limit", func(t *testing.T) {
		e := newEnv(t, proxy.Config{Settings: proxy.Settings{MaxRequestBytes: 6 << 20}}, []grpc.ServerOption{grpc.MaxRecvMsgSize(6 << 20)},
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(6<<20)))
		_, err := testutil.Unary(ctxT(t), e.gw, "/test.Svc/Echo", big)
		if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "larger than max") {
			t.Fatalf("got %v, want ResourceExhausted naming the limit", err)
		}
	})
	t.Run("5 MiB when configured", func(t *testing.T) {
		e := newEnv(t, proxy.Config{Settings: proxy.Settings{MaxRequestBytes: 6 << 20, MaxResponseBytes: 6 << 20}},
			[]grpc.ServerOption{grpc.MaxRecvMsgSize(6 << 20)},
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(6<<20)))
		got, err := testutil.Unary(ctxT(t), e.gw, "/test.Svc/Echo", big)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, big) {
			t.Fatal("5 MiB came back changed")
		}
	})
}

func TestB12_NoLeaksAfterMixedCalls(t *testing.T) {
	e := newEnv(t, proxy.Config{}, nil)
	// Warm the connections so that their goroutines are in the baseline.
	if _, err := testutil.Unary(ctxT(t), e.gw, "/test.Svc/Echo", nil); err != nil {
		t.Fatal(err)
	}
	e.backend.Drain()
	baseG, baseFD := runtime.NumGoroutine(), openFDs(t)

	for i := range 60 {
		ctx, cancel := context.WithCancel(context.Background())
		switch i % 4 {
		case 0: // completed
			testutil.Unary(ctx, e.gw, "/test.Svc/Echo", []byte("x"))
		case 1: // cancelled mid-stream
			cs, err := testutil.RawStream(ctx, e.gw, "/test.Svc/Block")
			if err == nil {
				m := []byte("x")
				cs.SendMsg(&m)
				<-e.backend.Started()
			}
		case 2: // failed by the backend
			testutil.Unary(metadata.AppendToOutgoingContext(ctx, "x-status-code", "13"), e.gw, "/test.Svc/Echo", nil)
		case 3: // failed by the gateway
			testutil.Unary(ctx, e.gw, "/test.Svc/Echo", make([]byte, proxy.DefaultMaxMessageBytes+1))
		}
		if i%4 != 1 {
			<-e.backend.Started()
		}
		cancel()
		e.backend.NextCall(t)
	}
	testutil.WaitFor(t, 10*time.Second, "goroutines and fds back to baseline", func() bool {
		return runtime.NumGoroutine() <= baseG && openFDs(t) <= baseFD
	})
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func serveB(b *testing.B, p *proxy.Proxy) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer(p.ServerOptions()...)
	go srv.Serve(lis) //nolint:errcheck // ends with Stop
	b.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// A backend's status-only answer stays status-only through the gateway, so
// that a client's retry policy (which retries only those) works as it does
// against the backend directly.
func TestB03_TrailersOnlyStaysTrailersOnly(t *testing.T) {
	retry := grpc.WithDefaultServiceConfig(`{"methodConfig":[{"name":[{"service":"test.Svc"}],
		"retryPolicy":{"maxAttempts":4,"initialBackoff":"0.001s","maxBackoff":"0.01s","backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]}`)
	e := newEnv(t, proxy.Config{}, nil, retry)
	e.backend.FailWith.Store(int32(codes.Unavailable))
	for _, path := range []struct {
		name string
		cc   *grpc.ClientConn
	}{{"direct", e.direct}, {"gateway", e.gw}} {
		e.backend.Drain()
		// The last attempt's error can come out as grpc's own "max retries
		// exhausted" wrapping of a stream that ended while the request was
		// replayed; what matters is that the call failed after every attempt.
		if _, err := testutil.Unary(ctxT(t), path.cc, "/test.Svc/Echo", []byte("x")); err == nil {
			t.Fatalf("%s: the call succeeded against a backend that fails every call", path.name)
		}
		if n := len(e.backend.Calls()); n != 4 {
			t.Fatalf("%s: the backend saw %d attempts, want the 4 of the retry policy", path.name, n)
		}
	}
}

// refusing is an upstream whose streams are never accepted, as a backend
// whose connection broke between the pick and the send.
type refusing struct{ done chan proxy.Outcome }

func (refusing) Addr() string { return "refusing" }
func (r refusing) Done(o proxy.Outcome) {
	r.done <- o
}
func (refusing) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unavailable, "connection is not ready")
}

// seqPicker hands out its upstreams in turn, recording what each pick was
// told had been tried.
type seqPicker struct {
	ups   []proxy.Upstream
	tried [][]proxy.Upstream
}

func (p *seqPicker) Route(string, proxy.Headers) (proxy.Route, error) {
	return proxy.Route{Name: "test", Backends: p}, nil
}

func (p *seqPicker) Pick(tried []proxy.Upstream) (proxy.Upstream, error) {
	p.tried = append(p.tried, append([]proxy.Upstream(nil), tried...))
	if len(p.tried) > len(p.ups) {
		return nil, status.Error(codes.Unavailable, "no healthy upstream left")
	}
	return p.ups[len(p.tried)-1], nil
}

// TestB13_RepickWhenNotAccepted: a call that an upstream does not accept
// goes to the next pick, told what was tried, and the refusing upstream is
// told its failure was local; with only refusals, the client gets
// UNAVAILABLE after the bounded attempts.
func TestB13_RepickWhenNotAccepted(t *testing.T) {
	backend := testutil.StartBackend(t)
	refused := make(chan proxy.Outcome, 8)
	good := upstream{testutil.Dial(t, backend.Addr), make(chan proxy.Outcome, 8)}
	sp := &seqPicker{ups: []proxy.Upstream{refusing{refused}, good}}
	p, err := proxy.New(proxy.Config{}, sp, nil)
	if err != nil {
		t.Fatal(err)
	}
	gw := testutil.Dial(t, serve(t, grpc.NewServer(p.ServerOptions()...)))
	if _, err := testutil.Unary(ctxT(t), gw, "/test.Svc/Echo", []byte("x")); err != nil {
		t.Fatalf("call with one refusal then a good upstream: %v", err)
	}
	if len(sp.tried) != 2 || len(sp.tried[1]) != 1 || sp.tried[1][0].Addr() != "refusing" {
		t.Fatalf("picks were told tried = %v, want the refusing upstream on the second pick", sp.tried)
	}
	if o := <-refused; o.Origin != proxy.Local || o.Code != codes.Unavailable {
		t.Fatalf("refusing upstream's outcome %+v, want a local UNAVAILABLE", o)
	}
	if o := <-good.done; o.Origin != proxy.FromBackend || o.Code != codes.OK {
		t.Fatalf("good upstream's outcome %+v, want OK from the backend", o)
	}

	sp2 := &seqPicker{ups: []proxy.Upstream{refusing{refused}, refusing{refused}, refusing{refused}, good}}
	p2, err := proxy.New(proxy.Config{MaxAttempts: 3}, sp2, nil)
	if err != nil {
		t.Fatal(err)
	}
	gw2 := testutil.Dial(t, serve(t, grpc.NewServer(p2.ServerOptions()...)))
	_, err = testutil.Unary(ctxT(t), gw2, "/test.Svc/Echo", []byte("x"))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "after 3 attempts") {
		t.Fatalf("three refusals: %v, want UNAVAILABLE after 3 attempts", err)
	}
	if len(sp2.tried) != 3 {
		t.Fatalf("%d picks, want 3 (MaxAttempts)", len(sp2.tried))
	}
}
