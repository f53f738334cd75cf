package proxy

import (
	"net"

	"google.golang.org/grpc/codes"
)

// Tracing: both engines tell a Tracer of each call at the same points (the
// call's request headers, each attempt on a backend, the end of each attempt
// and of the call) and send the backend the trace context of its attempt.
// The proxy knows nothing of how spans are recorded or exported.

// Tracer traces calls. Its methods, and those of the spans it returns, run
// on the call's goroutines and must not block.
type Tracer interface {
	// StartCall begins the trace of a call to fullMethod whose request
	// headers (with the client's trace context, if any) are h, from the
	// client at peer (nil when unknown). It returns nil for a call it does
	// not trace.
	StartCall(fullMethod string, h Headers, peer net.Addr) CallSpan
}

// CallSpan is one call's trace at the gateway.
type CallSpan interface {
	// StartAttempt begins the attempt to send the call to backend (its
	// address) of route; retry counts the attempts before it (0 for the
	// first).
	StartAttempt(route, backend string, retry int) AttemptSpan
	// End ends the call with the status the client gets. route is "" when
	// no route covered it.
	End(route string, code codes.Code)
	// TraceID is the call's trace ID in hex, for the access log.
	TraceID() string
}

// AttemptSpan is one attempt of a call on a backend.
type AttemptSpan interface {
	// Propagate calls set with each header that carries the attempt's
	// trace context to the backend (traceparent, and tracestate when
	// there is one); they replace the client's.
	Propagate(set func(name, value string))
	// End ends the attempt with its outcome on the backend.
	End(code codes.Code)
}

// The W3C trace context headers.
const (
	traceparentKey = "traceparent"
	tracestateKey  = "tracestate"
)

// callTrace is a call's trace as the engines keep it. The zero value is a
// call not traced, and every method of it costs a nil check.
type callTrace struct {
	span CallSpan
	// att is the attempt in progress; nil between attempts.
	att AttemptSpan
}

// startTrace begins the trace of a call, when the proxy traces.
func (p *Proxy) startTrace(fullMethod string, h Headers, peer net.Addr) callTrace {
	if p.cfg.Tracer == nil {
		return callTrace{}
	}
	return callTrace{span: p.cfg.Tracer.StartCall(fullMethod, h, peer)}
}

// attempt begins an attempt on up.
func (t *callTrace) attempt(route string, up Upstream, retry int) {
	if t.span == nil {
		return
	}
	if t.att != nil {
		t.att.End(codes.Unavailable)
	}
	t.att = t.span.StartAttempt(route, up.Addr(), retry)
}

// done tells up, and the attempt's span, how the attempt on it ended. Every
// Upstream.Done of an engine goes through it.
func (t *callTrace) done(up Upstream, o Outcome) {
	up.Done(o)
	if t.att != nil {
		t.att.End(o.Code)
		t.att = nil
	}
}

// end ends the call's trace with the client's status.
func (t *callTrace) end(route string, code codes.Code) {
	if t.span == nil {
		return
	}
	if t.att != nil {
		t.att.End(code)
		t.att = nil
	}
	t.span.End(route, code)
}

// traceID is the call's trace ID for the access log: the span's, else the
// one in the client's traceparent (tp) when it is valid, else "".
func (t *callTrace) traceID(tp string) string {
	if t.span != nil {
		return t.span.TraceID()
	}
	return traceIDOf(tp)
}

// traceIDOf is the trace ID of a W3C traceparent header
// ("00-<32 hex>-<16 hex>-<2 hex>"), or "" when it is not a valid one. It
// returns part of tp: the access log of a call not traced allocates
// nothing for it.
func traceIDOf(tp string) string {
	if len(tp) < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-' || (len(tp) > 55 && tp[55] != '-') {
		return ""
	}
	version := tp[:2]
	if !isLowerHex(version) || version == "ff" || (version == "00" && len(tp) != 55) {
		return ""
	}
	id, parent := tp[3:35], tp[36:52]
	if !isLowerHex(id) || !isLowerHex(parent) || !isLowerHex(tp[53:55]) || allZero(id) || allZero(parent) {
		return ""
	}
	return id
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func allZero(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '0' {
			return false
		}
	}
	return true
}
