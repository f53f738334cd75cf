// Package proxy forwards gRPC calls of any service, of all four kinds, to an
// upstream chosen per call, moving message bytes without decoding them.
//
// The proxy knows nothing of routes, health or Consul: it asks a Picker for
// the upstream of each call and reports back when the call ends. Headers,
// trailers and statuses are passed on as the backend sent them; see the
// README's "Forwarding policy" for the few headers the proxy sets itself.
package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/proxy/proxycfg"
)

// DefaultMaxMessageBytes is gRPC's own default limit for a received message.
const DefaultMaxMessageBytes = proxycfg.DefaultMaxMessageBytes

// Settings is the proxy: section of the config file; see proxycfg for why
// it is defined there.
type Settings = proxycfg.Settings

// Upstream is the backend chosen for one call. It says nothing of how calls
// reach it: each forwarding engine declares what it needs of an Upstream
// (the grpc engine: a NewStream method, see grpcUpstream), so that engines
// share the Picker, the Observer and the forwarding policy.
type Upstream interface {
	// Addr names the upstream in logs and metrics.
	Addr() string
	// Done is called exactly once when a call that Pick returned this
	// upstream for has ended, or was not accepted and goes elsewhere.
	Done(Outcome)
}

// Outcome is how a call ended on one upstream.
type Outcome struct {
	// Code is the status the call ended with on this upstream.
	Code codes.Code
	// Origin says who ended it that way.
	Origin Origin
}

// Origin is who ended a call.
type Origin uint8

const (
	// FromBackend: the backend's application answered with the status.
	FromBackend Origin = iota
	// FromClient: the client cancelled, its deadline passed while the
	// backend was answering, or it sent what the gateway refused.
	FromClient
	// Local: the backend failed the call itself: the stream could not be
	// opened, the connection broke or the stream was reset, or the
	// deadline passed before the backend sent a response header.
	Local
)

// Observer is told of every call, for metrics and access logs. Its methods
// run on the call's goroutine and must not block.
type Observer interface {
	CallStarted()
	CallFinished(CallInfo)
}

// identityObserver is an Observer that says whether it reads
// CallInfo.ClientIdentity; one that does not spare every call the lookup.
type identityObserver interface {
	WantsClientIdentity() bool
}

// CallInfo describes a finished call.
type CallInfo struct {
	// FullMethod is "/pkg.Service/Method".
	FullMethod string
	// Upstream is the backend's address; empty when none was picked.
	Upstream string
	// Routed is false when no route covered the service.
	Routed bool
	// Route names the call's route; empty when it had none.
	Route    string
	Code     codes.Code
	Duration time.Duration
	// RequestBytes and ResponseBytes count message payloads as forwarded.
	RequestBytes, ResponseBytes int64
	// Attempts is how many backends the call was sent to: more than one
	// when a backend did not accept it, or when it was retried.
	Attempts int
	// Retries counts the attempts after a backend's answer (the route's
	// retry policy); RetryBudgetExhausted says the route's retry budget
	// refused one.
	Retries              int
	RetryBudgetExhausted bool
	// ClientIdentity is what the client's verified TLS certificate says it
	// is (URI SAN, else DNS SAN, else common name); empty without one.
	ClientIdentity string
	// TraceID is the call's trace ID in hex: its span's when the call is
	// traced, else the one of the traceparent the client sent, if valid;
	// empty otherwise.
	TraceID string
	// Peer is the client's address; nil when unknown.
	Peer net.Addr
}

// Headers are a call's request headers as a Picker may read them.
type Headers interface {
	// Get returns the first value of the lowercase header name, or "".
	Get(name string) string
}

// Picker chooses where each call goes: its route, then in it the upstream
// of each attempt.
type Picker interface {
	// Route returns the route of a call to fullMethod
	// ("/package.Service/Method") whose request headers are h: the route
	// covering the service, narrowed to the backends the headers select
	// when the route says so. It must not block. An error carrying a gRPC
	// status (see status.FromError) reaches the client with that status;
	// any other error reaches it as UNAVAILABLE.
	Route(fullMethod string, h Headers) (Route, error)
}

// Route is where one call goes, as the Picker chose it.
type Route struct {
	// Name names the route in logs and metrics.
	Name string
	// Policy is the route's traffic policy; nil means the proxy's own
	// settings alone.
	Policy *RoutePolicy
	// Backends chooses the upstream of each attempt.
	Backends Backends
}

// RoutePolicy is a route's traffic policy; see proxycfg for why it is
// defined there.
type RoutePolicy = proxycfg.RoutePolicy

// Backends chooses among a route's upstreams.
type Backends interface {
	// Pick returns the upstream for an attempt, other than those in tried:
	// upstreams the call was sent to that did not accept it. It must not
	// block: when no backend can take the call it fails at once, with an
	// error as Picker.Route's.
	Pick(tried []Upstream) (Upstream, error)
}

// timeout is the deadline a call without one of its own gets on route rt:
// the route's, else the proxy's default; false for none.
func (p *Proxy) timeout(rt *Route) (time.Duration, bool) {
	if rt.Policy != nil && rt.Policy.Timeout > 0 {
		return rt.Policy.Timeout, true
	}
	return p.cfg.DefaultTimeout, p.cfg.DefaultTimeout > 0
}

// Config tunes forwarding. The zero value is ready to use.
type Config struct {
	// Settings is what the config file sets.
	Settings
	// Observer, if set, is told of every call.
	Observer Observer
	// Tracer, if set, traces every call; nil costs the calls nothing.
	Tracer Tracer
	// ListenTLS, if set, terminates TLS on the listener (ALPN h2 is added).
	ListenTLS *tls.Config
	// MaxAttempts bounds how many backends one call is sent to when a
	// backend does not accept it (its connection broke between the pick
	// and the send, is not READY, or the backend refused the stream or
	// sent GOAWAY before it). Zero means 3.
	MaxAttempts int
	// ReplayBufferBytes bounds the request bytes a call keeps, until the
	// backend answers, to send again to another backend when the first
	// did not accept it; a call with more is not sent again. Zero means
	// DefaultReplayBufferBytes; negative turns keeping off.
	ReplayBufferBytes int
}

// Validate reports the first field that cannot be used.
func (c Config) Validate() error {
	if c.MaxAttempts < 0 {
		return fmt.Errorf("max_attempts: must not be negative, got %d", c.MaxAttempts)
	}
	return c.Settings.Validate()
}

func (c Config) withDefaults() Config {
	c.Settings = c.Settings.WithDefaults()
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 3
	}
	if c.ReplayBufferBytes == 0 {
		c.ReplayBufferBytes = DefaultReplayBufferBytes
	}
	return c
}

// Proxy is a grpc.Server handler for every method the server does not
// implement itself.
type Proxy struct {
	cfg    Config
	picker Picker
	log    *slog.Logger
	codec  codec
	// trusted is cfg.TrustedProxies, parsed once.
	trusted []netip.Prefix
	// identity: the observer reads the client's TLS identity.
	identity bool
	// retries are the routes' retry budgets.
	retries *retries
	// callOpts are the options of every backend call that keeps the default
	// content subtype; built once because they are the same for all calls.
	callOpts []grpc.CallOption
}

// New returns a proxy that forwards to the upstreams picker chooses.
func New(cfg Config, picker Picker, logger *slog.Logger) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if picker == nil {
		return nil, errors.New("proxy: nil picker")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	trusted, err := cfg.TrustedPrefixes()
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	p := &Proxy{
		trusted: trusted,
		cfg:     cfg,
		picker:  picker,
		log:     logger.With("component", "proxy"),
		codec:   newCodec(),
		retries: newRetries(),
	}
	if o, ok := cfg.Observer.(identityObserver); ok {
		p.identity = o.WantsClientIdentity()
	}
	p.callOpts = []grpc.CallOption{
		grpc.ForceCodecV2(p.codec),
		grpc.MaxCallSendMsgSize(cfg.MaxRequestBytes),
		grpc.MaxCallRecvMsgSize(cfg.MaxResponseBytes),
	}
	return p, nil
}

// ServerOptions returns the options that make a grpc.Server forward every
// method it does not serve itself. Services registered on the same server
// (the gateway's own health service) keep working: the codec falls back to
// protobuf for their typed messages.
func (p *Proxy) ServerOptions() []grpc.ServerOption {
	l := p.cfg.Limits
	opts := []grpc.ServerOption{
		grpc.ForceServerCodecV2(p.codec),
		grpc.UnknownServiceHandler(p.handle),
		grpc.MaxRecvMsgSize(p.cfg.MaxRequestBytes),
		grpc.MaxSendMsgSize(p.cfg.MaxResponseBytes),
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreams),
		grpc.MaxHeaderListSize(l.MaxHeaderListBytes),
		grpc.ConnectionTimeout(l.HandshakeTimeout),
		// Edge clients keep connections alive through NATs and load
		// balancers with PINGs, also between calls; more often than the
		// minimum is a flood, answered with GOAWAY ENHANCE_YOUR_CALM.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: l.MinPingInterval, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle:     l.IdleTimeout,
			MaxConnectionAge:      l.MaxConnectionAge,
			MaxConnectionAgeGrace: grace(l.MaxConnectionAgeGrace),
		}),
	}
	if p.cfg.ListenTLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(p.cfg.ListenTLS)))
	}
	return opts
}

// grace is MaxConnectionAgeGrace for grpc: zero means no end, which grpc
// spells as the longest duration.
func grace(d time.Duration) time.Duration {
	if d == 0 {
		return time.Duration(math.MaxInt64)
	}
	return d
}

// pickStatus is the status of a failed pick.
func pickStatus(err error) *status.Status {
	if st, ok := status.FromError(err); ok {
		return st
	}
	return status.New(codes.Unavailable, err.Error())
}
