package tracing

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"

	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/tracing/tracingcfg"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type headers map[string]string

func (h headers) Get(name string) string { return h[name] }

// TestOffIsNil: a config without an endpoint gives no Tracer at all, and a
// bad one is refused naming its field.
func TestOffIsNil(t *testing.T) {
	if tr, err := New(tracingcfg.Config{}, nil); tr != nil || err != nil {
		t.Fatalf("New(zero) = %v, %v; want nil, nil", tr, err)
	}
	if _, err := New(tracingcfg.Config{OTLPEndpoint: "nohost"}, nil); err == nil || !strings.Contains(err.Error(), "otlp_endpoint") {
		t.Fatalf("New with a bad endpoint: %v, want an error naming otlp_endpoint", err)
	}
	if _, err := New(tracingcfg.Config{OTLPEndpoint: "h:4317", CAFile: "/nonexistent/ca.pem"}, nil); err == nil || !strings.Contains(err.Error(), "ca_file") {
		t.Fatalf("New with a missing CA file: %v, want an error naming ca_file", err)
	}
}

// TestTracesOnlyWhileRunning: before Start and after Shutdown calls are not
// traced; in between they are, and the trace context the backend gets is
// the attempt's, in the client's trace. Shutdown stops every goroutine
// Start began, even with no collector listening.
func TestTracesOnlyWhileRunning(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nobody listens: exports fail, which must not matter
	var logs testutil.SyncBuffer
	tr, err := New(tracingcfg.Config{OTLPEndpoint: addr, Insecure: true}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	h := headers{"traceparent": tp}
	if cs := tr.StartCall("/a.S/M", h, nil); cs != nil {
		t.Fatal("a call was traced before Start")
	}
	if err := tr.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	cs := tr.StartCall("/a.S/M", h, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5})
	if cs == nil {
		t.Fatal("a call was not traced after Start")
	}
	if got := cs.TraceID(); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("TraceID() = %s, want the client's", got)
	}
	att := cs.StartAttempt("a.S", "10.0.0.1:50051", 0)
	sent := map[string]string{}
	att.Propagate(func(k, v string) { sent[k] = v })
	if got := sent["traceparent"]; !strings.HasPrefix(got, "00-4bf92f3577b34da6a3ce929d0e0e4736-") || strings.Contains(got, "00f067aa0ba902b7") || !strings.HasSuffix(got, "-01") {
		t.Errorf("the backend's traceparent %q is not a sampled child in the client's trace", got)
	}
	att.End(codes.OK)
	cs.End("a.S", codes.OK)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	if err := tr.Shutdown(ctx); err == nil {
		t.Error("Shutdown reported the spans sent, with nobody listening")
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("Shutdown took %s with a deadline of 200ms", d)
	}
	if cs := tr.StartCall("/a.S/M", h, nil); cs != nil {
		t.Fatal("a call was traced after Shutdown")
	}
	if got := logs.String(); strings.Count(got, "exporting spans failed") != 1 || !strings.Contains(got, "component=tracing") {
		t.Errorf("log %q, want the failed export logged once", got)
	}
}

// flakyExporter fails the exports while fail is set.
type flakyExporter struct {
	sdktrace.SpanExporter
	fail bool
}

func (f *flakyExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error {
	if f.fail {
		return errors.New("collector down")
	}
	return nil
}

// TestExportFailuresLoggedOnChange: failing exports are logged when they
// start failing and when they work again, not each time.
func TestExportFailuresLoggedOnChange(t *testing.T) {
	var logs testutil.SyncBuffer
	inner := &flakyExporter{}
	e := &loggedExporter{SpanExporter: inner, log: slog.New(slog.NewTextHandler(&logs, nil)), endpoint: "c:4317"}
	for _, fail := range []bool{false, true, true, true, false, false, true} {
		inner.fail = fail
		if err := e.ExportSpans(context.Background(), nil); err != nil {
			t.Fatalf("ExportSpans = %v, want nil: the failure is logged here, not handed to the SDK", err)
		}
	}
	got := logs.String()
	if n, m := strings.Count(got, "exporting spans failed"), strings.Count(got, "exporting spans works again"); n != 2 || m != 1 {
		t.Errorf("%d failure lines and %d recovery lines, want 2 and 1:\n%s", n, m, got)
	}
}

func TestSplitMethod(t *testing.T) {
	for _, tc := range []struct{ in, svc, m string }{
		{"/pkg.Svc/Method", "pkg.Svc", "Method"},
		{"/a/b/c", "a/b", "c"},
		{"/nomethod", "nomethod", ""},
	} {
		if s, m := splitMethod(tc.in); s != tc.svc || m != tc.m {
			t.Errorf("splitMethod(%q) = %q, %q; want %q, %q", tc.in, s, m, tc.svc, tc.m)
		}
	}
}
