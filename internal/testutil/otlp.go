package testutil

import (
	"context"
	"encoding/hex"
	"net"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// OTLPReceiver is an OTLP/gRPC trace receiver on loopback (plaintext) that
// keeps every span exported to it, as a collector would receive them.
type OTLPReceiver struct {
	coltracepb.UnimplementedTraceServiceServer
	Addr string
	srv  *grpc.Server

	mu sync.Mutex // guards the fields below
	// spans are every span received, in order; services the service.name
	// of the resource each came with.
	spans    []*tracepb.Span
	services []string
}

// StartOTLPReceiver starts a receiver on a free loopback port and stops it
// at the end of the test.
func StartOTLPReceiver(t testing.TB) *OTLPReceiver {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("otlp receiver listen: %v", err)
	}
	r := &OTLPReceiver{Addr: lis.Addr().String(), srv: grpc.NewServer()}
	coltracepb.RegisterTraceServiceServer(r.srv, r)
	go r.srv.Serve(lis) //nolint:errcheck // ends with Stop
	t.Cleanup(r.srv.Stop)
	return r
}

// Export implements the OTLP trace service.
func (r *OTLPReceiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		var service string
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				r.spans = append(r.spans, s)
				r.services = append(r.services, service)
			}
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// Spans returns the spans received so far.
func (r *OTLPReceiver) Spans() []*tracepb.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*tracepb.Span(nil), r.spans...)
}

// Services returns the service.name of each span received so far.
func (r *OTLPReceiver) Services() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.services...)
}

// Trace returns the spans received so far of the trace with the hex ID
// traceID.
func (r *OTLPReceiver) Trace(traceID string) []*tracepb.Span {
	var out []*tracepb.Span
	for _, s := range r.Spans() {
		if hex.EncodeToString(s.GetTraceId()) == traceID {
			out = append(out, s)
		}
	}
	return out
}

// WaitTrace waits until the trace traceID has n spans and returns them.
func (r *OTLPReceiver) WaitTrace(t testing.TB, traceID string, n int) []*tracepb.Span {
	t.Helper()
	var got []*tracepb.Span
	WaitFor(t, 10*time.Second, "the trace's spans at the OTLP receiver", func() bool {
		got = r.Trace(traceID)
		return len(got) >= n
	})
	if len(got) != n {
		t.Fatalf("trace %s has %d spans, want %d", traceID, len(got), n)
	}
	return got
}

// SpanAttr returns the attribute key of s as a Go value (string, int64,
// bool or float64), and whether it has it.
func SpanAttr(s *tracepb.Span, key string) (any, bool) {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			return anyValue(kv.GetValue()), true
		}
	}
	return nil, false
}

func anyValue(v *commonpb.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_DoubleValue:
		return x.DoubleValue
	}
	return v.String()
}
