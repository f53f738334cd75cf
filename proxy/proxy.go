// Package proxy forwards gRPC calls of any service, of all four kinds, to an
// upstream chosen per call, moving message bytes without decoding them.
//
// The proxy knows nothing of routes, health or Consul: it asks a Picker for
// the upstream of each call and reports back when the call ends. Headers,
// trailers and statuses are passed on as the backend sent them; see the
// README's "Forwarding policy" for the few headers the proxy sets itself.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// DefaultMaxMessageBytes is gRPC's own default limit for a received message.
const DefaultMaxMessageBytes = 4 << 20

// Upstream is the destination of one call: usually one backend's connection.
type Upstream interface {
	NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error)
	// Done is called exactly once when a call that Pick returned this
	// upstream for has ended, with the error the client got (nil for OK).
	Done(err error)
	// Addr names the upstream in logs and metrics.
	Addr() string
}

// Observer is told of every call, for metrics and access logs. Its methods
// run on the call's goroutine and must not block.
type Observer interface {
	CallStarted()
	CallFinished(CallInfo)
}

// CallInfo describes a finished call.
type CallInfo struct {
	// FullMethod is "/pkg.Service/Method".
	FullMethod string
	// Upstream is the backend's address; empty when none was picked.
	Upstream string
	// Routed is false when no route covered the service.
	Routed   bool
	Code     codes.Code
	Duration time.Duration
	// RequestBytes and ResponseBytes count message payloads as forwarded.
	RequestBytes, ResponseBytes int64
}

// Picker chooses the upstream of each call.
type Picker interface {
	// Pick returns the upstream for a call to fullMethod
	// ("/package.Service/Method"). It must not block: when no backend can
	// take the call it fails at once. An error carrying a gRPC status
	// (see status.FromError) reaches the client with that status; any other
	// error reaches it as UNAVAILABLE.
	Pick(ctx context.Context, fullMethod string) (Upstream, error)
}

// Config tunes forwarding. The zero value is ready to use.
type Config struct {
	// MaxRequestBytes limits one message sent by a client, on both hops.
	// Zero means DefaultMaxMessageBytes.
	MaxRequestBytes int
	// MaxResponseBytes limits one message sent by a backend, on both hops.
	// Zero means DefaultMaxMessageBytes.
	MaxResponseBytes int
	// DefaultTimeout is the deadline given to calls that arrive without one.
	// Zero means such calls get none, as they would without the gateway.
	DefaultTimeout time.Duration
	// Observer, if set, is told of every call.
	Observer Observer
}

// Validate reports the first field that cannot be used.
func (c Config) Validate() error {
	switch {
	case c.MaxRequestBytes < 0:
		return fmt.Errorf("max_request_bytes: must not be negative, got %d", c.MaxRequestBytes)
	case c.MaxResponseBytes < 0:
		return fmt.Errorf("max_response_bytes: must not be negative, got %d", c.MaxResponseBytes)
	case c.DefaultTimeout < 0:
		return fmt.Errorf("default_timeout: must not be negative, got %s", c.DefaultTimeout)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.MaxRequestBytes == 0 {
		c.MaxRequestBytes = DefaultMaxMessageBytes
	}
	if c.MaxResponseBytes == 0 {
		c.MaxResponseBytes = DefaultMaxMessageBytes
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
	p := &Proxy{
		cfg:    cfg,
		picker: picker,
		log:    logger.With("component", "proxy"),
		codec:  newCodec(),
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
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(p.codec),
		grpc.UnknownServiceHandler(p.handle),
		grpc.MaxRecvMsgSize(p.cfg.MaxRequestBytes),
		grpc.MaxSendMsgSize(p.cfg.MaxResponseBytes),
	}
}

// streamDesc makes every backend call a bidi stream: the proxy cannot know
// the method's kind, and a bidi stream carries the other three exactly.
var streamDesc = grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

func (p *Proxy) handle(_ any, ss grpc.ServerStream) error {
	ctx := ss.Context()
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "healthgate: no method on server stream")
	}
	// arrived dates the call for the observer and for telling a deadline
	// from a cancel.
	arrived := time.Now()
	obs := p.cfg.Observer
	if obs != nil {
		obs.CallStarted()
	}
	up, err := p.picker.Pick(ctx, method)
	if err != nil {
		st := pickStatus(err)
		if obs != nil {
			obs.CallFinished(CallInfo{FullMethod: method, Routed: st.Code() != codes.Unimplemented, Code: st.Code(), Duration: time.Since(arrived)})
		}
		return st.Err()
	}
	var n byteCounts
	err = p.forward(ctx, ss, up, method, arrived, &n)
	up.Done(err)
	if obs != nil {
		obs.CallFinished(CallInfo{
			FullMethod: method, Upstream: up.Addr(), Routed: true,
			Code: status.Code(err), Duration: time.Since(arrived),
			RequestBytes: n.req.Load(), ResponseBytes: n.resp,
		})
	}
	return err
}

// byteCounts are a call's forwarded payload bytes. Requests are counted on
// their own goroutine, hence the atomic.
type byteCounts struct {
	req  atomic.Int64
	resp int64
}

func pickStatus(err error) *status.Status {
	if st, ok := status.FromError(err); ok {
		return st
	}
	return status.New(codes.Unavailable, err.Error())
}

func (p *Proxy) forward(ctx context.Context, ss grpc.ServerStream, up Upstream, method string, arrived time.Time, n *byteCounts) error {
	if _, ok := ctx.Deadline(); !ok && p.cfg.DefaultTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.DefaultTimeout)
		defer cancel()
	}
	// Cancelling this context is how the backend learns that the call is
	// over from the client's side (cancel, deadline, oversized message).
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	opts := p.callOpts
	if sub := contentSubtype(ctx); sub != "" {
		opts = append(opts[:len(opts):len(opts)], grpc.CallContentSubtype(sub))
	}
	cs, err := up.NewStream(metadata.NewOutgoingContext(ctx, outgoingMD(ctx)), &streamDesc, method, opts...)
	if err != nil {
		return clientError(ctx, arrived, err)
	}

	go p.forwardRequests(ss, cs, cancel, &n.req)

	// Headers go to the client as soon as the backend sends them, before any
	// message and whatever follows. A backend that answers with a
	// trailers-only response (a status and nothing else) has no headers to
	// pass on: Header returns nil metadata, and the client must get a
	// trailers-only response too, or its retry policy would not apply.
	if md, _ := cs.Header(); md != nil {
		if err := ss.SendHeader(md); err != nil {
			return clientError(ctx, arrived, err)
		}
	}
	var f Frame
	for {
		if err := cs.RecvMsg(&f); err != nil {
			ss.SetTrailer(cs.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return clientError(ctx, arrived, err)
		}
		n.resp += int64(f.Len())
		if err := ss.SendMsg(&f); err != nil {
			f.Free()
			return clientError(ctx, arrived, err)
		}
	}
}

// forwardRequests copies the client's messages to the backend until the
// client half-closes. It ends the backend call when the client side fails,
// so that the receive loop in forward stops too. It may outlive the handler
// when the backend ends the call first; grpc ends the client stream then,
// which unblocks RecvMsg.
func (p *Proxy) forwardRequests(ss grpc.ServerStream, cs grpc.ClientStream, cancel context.CancelCauseFunc, n *atomic.Int64) {
	var f Frame
	for {
		if err := ss.RecvMsg(&f); err != nil {
			if errors.Is(err, io.EOF) {
				// Half-close: the backend sees end-of-stream and answers.
				cs.CloseSend()
				return
			}
			cancel(err)
			return
		}
		n.Add(int64(f.Len()))
		if err := cs.SendMsg(&f); err != nil {
			// The backend has ended the call; its status reaches the
			// client through RecvMsg in forward.
			f.Free()
			return
		}
	}
}

// clientError is the status the client gets. When the call ended because of
// the client's own side (a message over the limit, a cancel, a deadline),
// that cause wins over what the cancelled backend call reports.
func clientError(ctx context.Context, arrived time.Time, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		if st, ok := status.FromError(cause); ok {
			return st.Err()
		}
		return status.FromContextError(cause).Err()
	}
	if ctx.Err() != nil {
		// A client whose deadline passes resets the stream, and the reset
		// reaches the gateway a little before its own copy of the deadline
		// (grpc-timeout is measured from the arrival): a cancel that close
		// to the deadline is the deadline, not a cancel.
		if d, ok := ctx.Deadline(); ok {
			slack := max(5*time.Millisecond, d.Sub(arrived)/20)
			if !time.Now().Before(d.Add(-slack)) {
				return status.Error(codes.DeadlineExceeded, context.DeadlineExceeded.Error())
			}
		}
		if _, isStatus := status.FromError(err); !isStatus {
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	st, ok := status.FromError(err)
	if !ok {
		return status.FromContextError(err).Err()
	}
	// Details travel byte-identical in the trailer metadata
	// (grpc-status-details-bin); a status that carried them again would make
	// grpc re-encode them.
	if len(st.Proto().GetDetails()) > 0 {
		return status.Error(st.Code(), st.Message())
	}
	return err
}

func contentSubtype(ctx context.Context) string {
	if s, ok := grpc.ServerTransportStreamFromContext(ctx).(interface{ ContentSubtype() string }); ok {
		return s.ContentSubtype()
	}
	return ""
}

// outgoingMD is the client's request metadata as the backend gets it.
// Keys that the backend connection sets for itself are dropped so that they
// are not sent twice; :authority becomes x-forwarded-host and the client's
// address is appended to x-forwarded-for.
func outgoingMD(ctx context.Context) metadata.MD {
	md, _ := metadata.FromIncomingContext(ctx) // a copy: free to edit
	if md == nil {
		md = metadata.MD{}
	}
	if a := md[":authority"]; len(a) > 0 {
		md["x-forwarded-host"] = a
	}
	delete(md, ":authority")
	delete(md, "user-agent")
	delete(md, "grpc-accept-encoding")
	delete(md, "grpc-encoding")
	delete(md, "te")
	delete(md, "content-type")
	if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
		host := pr.Addr.String()
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		md["x-forwarded-for"] = append(md["x-forwarded-for"], host)
	}
	return md
}
