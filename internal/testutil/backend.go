// Package testutil starts the real things that tests run against: scriptable
// gRPC backends on loopback and a Consul agent in dev mode.
package testutil

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// RawCodec moves []byte messages as they are, so that tests can send bytes
// that are not protobuf and compare what arrives byte for byte. Typed
// messages (the health service) fall back to protobuf.
type RawCodec struct{ Subtype string }

// Marshal accepts *[]byte or []byte.
func (c RawCodec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case *[]byte:
		return mem.BufferSlice{mem.SliceBuffer(*m)}, nil
	case []byte:
		return mem.BufferSlice{mem.SliceBuffer(m)}, nil
	}
	return encoding.GetCodecV2(proto.Name).Marshal(v)
}

// Unmarshal copies into *[]byte.
func (c RawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if m, ok := v.(*[]byte); ok {
		*m = data.Materialize()
		return nil
	}
	return encoding.GetCodecV2(proto.Name).Unmarshal(data, v)
}

// Name is the content subtype the codec's calls are sent with.
func (c RawCodec) Name() string { return c.Subtype }

// Call is what a backend saw of one call.
type Call struct {
	Method         string
	MD             metadata.MD
	Deadline       time.Time // zero when the call had none
	ContentSubtype string
	Messages       [][]byte
	// Err is the context error the handler saw when it returned: how a test
	// learns that a cancel reached the backend.
	Err error
}

// TestService is the gRPC service name tests call on a Backend; its health
// status starts SERVING.
const TestService = "test.Svc"

// Backend is a real gRPC server on loopback whose behaviour is chosen by the
// method name and the request metadata:
//
//   - .../Echo sends back every message it receives (unary and bidi);
//   - .../Collect receives all messages, then sends their concatenation;
//   - .../Repeat receives one message and sends it x-repeat times;
//   - .../Block waits for the call to be cancelled;
//   - .../EndEarly receives one message and ends the call;
//   - .../Sink receives every message and ends the call without one;
//
// and for any method: x-set-header and x-set-trailer ("key=value") are sent
// back as header and trailer, x-header-first sends the header at once,
// x-status-code / x-status-message end the call with that status and
// x-status-details adds an ErrorInfo detail.
type Backend struct {
	Addr   string
	Health *health.Server
	Server *grpc.Server

	calls   chan Call
	startCh chan struct{}
	// FailWith, when not 0, makes every call the backend handles end
	// with that status code at once, while its health stays as set: a
	// backend that is up but failing.
	FailWith atomic.Int32
	// FailTrailer, when set, is the trailer of FailWith's status (a
	// grpc-retry-pushback-ms, say).
	FailTrailer atomic.Pointer[metadata.MD]
	// FailAfterRequest makes FailWith fail a call only once the client
	// has sent its whole request.
	FailAfterRequest atomic.Bool
	// Hold, when not 0, delays every call's handling by that many
	// nanoseconds (or until the call ends): a backend that is slow to
	// answer.
	Hold atomic.Int64
}

// StartBackend starts a backend on a free loopback port and stops it at the
// end of the test.
func StartBackend(t testing.TB, opts ...grpc.ServerOption) *Backend {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("backend listen: %v", err)
	}
	b := StartBackendOn(lis, opts...)
	t.Cleanup(b.Stop)
	return b
}

// StartBackendOn serves on lis until Stop.
func StartBackendOn(lis net.Listener, opts ...grpc.ServerOption) *Backend {
	b := &Backend{
		Addr:    lis.Addr().String(),
		Health:  health.NewServer(),
		calls:   make(chan Call, 4096),
		startCh: make(chan struct{}, 4096),
	}
	opts = append([]grpc.ServerOption{
		grpc.ForceServerCodecV2(RawCodec{}),
		grpc.UnknownServiceHandler(b.handle),
	}, opts...)
	b.Server = grpc.NewServer(opts...)
	// The service the tests call; "" is SERVING already.
	b.Health.SetServingStatus(TestService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(b.Server, b.Health)
	go b.Server.Serve(lis) //nolint:errcheck // ends with Stop
	return b
}

// Stop ends the server at once.
func (b *Backend) Stop() {
	b.Health.Shutdown()
	b.Server.Stop()
}

// Calls delivers a record of each finished call.
func (b *Backend) Calls() <-chan Call { return b.calls }

// Started delivers one value as each call's handler begins.
func (b *Backend) Started() <-chan struct{} { return b.startCh }

// Drain forgets the calls recorded so far.
func (b *Backend) Drain() {
	for {
		select {
		case <-b.calls:
		case <-b.startCh:
		default:
			return
		}
	}
}

// NextCall waits for the next finished call.
func (b *Backend) NextCall(t testing.TB) Call {
	t.Helper()
	select {
	case c := <-b.calls:
		return c
	case <-time.After(10 * time.Second):
		t.Fatalf("backend %s: no call within 10s", b.Addr)
		return Call{}
	}
}

func (b *Backend) handle(_ any, ss grpc.ServerStream) error {
	ctx := ss.Context()
	b.startCh <- struct{}{}
	method, _ := grpc.MethodFromServerStream(ss)
	md, _ := metadata.FromIncomingContext(ctx)
	call := Call{Method: method, MD: md}
	call.Deadline, _ = ctx.Deadline()
	if s, ok := grpc.ServerTransportStreamFromContext(ctx).(interface{ ContentSubtype() string }); ok {
		call.ContentSubtype = s.ContentSubtype()
	}
	defer func() {
		call.Err = ctx.Err()
		b.calls <- call
	}()
	if d := time.Duration(b.Hold.Load()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return status.FromContextError(ctx.Err()).Err()
		case <-t.C:
		}
	}
	if c := b.FailWith.Load(); c != 0 {
		if b.FailAfterRequest.Load() {
			for {
				var m []byte
				if err := ss.RecvMsg(&m); err != nil {
					break
				}
				call.Messages = append(call.Messages, m)
			}
		}
		if tr := b.FailTrailer.Load(); tr != nil {
			ss.SetTrailer(*tr)
		}
		return status.Error(codes.Code(c), "testutil backend: failing on purpose")
	}

	if kv := first(md, "x-set-header"); kv != "" {
		k, v, _ := strings.Cut(kv, "=")
		if err := ss.SetHeader(metadata.Pairs(k, v)); err != nil {
			return err
		}
	}
	if kv := first(md, "x-set-trailer"); kv != "" {
		k, v, _ := strings.Cut(kv, "=")
		ss.SetTrailer(metadata.Pairs(k, v))
	}
	if first(md, "x-header-first") != "" {
		if err := ss.SendHeader(nil); err != nil {
			return err
		}
	}
	recv := func() ([]byte, error) {
		var m []byte
		err := ss.RecvMsg(&m)
		if err == nil {
			call.Messages = append(call.Messages, m)
		}
		return m, err
	}

	switch method[strings.LastIndexByte(method, '/')+1:] {
	case "Echo":
		for {
			m, err := recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			if err := ss.SendMsg(&m); err != nil {
				return err
			}
		}
	case "Collect":
		var all []byte
		for {
			m, err := recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			all = append(all, m...)
		}
		if err := ss.SendMsg(&all); err != nil {
			return err
		}
	case "Repeat":
		m, err := recv()
		if err != nil {
			return err
		}
		n, _ := strconv.Atoi(first(md, "x-repeat"))
		for range n {
			if err := ss.SendMsg(&m); err != nil {
				return err
			}
		}
	case "Block":
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	case "EndEarly":
		if _, err := recv(); err != nil {
			return err
		}
	case "Sink":
		for {
			_, err := recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
		}
	default:
		return status.Errorf(codes.Unimplemented, "testutil backend: no method %s", method)
	}
	if c := first(md, "x-status-code"); c != "" {
		code, _ := strconv.Atoi(c)
		msg := first(md, "x-status-message")
		if msg == "SPECIAL" {
			// Metadata cannot carry these characters, so the test names them.
			msg = "bad input: ü 100% \n second line"
		}
		st := status.New(codes.Code(code), msg)
		if first(md, "x-status-details") != "" {
			st, _ = st.WithDetails(&errdetails.ErrorInfo{Reason: "TEST_REASON", Domain: "healthgate.test", Metadata: map[string]string{"k": "v"}})
		}
		return st.Err()
	}
	return nil
}

func first(md metadata.MD, key string) string {
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// Dial opens a client connection that sends raw bytes to addr.
func Dial(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// RawStream opens a bidi stream for method on cc that moves []byte messages.
func RawStream(ctx context.Context, cc grpc.ClientConnInterface, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	opts = append([]grpc.CallOption{grpc.ForceCodecV2(RawCodec{})}, opts...)
	return cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method, opts...)
}

// Unary makes a unary call with raw bytes.
func Unary(ctx context.Context, cc grpc.ClientConnInterface, method string, req []byte, opts ...grpc.CallOption) ([]byte, error) {
	var resp []byte
	opts = append([]grpc.CallOption{grpc.ForceCodecV2(RawCodec{})}, opts...)
	err := cc.Invoke(ctx, method, &req, &resp, opts...)
	return resp, err
}

// WaitFor polls cond until it holds or the deadline passes. Tests use it
// where the event is a state to reach rather than a value to receive.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// Logger writes the component logs into the test's log, so that a failing
// test shows what the gateway was doing.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// LogRecorder is a slog.Handler that keeps every message and passes each
// record on to the test's log.
type LogRecorder struct {
	slog.Handler
	mu   *sync.Mutex
	msgs *[]slog.Record
}

// NewLogRecorder returns a recorder and a logger that writes to it.
func NewLogRecorder(t testing.TB) (*LogRecorder, *slog.Logger) {
	r := &LogRecorder{Handler: Logger(t).Handler(), mu: new(sync.Mutex), msgs: new([]slog.Record)}
	return r, slog.New(r)
}

// Handle records r.
func (r *LogRecorder) Handle(ctx context.Context, rec slog.Record) error {
	r.mu.Lock()
	*r.msgs = append(*r.msgs, rec.Clone())
	r.mu.Unlock()
	return r.Handler.Handle(ctx, rec)
}

// WithAttrs keeps recording into the same list.
func (r *LogRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &LogRecorder{Handler: r.Handler.WithAttrs(as), mu: r.mu, msgs: r.msgs}
}

// WithGroup keeps recording into the same list.
func (r *LogRecorder) WithGroup(name string) slog.Handler {
	return &LogRecorder{Handler: r.Handler.WithGroup(name), mu: r.mu, msgs: r.msgs}
}

// Messages returns the messages of the records at level or above, in order.
func (r *LogRecorder) Messages(level slog.Level) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rec := range *r.msgs {
		if rec.Level >= level {
			out = append(out, rec.Message)
		}
	}
	return out
}

// Count returns how many records at level or above contain substr in their
// message.
func (r *LogRecorder) Count(level slog.Level, substr string) int {
	n := 0
	for _, m := range r.Messages(level) {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

// Echo sends s on a stream to an Echo method and checks that it comes back.
func Echo(stream grpc.ClientStream, s string) error {
	m := []byte(s)
	if err := stream.SendMsg(&m); err != nil {
		return err
	}
	var got []byte
	if err := stream.RecvMsg(&got); err != nil {
		return err
	}
	if string(got) != s {
		return fmt.Errorf("echo: got %q, want %q", got, s)
	}
	return nil
}
