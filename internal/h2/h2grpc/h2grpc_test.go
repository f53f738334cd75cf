package h2grpc_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/internal/h2/h2grpc"
	"github.com/healthgate/healthgate/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds every wait for something that must happen.
const wait = 10 * time.Second

// newChannel is a channel to addr, connected, closed at the test's end.
func newChannel(t *testing.T, addr string, mod ...func(*h2grpc.Config)) *h2grpc.Channel {
	t.Helper()
	cfg := h2grpc.Config{
		Dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
		Authority:   addr,
		UserAgent:   "h2grpc-test",
		BackoffBase: 10 * time.Millisecond,
		BackoffMax:  100 * time.Millisecond,
		Logger:      testutil.Logger(t),
	}
	for _, f := range mod {
		f(&cfg)
	}
	ch, err := h2grpc.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.Close() })
	ch.Connect()
	return ch
}

func waitState(t *testing.T, ch *h2grpc.Channel, want connectivity.State) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for st := ch.GetState(); st != want; st = ch.GetState() {
		if !ch.WaitForStateChange(ctx, st) {
			t.Fatalf("channel state %s after %s, want %s (last error %v)", st, wait, want, ch.LastErr())
		}
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

func TestCheck(t *testing.T) {
	b := testutil.StartBackend(t)
	b.Health.SetServingStatus("down", healthpb.HealthCheckResponse_NOT_SERVING)
	ch := newChannel(t, b.Addr)
	waitState(t, ch, connectivity.Ready)
	client := healthpb.NewHealthClient(ch)
	for _, tc := range []struct {
		svc      string
		want     healthpb.HealthCheckResponse_ServingStatus
		wantCode codes.Code
	}{
		{svc: "", want: healthpb.HealthCheckResponse_SERVING},
		{svc: testutil.TestService, want: healthpb.HealthCheckResponse_SERVING},
		{svc: "down", want: healthpb.HealthCheckResponse_NOT_SERVING},
		{svc: "nobody", wantCode: codes.NotFound},
	} {
		var p peer.Peer
		var header, trailer metadata.MD
		resp, err := client.Check(ctxT(t), &healthpb.HealthCheckRequest{Service: tc.svc}, grpc.Peer(&p), grpc.Header(&header), grpc.Trailer(&trailer))
		if got := status.Code(err); got != tc.wantCode {
			t.Errorf("Check(%q): %v, want %s", tc.svc, err, tc.wantCode)
			continue
		}
		if err == nil && resp.GetStatus() != tc.want {
			t.Errorf("Check(%q) = %s, want %s", tc.svc, resp.GetStatus(), tc.want)
		}
		if p.Addr == nil || p.Addr.String() != b.Addr {
			t.Errorf("Check(%q): peer %v, want %s", tc.svc, p.Addr, b.Addr)
		}
		if err == nil && header == nil {
			t.Errorf("Check(%q): no header metadata", tc.svc)
		}
	}
}

// TestUnimplemented: a server without the health service answers with
// trailers only; the status is the call's, and Header gives its error.
func TestUnimplemented(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	go srv.Serve(lis) //nolint:errcheck // ends with Stop
	t.Cleanup(srv.Stop)
	ch := newChannel(t, lis.Addr().String())
	_, err = healthpb.NewHealthClient(ch).Check(ctxT(t), &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("Check: %v, want UNIMPLEMENTED", err)
	}
	w, err := healthpb.NewHealthClient(ch).Watch(ctxT(t), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Header(); status.Code(err) != codes.Unimplemented {
		t.Errorf("Header of a trailers-only answer: %v, want UNIMPLEMENTED", err)
	}
	if _, err := w.Recv(); status.Code(err) != codes.Unimplemented {
		t.Errorf("Watch Recv: %v, want UNIMPLEMENTED", err)
	}
}

func TestWatchSeesChanges(t *testing.T) {
	b := testutil.StartBackend(t)
	ch := newChannel(t, b.Addr)
	w, err := healthpb.NewHealthClient(ch).Watch(ctxT(t), &healthpb.HealthCheckRequest{Service: testutil.TestService}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	next := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		resp, err := w.Recv()
		if err != nil {
			t.Fatalf("Recv: %v, want %s", err, want)
		}
		if resp.GetStatus() != want {
			t.Fatalf("Recv = %s, want %s", resp.GetStatus(), want)
		}
	}
	next(healthpb.HealthCheckResponse_SERVING)
	b.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
	next(healthpb.HealthCheckResponse_NOT_SERVING)
	b.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_SERVING)
	next(healthpb.HealthCheckResponse_SERVING)
	// Shutdown ends every Watch with NOT_SERVING and leaves it open.
	b.Health.Shutdown()
	next(healthpb.HealthCheckResponse_NOT_SERVING)
}

// TestServerEndsTheStream: a server that ends a streaming call with a
// status: the messages before it are read, then the status (its message
// percent-decoded) and the trailers.
func TestServerEndsTheStream(t *testing.T) {
	b := testutil.StartBackend(t)
	ch := newChannel(t, b.Addr)
	waitState(t, ch, connectivity.Ready)
	ctx := metadata.AppendToOutgoingContext(ctxT(t),
		"x-status-code", "9", "x-status-message", "not now: 100% busy ✓",
		"x-set-header", "h=1", "x-set-trailer", "tr=2")
	s, err := testutil.RawStream(ctx, ch, "/"+testutil.TestService+"/Echo")
	if err != nil {
		t.Fatal(err)
	}
	s.CloseSend()
	var m []byte
	err = s.RecvMsg(&m)
	if st := status.Convert(err); st.Code() != codes.FailedPrecondition || st.Message() != "not now: 100% busy ✓" {
		t.Fatalf("RecvMsg: %v, want FAILED_PRECONDITION %q", err, "not now: 100% busy ✓")
	}
	if got := s.Trailer().Get("tr"); len(got) != 1 || got[0] != "2" {
		t.Errorf("trailer tr = %q, want [2]", got)
	}
	if err2 := s.RecvMsg(&m); err2 == nil || err2.Error() != err.Error() {
		t.Errorf("second RecvMsg: %v, want %v again", err2, err)
	}
}

// TestStreamOK: a bidi stream, messages both ways, larger than the
// stream's window; the end is io.EOF and the trailers are there.
func TestStreamOK(t *testing.T) {
	b := testutil.StartBackend(t)
	ch := newChannel(t, b.Addr, func(c *h2grpc.Config) { c.H2.StreamWindow = 64 << 10 })
	waitState(t, ch, connectivity.Ready)
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-set-header", "h=1", "x-set-trailer", "tr=2", "x-thing-bin", "\x00\x01")
	s, err := testutil.RawStream(ctx, ch, "/"+testutil.TestService+"/Echo")
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{0, 10, 100 << 10, 3 << 20} {
		msg := bytes.Repeat([]byte{'x'}, size)
		if err := s.SendMsg(&msg); err != nil {
			t.Fatalf("SendMsg(%d bytes): %v", size, err)
		}
		var got []byte
		if err := s.RecvMsg(&got); err != nil {
			t.Fatalf("RecvMsg after %d bytes: %v", size, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("echo of %d bytes: got %d bytes", size, len(got))
		}
	}
	h, err := s.Header()
	if err != nil || len(h.Get("h")) != 1 {
		t.Errorf("Header() = %v, %v; want h=1", h, err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var got []byte
	if err := s.RecvMsg(&got); err != io.EOF {
		t.Fatalf("RecvMsg at the end: %v, want io.EOF", err)
	}
	if tr := s.Trailer().Get("tr"); len(tr) != 1 || tr[0] != "2" {
		t.Errorf("trailer tr = %q, want [2]", tr)
	}
	call := b.NextCall(t)
	if v := call.MD.Get("x-thing-bin"); len(v) != 1 || v[0] != "\x00\x01" {
		t.Errorf("server saw x-thing-bin %q, want the bytes sent", v)
	}
	if ua := call.MD.Get("user-agent"); len(ua) != 1 || !strings.HasPrefix(ua[0], "h2grpc-test") {
		t.Errorf("server saw user-agent %q", ua)
	}
}

// TestMessageLimit: a message over the limit fails the call
// RESOURCE_EXHAUSTED, and the connection goes on.
func TestMessageLimit(t *testing.T) {
	b := testutil.StartBackend(t)
	ch := newChannel(t, b.Addr)
	waitState(t, ch, connectivity.Ready)
	_, err := testutil.Unary(ctxT(t), ch, "/"+testutil.TestService+"/Echo", make([]byte, h2grpc.DefaultMaxRecvMsgSize+1))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("5 MiB answer: %v, want RESOURCE_EXHAUSTED", err)
	}
	_, err = testutil.Unary(ctxT(t), ch, "/"+testutil.TestService+"/Echo", make([]byte, 1000), grpc.MaxCallRecvMsgSize(999))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("answer over MaxCallRecvMsgSize: %v, want RESOURCE_EXHAUSTED", err)
	}
	got, err := testutil.Unary(ctxT(t), ch, "/"+testutil.TestService+"/Echo", []byte("after"))
	if err != nil || string(got) != "after" {
		t.Fatalf("call after: %q, %v", got, err)
	}
}

// TestDeadline: the deadline reaches the server as grpc-timeout and ends
// the call DEADLINE_EXCEEDED on the client, with the server's handler
// cancelled.
func TestDeadline(t *testing.T) {
	b := testutil.StartBackend(t)
	ch := newChannel(t, b.Addr)
	waitState(t, ch, connectivity.Ready)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := testutil.Unary(ctx, ch, "/"+testutil.TestService+"/Block", nil)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Block: %v, want DEADLINE_EXCEEDED", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the call took %s with a 300ms deadline", took)
	}
	call := b.NextCall(t)
	if call.Deadline.IsZero() {
		t.Error("the server saw no deadline")
	}
	if call.Err == nil {
		t.Error("the server's handler was not cancelled")
	}
	// A deadline already passed fails before anything is sent.
	ctx, cancel = context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := healthpb.NewHealthClient(ch).Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("Check past its deadline: %v, want DEADLINE_EXCEEDED", err)
	}
}

// TestCancel: cancelling a Watch ends it CANCELED on the client and
// cancels the server's handler (RST_STREAM CANCEL).
func TestCancel(t *testing.T) {
	b := testutil.StartBackend(t)
	ch := newChannel(t, b.Addr)
	waitState(t, ch, connectivity.Ready)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := testutil.RawStream(ctx, ch, "/"+testutil.TestService+"/Block")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.Started():
	case <-time.After(wait):
		t.Fatal("the call did not reach the server")
	}
	recvErr := make(chan error, 1)
	go func() {
		var m []byte
		recvErr <- s.RecvMsg(&m)
	}()
	cancel()
	select {
	case err := <-recvErr:
		if status.Code(err) != codes.Canceled {
			t.Errorf("RecvMsg after cancel: %v, want CANCELED", err)
		}
	case <-time.After(wait):
		t.Fatal("RecvMsg still waiting after cancel")
	}
	if call := b.NextCall(t); !errors.Is(call.Err, context.Canceled) {
		t.Errorf("the server's handler ended with %v, want it cancelled", call.Err)
	}
}

// TestHTTPStatusWithoutGRPC: what answers with HTTP and no grpc-status (a
// proxy in the way) is mapped as the gRPC spec says.
func TestHTTPStatusWithoutGRPC(t *testing.T) {
	for _, tc := range []struct {
		code int
		ct   string
		want codes.Code
	}{
		{code: 503, want: codes.Unavailable},
		{code: 404, want: codes.Unimplemented},
		{code: 401, want: codes.Unauthenticated},
		{code: 500, want: codes.Unknown},
		{code: 200, ct: "text/html", want: codes.Internal},
	} {
		h := h2c.NewHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if tc.ct != "" {
				w.Header().Set("Content-Type", tc.ct)
			}
			w.WriteHeader(tc.code)
			w.Write([]byte("not grpc")) //nolint:errcheck // the client decides
		}), &http2.Server{})
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h}
		go srv.Serve(lis) //nolint:errcheck // ends with Close
		ch := newChannel(t, lis.Addr().String())
		_, err = healthpb.NewHealthClient(ch).Check(ctxT(t), &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		if status.Code(err) != tc.want {
			t.Errorf("HTTP %d %q: %v, want %s", tc.code, tc.ct, err, tc.want)
		}
		ch.Close()
		srv.Close()
	}
}

// TestBackendDownThenUp: a backend not there is TRANSIENT_FAILURE with the
// dial's error, calls fail at once UNAVAILABLE saying why; once it is
// there the channel is READY.
func TestBackendDownThenUp(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	ch := newChannel(t, addr)
	waitState(t, ch, connectivity.TransientFailure)
	if err := ch.LastErr(); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("LastErr() = %v, want connection refused", err)
	}
	_, err = healthpb.NewHealthClient(ch).Check(ctxT(t), &healthpb.HealthCheckRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "refused") {
		t.Errorf("Check while down: %v, want UNAVAILABLE saying refused", err)
	}
	if ch.Conn() != nil {
		t.Error("Conn() while down is not nil")
	}
	lis2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b := testutil.StartBackendOn(lis2)
	t.Cleanup(b.Stop)
	waitState(t, ch, connectivity.Ready)
	if ch.LastErr() != nil || ch.Conn() == nil {
		t.Errorf("READY: LastErr() = %v, Conn() = %v", ch.LastErr(), ch.Conn())
	}
	if _, err := healthpb.NewHealthClient(ch).Check(ctxT(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("Check when up: %v", err)
	}
}

// TestHandshakeTimeout: a peer that accepts and never speaks HTTP/2 is a
// failure to connect, not READY.
func TestHandshakeTimeout(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() { <-done; c.Close() }()
		}
	}()
	ch := newChannel(t, lis.Addr().String(), func(c *h2grpc.Config) { c.ConnectTimeout = 200 * time.Millisecond })
	waitState(t, ch, connectivity.TransientFailure)
	if err := ch.LastErr(); err == nil || !strings.Contains(err.Error(), "handshake") {
		t.Errorf("LastErr() = %v, want a handshake error", err)
	}
	ch.Close()
}

// TestGracefulStop: the backend's GOAWAY takes the channel out of READY at
// once; the Watch on it goes on until the channel's owner cancels it
// (which lets GracefulStop finish); the channel dials again and is READY
// when the backend is back on its address.
func TestGracefulStop(t *testing.T) {
	b := testutil.StartBackend(t)
	addr := b.Addr
	ch := newChannel(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := healthpb.NewHealthClient(ch).Watch(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() { b.Server.GracefulStop(); close(stopped) }()
	waitCtx, waitCancel := context.WithTimeout(context.Background(), wait)
	defer waitCancel()
	if !ch.WaitForStateChange(waitCtx, connectivity.Ready) {
		t.Fatal("still READY after GOAWAY")
	}
	if ch.Conn() != nil {
		t.Error("Conn() after GOAWAY is not nil")
	}
	select {
	case <-stopped:
		t.Fatal("GracefulStop returned with the Watch still open")
	default:
	}
	cancel()
	select {
	case <-stopped:
	case <-time.After(wait):
		t.Fatal("GracefulStop did not return after the Watch was cancelled")
	}
	waitState(t, ch, connectivity.TransientFailure)

	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b2 := testutil.StartBackendOn(lis)
	t.Cleanup(b2.Stop)
	waitState(t, ch, connectivity.Ready)
	if _, err := healthpb.NewHealthClient(ch).Check(ctxT(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("Check on the new connection: %v", err)
	}
}

// TestSever: Sever fails the calls in flight UNAVAILABLE at once, and the
// channel connects again.
func TestSever(t *testing.T) {
	b := testutil.StartBackend(t)
	ch := newChannel(t, b.Addr)
	waitState(t, ch, connectivity.Ready)
	if ch.Conn() == nil {
		t.Fatal("Conn() is nil when READY")
	}
	s, err := testutil.RawStream(ctxT(t), ch, "/"+testutil.TestService+"/Block")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.Started():
	case <-time.After(wait):
		t.Fatal("the call did not reach the server")
	}
	if !ch.Sever() {
		t.Fatal("Sever() = false with a connection open")
	}
	var m []byte
	if err := s.RecvMsg(&m); status.Code(err) != codes.Unavailable {
		t.Errorf("call in flight after Sever: %v, want UNAVAILABLE", err)
	}
	waitState(t, ch, connectivity.Ready)
	if _, err := healthpb.NewHealthClient(ch).Check(ctxT(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("Check after reconnecting: %v", err)
	}
}

// TestClose: Close fails the calls in flight and any call after it, and
// ends every goroutine (goleak checks).
func TestClose(t *testing.T) {
	b := testutil.StartBackend(t)
	ch := newChannel(t, b.Addr)
	w, err := healthpb.NewHealthClient(ch).Watch(ctxT(t), &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	ch.Close()
	if _, err := w.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("Watch after Close: %v, want UNAVAILABLE", err)
	}
	if st := ch.GetState(); st != connectivity.Shutdown {
		t.Errorf("state after Close = %s, want SHUTDOWN", st)
	}
	if _, err := healthpb.NewHealthClient(ch).Check(ctxT(t), &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Canceled {
		t.Errorf("Check after Close: %v, want CANCELED", err)
	}
}
