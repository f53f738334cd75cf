// Package tracing records each proxied call as OpenTelemetry spans and
// exports them over OTLP/gRPC: a server span for the call at the gateway,
// and a client span, its child, for each attempt on a backend. It
// implements proxy.Tracer; the proxy itself knows nothing of OpenTelemetry.
//
// The client's W3C trace context (traceparent, tracestate) is continued:
// the server span is its child, and the backend gets the trace context of
// its attempt's span in place of the client's. Sampling is parent-based: a
// call that continues a client's trace is recorded iff the client's trace
// is sampled; a new trace is recorded with the configured ratio.
//
// go.opentelemetry.io/otel is the reference implementation of the
// OpenTelemetry API and SDK for Go, kept by the OpenTelemetry project; its
// OTLP/gRPC exporter speaks to every collector and tracing backend that
// takes OTLP, over the grpc-go the gateway already uses.
package tracing

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/healthgate/healthgate/proxy"
	"github.com/healthgate/healthgate/tracing/tracingcfg"
)

// Config is the tracing: section of the config file; see tracingcfg.
type Config = tracingcfg.Config

// Attribute keys beyond OpenTelemetry's semantic conventions for RPC.
const (
	// RouteKey names the gateway route of the call.
	RouteKey = "healthgate.route"
	// RetryKey counts the attempts of the call before this one: 0 for the
	// first, n for the n-th time the call was sent again (to a backend
	// that did not accept it, or by the route's retry policy).
	RetryKey = "healthgate.retry"
	// BackendKey is the backend's address (host:port) as the gateway
	// dials it.
	BackendKey = "healthgate.backend"
)

// Tracer traces proxied calls once Start has run, until Shutdown.
type Tracer struct {
	cfg  Config
	opts []otlptracegrpc.Option
	log  *slog.Logger
	// tracer is the provider's tracer while the Tracer runs; nil before
	// Start and after Shutdown, when calls are not traced.
	tracer atomic.Pointer[trace.Tracer]

	mu sync.Mutex // guards the fields below
	// provider owns the batch span processor's goroutine, exporter the
	// OTLP connection.
	provider *sdktrace.TracerProvider
	exporter sdktrace.SpanExporter
}

var _ proxy.Tracer = (*Tracer)(nil)

// New returns a Tracer for cfg, or nil when cfg turns tracing off. It
// starts nothing: Start does. Failed exports are logged to logger (nil for
// none), once each time exporting starts or stops failing.
func New(cfg Config, logger *slog.Logger) (*Tracer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	if !cfg.Enabled() {
		return nil, nil
	}
	cfg = cfg.WithDefaults()
	opts := []otlptracegrpc.Option{
		otlptracegrpc.WithEndpoint(cfg.OTLPEndpoint),
		otlptracegrpc.WithTimeout(cfg.ExportTimeout),
	}
	if len(cfg.Headers) > 0 {
		opts = append(opts, otlptracegrpc.WithHeaders(cfg.Headers))
	}
	if cfg.Insecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	} else {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("tracing: ca_file: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("tracing: ca_file: no PEM certificate in %s", cfg.CAFile)
			}
		}
		opts = append(opts, otlptracegrpc.WithTLSCredentials(credentials.NewTLS(tc)))
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Tracer{cfg: cfg, opts: opts, log: logger.With("component", "tracing")}, nil
}

// Start begins exporting: from now on, calls are traced. Shutdown stops
// what it starts.
func (t *Tracer) Start(ctx context.Context) error {
	// The exporter dials lazily: a collector that is down costs failed
	// exports, never a failed start.
	exp, err := otlptracegrpc.New(ctx, t.opts...)
	if err != nil {
		return fmt.Errorf("tracing: otlp exporter for %s: %w", t.cfg.OTLPEndpoint, err)
	}
	logged := &loggedExporter{SpanExporter: exp, log: t.log, endpoint: t.cfg.OTLPEndpoint}
	res := resource.NewSchemaless(attribute.String("service.name", t.cfg.ServiceName))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(logged, sdktrace.WithBatchTimeout(t.cfg.BatchTimeout), sdktrace.WithExportTimeout(t.cfg.ExportTimeout)),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(t.cfg.Ratio()))),
		sdktrace.WithResource(res),
	)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.provider != nil {
		_ = tp.Shutdown(ctx)
		return errors.New("tracing: started twice")
	}
	t.provider, t.exporter = tp, exp
	tr := tp.Tracer("github.com/healthgate/healthgate/tracing")
	t.tracer.Store(&tr)
	return nil
}

// Shutdown stops tracing new calls, sends the spans not yet exported
// within ctx, and stops the exporter and its goroutines, also when the
// collector does not answer: an export still retrying when ctx ends is
// abandoned.
func (t *Tracer) Shutdown(ctx context.Context) error {
	t.tracer.Store(nil)
	t.mu.Lock()
	tp, exp := t.provider, t.exporter
	t.provider, t.exporter = nil, nil
	t.mu.Unlock()
	if tp == nil {
		return nil
	}
	// The provider's own Shutdown stops waiting when ctx ends but leaves
	// its goroutine in an export that retries for up to export_timeout:
	// the exporter is stopped first, which ends such an export at once.
	ferr := tp.ForceFlush(ctx)
	eerr := exp.Shutdown(ctx)
	// With the exporter stopped, what is left fails at once: this waits
	// only for the processor's goroutine to return.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	serr := tp.Shutdown(sctx)
	if err := errors.Join(ferr, eerr, serr); err != nil {
		return fmt.Errorf("tracing: shutdown: %w", err)
	}
	return nil
}

// loggedExporter logs the exports that fail in the gateway's log, when
// they start and stop failing, rather than each one; the SDK would report
// each on stderr through OpenTelemetry's process-wide error handler.
type loggedExporter struct {
	sdktrace.SpanExporter
	log      *slog.Logger
	endpoint string
	// failing: the last export failed. Exports run on the batch span
	// processor's one goroutine, but ForceFlush may run one beside it.
	failing atomic.Bool
}

func (e *loggedExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	switch {
	case err != nil && !e.failing.Swap(true):
		e.log.Warn("exporting spans failed; spans are dropped until the collector answers", "otlp_endpoint", e.endpoint, "spans", len(spans), "err", err)
	case err == nil && e.failing.Swap(false):
		e.log.Info("exporting spans works again", "otlp_endpoint", e.endpoint)
	}
	return nil
}

// headerCarrier reads a call's request headers as a propagator does.
type headerCarrier struct{ h proxy.Headers }

func (c headerCarrier) Get(key string) string { return c.h.Get(key) }
func (c headerCarrier) Set(string, string)    {}
func (c headerCarrier) Keys() []string        { return nil }

// setCarrier writes the headers a propagator injects.
type setCarrier func(name, value string)

func (c setCarrier) Get(string) string     { return "" }
func (c setCarrier) Set(key, value string) { c(key, value) }
func (c setCarrier) Keys() []string        { return nil }

// StartCall implements proxy.Tracer.
func (t *Tracer) StartCall(fullMethod string, h proxy.Headers, peer net.Addr) proxy.CallSpan {
	trp := t.tracer.Load()
	if trp == nil {
		return nil
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), headerCarrier{h})
	service, method := splitMethod(fullMethod)
	attrs := make([]attribute.KeyValue, 0, 5)
	attrs = append(attrs,
		attribute.String("rpc.system", "grpc"),
		attribute.String("rpc.service", service),
		attribute.String("rpc.method", method),
	)
	if peer != nil {
		if host, port, err := net.SplitHostPort(peer.String()); err == nil {
			attrs = append(attrs, attribute.String("client.address", host))
			if p, err := strconv.Atoi(port); err == nil {
				attrs = append(attrs, attribute.Int("client.port", p))
			}
		}
	}
	name := strings.TrimPrefix(fullMethod, "/")
	ctx, span := (*trp).Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
	return &callSpan{tracer: *trp, ctx: ctx, span: span, name: name, service: service, method: method}
}

// callSpan is a call's server span.
type callSpan struct {
	tracer          trace.Tracer
	ctx             context.Context
	span            trace.Span
	name            string
	service, method string
}

// StartAttempt implements proxy.CallSpan.
func (c *callSpan) StartAttempt(route, backend string, retry int) proxy.AttemptSpan {
	attrs := make([]attribute.KeyValue, 0, 8)
	attrs = append(attrs,
		attribute.String("rpc.system", "grpc"),
		attribute.String("rpc.service", c.service),
		attribute.String("rpc.method", c.method),
		attribute.String(RouteKey, route),
		attribute.String(BackendKey, backend),
		attribute.Int(RetryKey, retry),
	)
	if host, port, err := net.SplitHostPort(backend); err == nil {
		attrs = append(attrs, attribute.String("server.address", host))
		if p, err := strconv.Atoi(port); err == nil {
			attrs = append(attrs, attribute.Int("server.port", p))
		}
	}
	_, span := c.tracer.Start(c.ctx, c.name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return attemptSpan{span}
}

// End implements proxy.CallSpan.
func (c *callSpan) End(route string, code codes.Code) {
	if route != "" {
		c.span.SetAttributes(attribute.String(RouteKey, route))
	}
	c.span.SetAttributes(attribute.Int("rpc.grpc.status_code", int(code)))
	if serverError(code) {
		c.span.SetStatus(otelcodes.Error, code.String())
	}
	c.span.End()
}

// TraceID implements proxy.CallSpan.
func (c *callSpan) TraceID() string { return c.span.SpanContext().TraceID().String() }

// attemptSpan is an attempt's client span.
type attemptSpan struct{ span trace.Span }

// Propagate implements proxy.AttemptSpan.
func (a attemptSpan) Propagate(set func(name, value string)) {
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), a.span.SpanContext()), setCarrier(set))
}

// End implements proxy.AttemptSpan.
func (a attemptSpan) End(code codes.Code) {
	a.span.SetAttributes(attribute.Int("rpc.grpc.status_code", int(code)))
	if code != codes.OK {
		// A client span is in error whatever the code, as the semantic
		// conventions for gRPC say.
		a.span.SetStatus(otelcodes.Error, code.String())
	}
	a.span.End()
}

// serverError reports whether a server span ending with code is in error:
// per OpenTelemetry's semantic conventions for gRPC, only the codes that
// say the server failed; the others are the client's doing.
func serverError(code codes.Code) bool {
	switch code {
	case codes.Unknown, codes.DeadlineExceeded, codes.Unimplemented, codes.Internal, codes.Unavailable, codes.DataLoss:
		return true
	}
	return false
}

// splitMethod splits "/pkg.Service/Method" into its service and method.
func splitMethod(fullMethod string) (string, string) {
	s := strings.TrimPrefix(fullMethod, "/")
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		return s[:i], s[i+1:]
	}
	return s, ""
}
