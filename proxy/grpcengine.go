package proxy

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/internal/backoff"
)

// The grpc engine: each call is a grpc-go server stream on the listener and
// a grpc-go client stream on the backend's connection, with the message
// bytes handed from one to the other untouched (see codec.go).

// grpcUpstream is what the grpc engine needs of an upstream: a stream on
// the backend's connection, opened at once or not at all (never waiting for
// a connection that is not READY).
type grpcUpstream interface {
	Upstream
	NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error)
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
	info := CallInfo{FullMethod: method, Routed: true}
	if p.identity {
		info.ClientIdentity = clientIdentity(ctx)
	}
	reqMD, from := requestMD(ctx)
	tr := p.startTrace(method, mdHeaders(reqMD), from)
	finish := func(err error) error {
		tr.end(info.Route, status.Code(err))
		if obs != nil {
			info.Code, info.Duration = status.Code(err), time.Since(arrived)
			var tp string
			if v := reqMD[traceparentKey]; len(v) > 0 {
				tp = v[0]
			}
			info.TraceID, info.Peer = tr.traceID(tp), from
			obs.CallFinished(info)
		}
		return err
	}

	rt, err := p.picker.Route(method, mdHeaders(reqMD))
	if err != nil {
		st := pickStatus(err)
		info.Routed = st.Code() != codes.Unimplemented
		return finish(st.Err())
	}
	info.Route = rt.Name
	if p.limitsDeadline(&rt) {
		dl, has := ctx.Deadline()
		var left time.Duration
		if has {
			left = time.Until(dl)
		}
		// A shorter deadline on the context is what the backend is sent
		// as its grpc-timeout.
		if d, ok, capped := p.callTimeout(&rt, left, has); ok && (!has || d < left) {
			var cancel context.CancelFunc
			if capped {
				ctx, cancel = context.WithTimeoutCause(ctx, d, status.Error(codes.DeadlineExceeded, cappedMessage(rt.Name, d)))
			} else {
				ctx, cancel = context.WithTimeout(ctx, d)
			}
			defer cancel()
		}
	}
	// Cancelling this context is how the backend learns that the call is
	// over from the client's side (cancel, deadline, oversized message).
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	dl, hasDL := ctx.Deadline()
	if d := idleTimeout(&rt, time.Until(dl), hasDL); d > 0 {
		// Copies, so that the closure does not move the call's route to
		// the heap for every call.
		name, cancelIdle := rt.Name, cancel
		it := newIdleTimer(d, func() {
			cancelIdle(status.Error(codes.DeadlineExceeded, idleMessage(name, d)))
		})
		defer it.stop()
		ss = idleServerStream{ss, it}
	}

	opts := p.callOpts
	if ct := reqMD["content-type"]; len(ct) > 0 {
		if sub := contentSubtype(ct[0]); sub != "" {
			opts = append(opts[:len(opts):len(opts)], grpc.CallContentSubtype(sub))
		}
	}
	outMD := outgoingMD(reqMD, from, p.trusted)
	outCtx := metadata.NewOutgoingContext(ctx, outMD)

	var (
		tried []Upstream
		up    Upstream
		cs    grpc.ClientStream
		md    metadata.MD
		herr  error
		// pump reads the client's messages; it outlives an attempt that the
		// backend did not accept or that is retried, and replays what it
		// kept to the next.
		pump *requests
		// cancelTry ends the latest attempt's stream, when the call may be
		// retried: one given up on, or past its per-try timeout.
		cancelTry context.CancelFunc
	)
	release := func() {
		if pump != nil {
			pump.release()
		}
	}
	rc := p.retryFor(&rt, arrived)
	keep := p.cfg.ReplayBufferBytes
	if rc.on() {
		keep = max(keep, rc.buffer())
	}
	defer func() {
		if cancelTry != nil {
			cancelTry()
		}
	}()
	for {
		var err error
		up, err = rc.pick(rt.Backends, tried)
		if err != nil {
			st := pickStatus(err)
			info.Routed = st.Code() != codes.Unimplemented
			release()
			return finish(st.Err())
		}
		info.Attempts++
		info.Upstream = up.Addr()
		tr.attempt(rt.Name, up, info.Attempts-1)
		gu, ok := up.(grpcUpstream)
		if !ok {
			tr.done(up, Outcome{Code: codes.Internal, Origin: Local})
			release()
			return finish(status.Errorf(codes.Internal, "healthgate: upstream %s cannot carry grpc streams", up.Addr()))
		}
		attemptCtx := outCtx
		if rc.on() {
			if cancelTry != nil {
				cancelTry()
			}
			attemptCtx, cancelTry = attemptContext(outCtx)
		}
		if tr.att != nil {
			attemptCtx = metadata.NewOutgoingContext(attemptCtx, tr.outgoingMD(outMD))
		}
		// A refused attempt needs no cancelling: its stream was never
		// opened, or has already ended with the refusal. One that may be
		// retried has a context of its own, which its per-try timeout
		// or the next attempt cancels.
		cs, err = gu.NewStream(attemptCtx, &streamDesc, method, opts...)
		if err == nil {
			if pump == nil {
				pump = newRequests(ss, cs, cancel, keep)
				go pump.run()
			} else if !pump.switchTo(cs) {
				// The request grew past what is kept while the call waited
				// for this attempt: it can no longer be sent whole.
				cancelTry()
				tr.done(up, Outcome{Code: codes.Canceled, Origin: FromClient})
				release()
				return finish(status.Errorf(codes.Unavailable, "healthgate: the call cannot be sent again: its request is larger than the %d bytes kept", keep))
			}
			// Headers go to the client as soon as the backend sends them,
			// before any message and whatever follows. grpc-go's Header
			// returns nil metadata when the call ended before any
			// header: a trailers-only answer (a status and nothing else),
			// which the client must get as trailers-only too or its retry
			// policy would not apply, or a stream that failed, whose error
			// RecvMsg gives. A stream the backend never processed goes to
			// another backend while what was sent is kept whole.
			var expired func() bool
			if d := rc.perTry(); d > 0 {
				expired = afterTry(d, cancelTry)
			}
			md, _ = cs.Header()
			herr = nil
			if md == nil {
				var f Frame
				herr = cs.RecvMsg(&f)
			}
			if expired != nil && expired() {
				// The per-try timeout cancelled the attempt, before its
				// answer reached the client.
				md, herr = nil, status.Errorf(codes.DeadlineExceeded, "healthgate: backend %s did not answer within the per-try timeout of %s", up.Addr(), rc.perTry())
			}
			if md != nil || ctx.Err() != nil {
				break
			}
			if !notAccepted(herr) || !pump.replayable() || len(tried)+1 >= p.cfg.MaxAttempts {
				// The backend answered without response headers, with a
				// status or by failing: retried if the route says so.
				if errors.Is(herr, io.EOF) {
					break
				}
				wait, o, ok := retryAfter(ctx, &rc, cs, herr, pump, info.Attempts)
				info.RetryBudgetExhausted = rc.exhausted
				if !ok {
					if status.Code(herr) == codes.DeadlineExceeded && expired != nil && expired() {
						tr.done(up, o)
						release()
						return finish(herr)
					}
					break
				}
				tr.done(up, o)
				tried = append(tried, up)
				info.Retries++
				if !backoff.Sleep(ctx, wait) {
					release()
					return finish(clientError(ctx, arrived, ctx.Err()))
				}
				if !pump.fits(rc.buffer()) {
					// The request outgrew the buffer during the wait: the
					// client gets the answer that was to be retried.
					ss.SetTrailer(cs.Trailer())
					release()
					return finish(clientError(ctx, arrived, herr))
				}
				continue
			}
			err = herr
		}
		if ctx.Err() != nil {
			tr.done(up, Outcome{Code: codes.Canceled, Origin: FromClient})
			release()
			return finish(clientError(ctx, arrived, err))
		}
		// The backend never saw the call: another one may take it.
		tr.done(up, Outcome{Code: codes.Unavailable, Origin: Local})
		tried = append(tried, up)
		if len(tried) >= p.cfg.MaxAttempts {
			release()
			return finish(status.Errorf(codes.Unavailable, "healthgate: no backend accepted the call after %d attempts (last, %s: %s)",
				len(tried), up.Addr(), status.Convert(err).Message()))
		}
	}
	// The backend has answered, or failed for good: nothing is sent twice
	// from here on.
	pump.release()

	var n byteCounts
	o, err := p.forward(ctx, ss, cs, md, herr, arrived, &n)
	tr.done(up, o)
	info.RequestBytes, info.ResponseBytes = pump.bytes.Load(), n.resp
	return finish(err)
}

// retryAfter decides whether an attempt that ended before any response
// header with herr (a status the backend sent, a transport failure or the
// per-try timeout) is retried, after how long, and what the attempt's
// outcome on its backend was.
func retryAfter(ctx context.Context, rc *retryCall, cs grpc.ClientStream, herr error, pump *requests, attempts int) (time.Duration, Outcome, bool) {
	o := Outcome{Code: status.Code(herr), Origin: FromBackend}
	switch {
	case o.Code == codes.DeadlineExceeded:
		// Only the per-try timeout: the call's own deadline ended the
		// loop before.
		o.Origin = Local
	case transportFailure(herr), notAccepted(herr):
		o.Code, o.Origin = codes.Unavailable, Local
	}
	if !rc.on() {
		return 0, o, false
	}
	e := attemptEnd{code: o.Code, kept: pump.fits(rc.buffer()), attempts: attempts}
	if v := cs.Trailer()[pushbackKey]; len(v) > 0 {
		e.pushback, e.hasPushback = v[0], true
	}
	deadline, _ := ctx.Deadline()
	wait, ok := rc.next(e, time.Now(), deadline)
	return wait, o, ok
}

// attemptContext is an attempt's own context, for a call that may be
// retried: an attempt given up on is ended without ending the call. The
// handler cancels the last one when it returns.
func attemptContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithCancel(ctx)
}

// afterTry cancels an attempt after d, unless the returned function is
// called first; that function reports whether the attempt was cancelled.
func afterTry(d time.Duration, cancel context.CancelFunc) func() bool {
	var fired atomic.Bool
	t := time.AfterFunc(d, func() {
		fired.Store(true)
		cancel()
	})
	var once sync.Once
	return func() bool {
		once.Do(func() { t.Stop() })
		return fired.Load()
	}
}

// outgoingMD is md with the attempt's trace context in place of the
// client's: a copy, since an earlier attempt's stream may still read md.
func (t *callTrace) outgoingMD(md metadata.MD) metadata.MD {
	md = md.Copy()
	delete(md, traceparentKey)
	delete(md, tracestateKey)
	t.att.Propagate(func(k, v string) { md[k] = []string{v} })
	return md
}

// mdHeaders are grpc metadata as a Picker reads them.
type mdHeaders metadata.MD

func (m mdHeaders) Get(name string) string {
	if v := m[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// notAccepted reports whether a backend stream's error says the backend
// never processed it: refused (REFUSED_STREAM), or above the last stream
// of a GOAWAY. grpc-go tells no other way.
func notAccepted(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return false
	}
	msg := st.Message()
	return strings.Contains(msg, "REFUSED_STREAM") || strings.Contains(msg, "rejected because server is draining") ||
		msg == "the connection is draining"
}

// byteCounts are a call's forwarded response bytes.
type byteCounts struct {
	resp int64
}

// forward moves the backend's answer to the client until the call ends, and
// returns the client's status and the call's outcome on the backend. md is
// what the backend stream's Header returned; when nil, the call has ended
// and herr is how (io.EOF for OK).
func (p *Proxy) forward(ctx context.Context, ss grpc.ServerStream, cs grpc.ClientStream, md metadata.MD, herr error, arrived time.Time, n *byteCounts) (Outcome, error) {
	if md == nil {
		// The call ended before any response header; herr is how.
		ss.SetTrailer(cs.Trailer())
		if errors.Is(herr, io.EOF) {
			return Outcome{Code: codes.OK, Origin: FromBackend}, nil
		}
		cerr := clientError(ctx, arrived, herr)
		o := Outcome{Code: status.Code(cerr), Origin: FromBackend}
		switch {
		case status.Code(cerr) == codes.DeadlineExceeded && ctx.Err() != nil:
			// The deadline passed and the backend had not answered.
			o.Origin = Local
		case ctx.Err() != nil:
			o.Origin = FromClient
		case transportFailure(herr):
			o.Origin = Local
		}
		return o, cerr
	}
	if md != nil {
		if err := ss.SendHeader(md); err != nil {
			return Outcome{Code: codes.Canceled, Origin: FromClient}, clientError(ctx, arrived, err)
		}
	}
	var f Frame
	for {
		if err := cs.RecvMsg(&f); err != nil {
			ss.SetTrailer(cs.Trailer())
			if errors.Is(err, io.EOF) {
				return Outcome{Code: codes.OK, Origin: FromBackend}, nil
			}
			cerr := clientError(ctx, arrived, err)
			o := Outcome{Code: status.Code(cerr), Origin: FromBackend}
			switch {
			case ctx.Err() != nil:
				o.Origin = FromClient
			case transportFailure(err):
				o.Origin = Local
			}
			return o, cerr
		}
		n.resp += int64(f.Len())
		if err := ss.SendMsg(&f); err != nil {
			f.Free()
			return Outcome{Code: codes.Canceled, Origin: FromClient}, clientError(ctx, arrived, err)
		}
	}
}

// transportMarks are the words grpc-go uses for a call that failed in the
// transport rather than with a status the backend sent: a reset stream, a
// broken or closed connection.
var transportMarks = [...]string{
	"stream terminated by RST_STREAM",
	"transport is closing",
	"error reading from server",
	"connection error",
	"keepalive ping failed",
	"the client connection is closing",
	"connection is draining",
	"server closed the stream without sending trailers",
}

// transportFailure reports whether a backend stream's error came from the
// transport. grpc-go gives no other way to tell.
func transportFailure(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return true
	}
	switch st.Code() {
	case codes.Unavailable, codes.Internal, codes.Canceled, codes.Unknown:
	default:
		return false
	}
	msg := st.Message()
	for _, m := range transportMarks {
		if strings.Contains(msg, m) {
			return true
		}
	}
	return false
}

// clientError is the status the client gets. When the call ended because of
// the client's own side (a message over the limit, a cancel, a deadline),
// that cause wins over what the cancelled backend call reports; when it
// ended between the gateway and the backend, the code says so honestly.
func clientError(ctx context.Context, arrived time.Time, err error) error {
	if d, ok := ctx.Deadline(); ok && ctx.Err() == nil && !time.Now().Before(d) {
		// The deadline has passed and its timer is about to end the
		// context: the backend's copy of the deadline (a little later)
		// ended the call first. The deadline's own status is the answer,
		// a moment away.
		<-ctx.Done()
	}
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
			if !time.Now().Before(d.Add(-deadlineSlack(d.Sub(arrived)))) {
				return status.Error(codes.DeadlineExceeded, context.DeadlineExceeded.Error())
			}
		}
		if _, isStatus := status.FromError(err); !isStatus {
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	st, ok := status.FromError(err)
	if !ok {
		return status.Error(codes.Unavailable, "healthgate: backend call failed: "+err.Error())
	}
	if ctx.Err() == nil && transportFailure(err) {
		if c := upstreamCode(st.Code()); c != st.Code() {
			return status.Error(c, "healthgate: backend connection failed: "+st.Message())
		}
	}
	// Details travel byte-identical in the trailer metadata
	// (grpc-status-details-bin); a status that carried them again would make
	// grpc re-encode them.
	if len(st.Proto().GetDetails()) > 0 {
		return status.Error(st.Code(), st.Message())
	}
	return err
}
