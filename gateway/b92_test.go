package gateway_test

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/grpcweb/grpcwebcfg"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/tracing/tracingcfg"
)

// tracingConfig exports to rcv at once-ish, with sample ratio ratio (nil
// for the default).
func tracingConfig(rcv *testutil.OTLPReceiver, ratio *float64) tracingcfg.Config {
	return tracingcfg.Config{OTLPEndpoint: rcv.Addr, Insecure: true, SampleRatio: ratio, BatchTimeout: 20 * time.Millisecond, ServiceName: "edge-gw"}
}

// newTraceparent is a sampled (or not) W3C traceparent of a new trace,
// with its trace and span IDs.
func newTraceparent(sampled bool) (tp, traceID, spanID string) {
	var b [24]byte
	for i := range b {
		b[i] = byte(rand.IntN(256))
	}
	b[0], b[16] = b[0]|1, b[16]|1 // never all zero
	traceID, spanID = hex.EncodeToString(b[:16]), hex.EncodeToString(b[16:])
	flags := "00"
	if sampled {
		flags = "01"
	}
	return "00-" + traceID + "-" + spanID + "-" + flags, traceID, spanID
}

// parseTraceparent splits a traceparent into its trace ID, parent span ID
// and flags.
func parseTraceparent(t *testing.T, tp string) (traceID, spanID, flags string) {
	t.Helper()
	parts := strings.Split(tp, "-")
	if len(parts) != 4 || parts[0] != "00" || len(parts[1]) != 32 || len(parts[2]) != 16 || len(parts[3]) != 2 {
		t.Fatalf("traceparent %q is not a version 00 one", tp)
	}
	return parts[1], parts[2], parts[3]
}

func spanID(s *tracepb.Span) string       { return hex.EncodeToString(s.GetSpanId()) }
func parentSpanID(s *tracepb.Span) string { return hex.EncodeToString(s.GetParentSpanId()) }

// bySpanKind splits a call's spans into its server span and its client
// spans, ordered by their retry number.
func bySpanKind(t *testing.T, spans []*tracepb.Span) (*tracepb.Span, []*tracepb.Span) {
	t.Helper()
	var server *tracepb.Span
	var clients []*tracepb.Span
	for _, s := range spans {
		switch s.GetKind() {
		case tracepb.Span_SPAN_KIND_SERVER:
			if server != nil {
				t.Fatalf("two server spans in one call's trace: %v and %v", server, s)
			}
			server = s
		case tracepb.Span_SPAN_KIND_CLIENT:
			clients = append(clients, s)
		default:
			t.Fatalf("span %q of kind %v, want server or client", s.GetName(), s.GetKind())
		}
	}
	if server == nil {
		t.Fatalf("no server span among %d", len(spans))
	}
	retry := func(s *tracepb.Span) int64 {
		v, _ := testutil.SpanAttr(s, "healthgate.retry")
		n, _ := v.(int64)
		return n
	}
	for i := 1; i < len(clients); i++ {
		for j := i; j > 0 && retry(clients[j]) < retry(clients[j-1]); j-- {
			clients[j], clients[j-1] = clients[j-1], clients[j]
		}
	}
	return server, clients
}

// wantAttrs checks attributes of s.
func wantAttrs(t *testing.T, s *tracepb.Span, want map[string]any) {
	t.Helper()
	for k, w := range want {
		got, ok := testutil.SpanAttr(s, k)
		if !ok || got != w {
			t.Errorf("%s span %q: %s = %v (present %v), want %v", s.GetKind(), s.GetName(), k, got, ok, w)
		}
	}
}

// onlyTraceparent is the one traceparent a backend's call carried.
func onlyTraceparent(t *testing.T, c testutil.Call) string {
	t.Helper()
	v := c.MD.Get("traceparent")
	if len(v) != 1 {
		t.Fatalf("the backend got %d traceparent headers %q, want exactly one", len(v), v)
	}
	return v[0]
}

// TestB92_ServerAndClientSpans: a proxied call is exported as a server span
// and, its child, a client span for the attempt on the backend, with the
// RPC's attributes, the route, the backend and the status code; a client
// span is in error for any code but OK, the server span only for the
// codes that say the server failed.
func TestB92_ServerAndClientSpans(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		rcv := testutil.StartOTLPReceiver(t)
		be := testutil.StartBackend(t)
		cfg := config.Config{
			Routes:  []config.Route{{Service: testutil.TestService, Backends: []string{be.Addr}}},
			Tracing: tracingConfig(rcv, nil),
		}
		h := e.start(t, cfg)
		h.routable(t, testutil.TestService, 1)
		cc := testutil.Dial(t, h.addr)
		for _, tc := range []struct {
			name        string
			md          []string
			code        codes.Code
			serverError bool
		}{
			{"ok", nil, codes.OK, false},
			{"not found", []string{"x-status-code", strconv.Itoa(int(codes.NotFound))}, codes.NotFound, false},
			{"internal", []string{"x-status-code", strconv.Itoa(int(codes.Internal))}, codes.Internal, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				// The client's sampled trace context only names the trace
				// to look for; TestB92_ClientTraceContinued checks it.
				tp, traceID, _ := newTraceparent(true)
				ctx := metadata.AppendToOutgoingContext(ctxT(t), append([]string{"traceparent", tp}, tc.md...)...)
				if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("hi")); status.Code(err) != tc.code {
					t.Fatalf("call: %v, want %s", err, tc.code)
				}
				server, clients := bySpanKind(t, rcv.WaitTrace(t, traceID, 2))
				if len(clients) != 1 {
					t.Fatalf("%d client spans, want 1", len(clients))
				}
				client := clients[0]
				for _, s := range []*tracepb.Span{server, client} {
					if s.GetName() != "test.Svc/Echo" {
						t.Errorf("%s span named %q, want test.Svc/Echo", s.GetKind(), s.GetName())
					}
					wantAttrs(t, s, map[string]any{
						"rpc.system": "grpc", "rpc.service": "test.Svc", "rpc.method": "Echo",
						"healthgate.route": testutil.TestService, "rpc.grpc.status_code": int64(tc.code),
					})
				}
				wantAttrs(t, server, map[string]any{"client.address": "127.0.0.1"})
				host, port, _ := strings.Cut(be.Addr, ":")
				p, _ := strconv.Atoi(port)
				wantAttrs(t, client, map[string]any{"healthgate.backend": be.Addr, "healthgate.retry": int64(0), "server.address": host, "server.port": int64(p)})
				if parentSpanID(client) != spanID(server) {
					t.Errorf("the client span's parent is %s, want the server span %s", parentSpanID(client), spanID(server))
				}
				if !bytes.Equal(client.GetTraceId(), server.GetTraceId()) {
					t.Error("the client span is in another trace than the server span")
				}
				wantClient := tracepb.Status_STATUS_CODE_UNSET
				if tc.code != codes.OK {
					wantClient = tracepb.Status_STATUS_CODE_ERROR
				}
				wantServer := tracepb.Status_STATUS_CODE_UNSET
				if tc.serverError {
					wantServer = tracepb.Status_STATUS_CODE_ERROR
				}
				if got := client.GetStatus().GetCode(); got != wantClient {
					t.Errorf("client span status %v, want %v", got, wantClient)
				}
				if got := server.GetStatus().GetCode(); got != wantServer {
					t.Errorf("server span status %v, want %v", got, wantServer)
				}
				if client.GetStartTimeUnixNano() < server.GetStartTimeUnixNano() || client.GetEndTimeUnixNano() > server.GetEndTimeUnixNano() {
					t.Error("the client span is not within the server span")
				}
			})
		}
		for _, svc := range rcv.Services() {
			if svc != "edge-gw" {
				t.Fatalf("a span came with service.name %q, want edge-gw (service_name)", svc)
			}
		}
	})
}

// TestB92_ClientTraceContinued: the client's trace context is continued:
// the gateway's server span is in the client's trace with the client's
// span as parent, and the backend gets exactly one traceparent, the
// gateway's, whose parent is the attempt's client span, with the client's
// tracestate passed on.
func TestB92_ClientTraceContinued(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		rcv := testutil.StartOTLPReceiver(t)
		be := testutil.StartBackend(t)
		h := e.start(t, config.Config{
			Routes:  []config.Route{{Service: testutil.TestService, Backends: []string{be.Addr}}},
			Tracing: tracingConfig(rcv, nil),
		})
		h.routable(t, testutil.TestService, 1)
		cc := testutil.Dial(t, h.addr)
		tp, traceID, clientSpan := newTraceparent(true)
		ctx := metadata.AppendToOutgoingContext(ctxT(t), "traceparent", tp, "tracestate", "vendor=abc")
		if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("hi")); err != nil {
			t.Fatal(err)
		}
		server, clients := bySpanKind(t, rcv.WaitTrace(t, traceID, 2))
		if parentSpanID(server) != clientSpan {
			t.Errorf("the server span's parent is %q, want the client's span %s", parentSpanID(server), clientSpan)
		}
		call := testCalls(be)
		if len(call) != 1 {
			t.Fatalf("the backend saw %d calls, want 1", len(call))
		}
		gotTrace, gotParent, flags := parseTraceparent(t, onlyTraceparent(t, call[0]))
		if gotTrace != traceID || gotParent != spanID(clients[0]) || flags != "01" {
			t.Errorf("the backend's traceparent has trace %s parent %s flags %s; want trace %s, parent the attempt's span %s, sampled",
				gotTrace, gotParent, flags, traceID, spanID(clients[0]))
		}
		if ts := call[0].MD.Get("tracestate"); len(ts) != 1 || ts[0] != "vendor=abc" {
			t.Errorf("the backend's tracestate is %q, want the client's once", ts)
		}
	})
}

// TestB92_RetriesGetOneSpanEach: a call that the route retries gets one
// client span per attempt, numbered by healthgate.retry, each with its
// backend and its code, and each backend gets the traceparent of its own
// attempt.
func TestB92_RetriesGetOneSpanEach(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		rcv := testutil.StartOTLPReceiver(t)
		bad, good := testutil.StartBackend(t), testutil.StartBackend(t)
		bad.FailWith.Store(int32(codes.Unavailable))
		cfg := retryConfig(fastRetry(), bad.Addr, good.Addr)
		cfg.Tracing = tracingConfig(rcv, nil)
		h := e.start(t, cfg)
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		// Round robin sends one of every two calls to the failing backend
		// first.
		var retried []string
		for range 6 {
			tp, traceID, _ := newTraceparent(true)
			ctx := metadata.AppendToOutgoingContext(ctxT(t), "traceparent", tp)
			if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("hi")); err != nil {
				t.Fatal(err)
			}
			// Every call is one server span and one or two client spans.
			testutil.WaitFor(t, 10*time.Second, "the call's spans", func() bool {
				spans := rcv.Trace(traceID)
				servers := 0
				for _, s := range spans {
					if s.GetKind() == tracepb.Span_SPAN_KIND_SERVER {
						servers++
					}
				}
				return servers == 1 && len(spans) > 1
			})
			if _, clients := bySpanKind(t, rcv.Trace(traceID)); len(clients) > 1 {
				retried = append(retried, traceID)
			}
		}
		if len(retried) == 0 {
			t.Fatal("no call was retried: none went to the failing backend first")
		}
		attemptSpans := map[string]string{} // span ID -> backend
		for _, traceID := range retried {
			server, clients := bySpanKind(t, rcv.Trace(traceID))
			if len(clients) != 2 {
				t.Fatalf("a retried call has %d client spans, want 2", len(clients))
			}
			wantAttrs(t, clients[0], map[string]any{"healthgate.retry": int64(0), "healthgate.backend": bad.Addr, "rpc.grpc.status_code": int64(codes.Unavailable)})
			wantAttrs(t, clients[1], map[string]any{"healthgate.retry": int64(1), "healthgate.backend": good.Addr, "rpc.grpc.status_code": int64(codes.OK)})
			wantAttrs(t, server, map[string]any{"rpc.grpc.status_code": int64(codes.OK)})
			for _, c := range clients {
				if parentSpanID(c) != spanID(server) {
					t.Errorf("attempt %s's parent is %s, want the server span", spanID(c), parentSpanID(c))
				}
				b, _ := testutil.SpanAttr(c, "healthgate.backend")
				attemptSpans[spanID(c)] = b.(string)
			}
		}
		// Each backend saw the traceparent of an attempt on it.
		for _, b := range []*testutil.Backend{bad, good} {
			for _, c := range testCalls(b) {
				_, parent, _ := parseTraceparent(t, onlyTraceparent(t, c))
				if on, ok := attemptSpans[parent]; ok && on != b.Addr {
					t.Errorf("backend %s got the traceparent of the attempt on %s", b.Addr, on)
				}
			}
		}
	})
}

// TestB92_SamplingOff: with sample_ratio 0, a call that starts a trace is
// not recorded, yet the backend still gets one traceparent (the gateway's,
// not sampled) so that its own spans are not sampled either; a call whose
// client's trace is sampled is recorded all the same (sampling is
// parent-based), and one whose client's trace is not sampled is not.
func TestB92_SamplingOff(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		rcv := testutil.StartOTLPReceiver(t)
		be := testutil.StartBackend(t)
		zero := 0.0
		h := e.start(t, config.Config{
			Routes:  []config.Route{{Service: testutil.TestService, Backends: []string{be.Addr}}},
			Tracing: tracingConfig(rcv, &zero),
		})
		h.routable(t, testutil.TestService, 1)
		cc := testutil.Dial(t, h.addr)
		if _, err := testutil.Unary(ctxT(t), cc, "/test.Svc/Echo", []byte("hi")); err != nil {
			t.Fatal(err)
		}
		unsampledTP, unsampledTrace, _ := newTraceparent(false)
		if _, err := testutil.Unary(metadata.AppendToOutgoingContext(ctxT(t), "traceparent", unsampledTP), cc, "/test.Svc/Echo", []byte("hi")); err != nil {
			t.Fatal(err)
		}
		sampledTP, sampledTrace, _ := newTraceparent(true)
		if _, err := testutil.Unary(metadata.AppendToOutgoingContext(ctxT(t), "traceparent", sampledTP), cc, "/test.Svc/Echo", []byte("hi")); err != nil {
			t.Fatal(err)
		}
		// Spans are exported in the order they end: once the sampled
		// call's are in, those of the calls before would be too.
		rcv.WaitTrace(t, sampledTrace, 2)
		if n := len(rcv.Spans()); n != 2 {
			t.Fatalf("the receiver has %d spans, want only the 2 of the call whose client sampled it", n)
		}
		calls := testCalls(be)
		if len(calls) != 3 {
			t.Fatalf("the backend saw %d calls, want 3", len(calls))
		}
		for i, want := range []struct {
			trace, flags string
		}{{"", "00"}, {unsampledTrace, "00"}, {sampledTrace, "01"}} {
			gotTrace, _, flags := parseTraceparent(t, onlyTraceparent(t, calls[i]))
			if (want.trace != "" && gotTrace != want.trace) || flags != want.flags {
				t.Errorf("call %d: the backend's traceparent has trace %s flags %s, want trace %q flags %s", i, gotTrace, flags, want.trace, want.flags)
			}
		}
	})
}

// TestB92_TracingOffPassesTraceparentThrough: without tracing the client's
// traceparent and tracestate reach the backend as sent, once, and the
// gateway exports nothing.
func TestB92_TracingOffPassesTraceparentThrough(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		be := testutil.StartBackend(t)
		h := e.start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{be.Addr}}}})
		h.routable(t, testutil.TestService, 1)
		cc := testutil.Dial(t, h.addr)
		tp, _, _ := newTraceparent(true)
		ctx := metadata.AppendToOutgoingContext(ctxT(t), "traceparent", tp, "tracestate", "vendor=abc")
		if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("hi")); err != nil {
			t.Fatal(err)
		}
		c := be.NextCall(t)
		if got := onlyTraceparent(t, c); got != tp {
			t.Errorf("the backend got traceparent %q, want the client's %q", got, tp)
		}
		if ts := c.MD.Get("tracestate"); len(ts) != 1 || ts[0] != "vendor=abc" {
			t.Errorf("the backend's tracestate is %q, want the client's once", ts)
		}
	})
}

// accessLog is a slog handler that keeps the access log's lines as text.
type accessLog struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
	slog.Handler
}

func newAccessLog() (*accessLog, *slog.Logger) {
	a := &accessLog{mu: new(sync.Mutex), buf: new(bytes.Buffer)}
	a.Handler = slog.NewTextHandler(lockedWriter{a}, nil)
	return a, slog.New(a)
}

type lockedWriter struct{ a *accessLog }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.a.mu.Lock()
	defer w.a.mu.Unlock()
	return w.a.buf.Write(p)
}

// line waits for the access log line with want in it.
func (a *accessLog) line(t *testing.T, want string) string {
	t.Helper()
	var found string
	testutil.WaitFor(t, 5*time.Second, fmt.Sprintf("an access log line with %q", want), func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, l := range strings.Split(a.buf.String(), "\n") {
			if strings.Contains(l, "component=access") && strings.Contains(l, want) {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

// TestB92_AccessLogHasTraceAndPeer: an access log line names the client's
// address (peer) and the call's trace ID: the client's, continued, with
// tracing on or off; the gateway's new trace when the client sent none and
// tracing is on.
func TestB92_AccessLogHasTraceAndPeer(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		for _, on := range []bool{false, true} {
			t.Run(fmt.Sprintf("tracing=%v", on), func(t *testing.T) {
				be := testutil.StartBackend(t)
				cfg := config.Config{
					Routes: []config.Route{{Service: testutil.TestService, Backends: []string{be.Addr}}},
					Log:    config.Log{Access: true},
				}
				var rcv *testutil.OTLPReceiver
				if on {
					rcv = testutil.StartOTLPReceiver(t)
					cfg.Tracing = tracingConfig(rcv, nil)
				}
				log, logger := newAccessLog()
				h := e.startLog(t, cfg, logger)
				h.routable(t, testutil.TestService, 1)
				cc := testutil.Dial(t, h.addr)
				tp, traceID, _ := newTraceparent(true)
				ctx := metadata.AppendToOutgoingContext(ctxT(t), "traceparent", tp, "x-call", "continued")
				if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("hi")); err != nil {
					t.Fatal(err)
				}
				l := log.line(t, "trace_id="+traceID)
				if !strings.Contains(l, "peer=127.0.0.1:") {
					t.Errorf("access line %q names no peer 127.0.0.1:port", l)
				}
				if _, err := testutil.Unary(ctxT(t), cc, "/test.Svc/Collect", []byte("x")); err != nil {
					t.Fatal(err)
				}
				if !on {
					// Without tracing and a client's trace there is no
					// trace ID to log.
					l := log.line(t, "method=/test.Svc/Collect")
					if strings.Contains(l, "trace_id=") {
						t.Errorf("access line %q has a trace_id, want none", l)
					}
					return
				}
				l = log.line(t, "method=/test.Svc/Collect")
				_, id, ok := strings.Cut(l, "trace_id=")
				if !ok || len(id) < 32 {
					t.Fatalf("access line %q has no trace_id", l)
				}
				id = id[:32]
				server, _ := bySpanKind(t, rcv.WaitTrace(t, id, 2))
				wantAttrs(t, server, map[string]any{"rpc.method": "Collect"})
			})
		}
	})
}

// TestB92_TracingChangeNeedsRestart: a reload that changes the tracing:
// section is reported as needing a restart, and the running gateway keeps
// tracing as it was started.
func TestB92_TracingChangeNeedsRestart(t *testing.T) {
	rcv := testutil.StartOTLPReceiver(t)
	be := testutil.StartBackend(t)
	h := startGateway(t, config.Config{
		Routes:  []config.Route{{Service: testutil.TestService, Backends: []string{be.Addr}}},
		Tracing: tracingConfig(rcv, nil),
	})
	h.routable(t, testutil.TestService, 1)
	next := h.g.Config()
	zero := 0.0
	next.Tracing.SampleRatio = &zero
	restart, err := h.g.Reload(next)
	if err != nil || !slices.Contains(restart, "tracing") {
		t.Fatalf("Reload with another sample_ratio: needs restart %v, %v; want tracing named", restart, err)
	}
	cc := testutil.Dial(t, h.addr)
	if _, err := testutil.Unary(ctxT(t), cc, "/test.Svc/Echo", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the call's spans, sampled by the ratio in force", func() bool { return len(rcv.Spans()) == 2 })
}

// TestB92_GRPCWebCallsTracedOnce: a gRPC-Web call, which the gateway
// bridges into a native call through the engine, is traced once, as that
// call: one server span in the browser's trace, one client span, and one
// traceparent at the backend, the attempt's.
func TestB92_GRPCWebCallsTracedOnce(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		rcv := testutil.StartOTLPReceiver(t)
		b := testutil.StartBackend(t)
		h := e.start(t, config.Config{
			Routes:  []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}},
			GRPCWeb: grpcwebcfg.Settings{Enabled: true},
			Tracing: tracingConfig(rcv, nil),
		})
		h.routable(t, testutil.TestService, 1)
		for _, h2 := range webVersions(e) {
			t.Run(httpName(h2), func(t *testing.T) {
				b.Drain()
				tp, traceID, browserSpan := newTraceparent(true)
				a := newWebClient(t, h.addr, h2).call(t, "/test.Svc/Echo", false, [][]byte{[]byte("x")}, map[string]string{"Traceparent": tp})
				if a.code(t) != codes.OK {
					t.Fatalf("call: %q", a.trailers)
				}
				server, clients := bySpanKind(t, rcv.WaitTrace(t, traceID, 2))
				if parentSpanID(server) != browserSpan || len(clients) != 1 {
					t.Fatalf("server span's parent %s, %d client spans; want the browser's span %s and 1", parentSpanID(server), len(clients), browserSpan)
				}
				_, parent, _ := parseTraceparent(t, onlyTraceparent(t, b.NextCall(t)))
				if parent != spanID(clients[0]) {
					t.Errorf("the backend's traceparent names parent %s, want the attempt's span %s", parent, spanID(clients[0]))
				}
			})
		}
	})
}
