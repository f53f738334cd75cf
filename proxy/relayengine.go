package proxy

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"

	"github.com/healthgate/healthgate/internal/grpcwire"
	"github.com/healthgate/healthgate/internal/h2"
)

// The relay engine: a call is an HTTP/2 stream on the client's connection
// tied to a stream on the backend's connection, its frames passed from one
// to the other by each connection's reader and writer goroutines (see
// internal/h2): no goroutine, no grpc-go stream and no message decoding
// per call. Flow control ties the two: the credit a peer gets back is the
// room the other side's stream has made.

// RelayUpstream is what the relay needs of an upstream: the backend's
// HTTP/2 connection, if it has one that takes streams now. It must not
// block.
type RelayUpstream interface {
	Upstream
	RelayConn() *h2.Conn
}

// relayCall is one call relayed: the client's stream, the backend's, and
// what is known of the call. Events come from both connections'
// goroutines and the deadline's timer; mu orders them.
type relayCall struct {
	r      *Relay
	client *h2.Stream
	policy forwardPolicy
	tlsID  string
	method string
	start  time.Time
	// deadline is when the client's grpc-timeout (or the default) ends;
	// zero without one.
	deadline time.Time
	// capped: the route's max_timeout set the deadline, shorter than
	// what the client asked.
	capped bool
	// reqFields are the headers sent to the backend, kept to open the
	// stream again on another backend when one refuses it before any
	// request byte was sent.
	reqFields []hpack.HeaderField
	reqEnded  bool
	// route is where the call goes; local instead when the gateway serves
	// the service itself.
	route Route
	local RelayUpstream

	mu       sync.Mutex
	backend  *h2.Stream
	up       Upstream
	tried    []Upstream
	attempts int
	timer    *time.Timer
	// idle ends the call when it moves nothing for the route's
	// idle_timeout; nil without one.
	idle *idleTimer
	// answered: response headers went to the client.
	answered bool
	// sentReq: request bytes went to the backend: the call can no longer
	// move to another backend.
	sentReq             bool
	done                bool
	reqMsg              msgLimit
	respMsg             msgLimit
	reqBytes, respBytes int64
	// reqPending is request bytes handed to the backend stream and not yet
	// written: the client's credit for them comes back when they are, or
	// all at once when the call ends first.
	reqPending int
	// unrouted: no route covers the method.
	unrouted bool
	// web: a gRPC-Web call (or its CORS preflight), relayed as it is to
	// the gateway's bridge, which calls the gateway back with it as gRPC:
	// limits, deadline, retries, the observer and tracing apply to that
	// call, not to this one.
	web bool
	// trace is the call's trace; clientTP the traceparent the client
	// sent, for the access log of a call not traced.
	trace    callTrace
	clientTP string

	// rc is the call's retries; keep holds the request bytes sent so far
	// while a retry may need them.
	rc   retryCall
	keep reqKeep
	// waiting: a retry waits for retryTimer; the failed attempt's answer
	// (held, heldCode, heldMsg) goes to the client should it not happen.
	waiting    bool
	retryTimer *time.Timer
	held       []hpack.HeaderField
	heldCode   codes.Code
	heldMsg    string
	// tryTimer is the per-try timeout of the attempt in progress.
	tryTimer *time.Timer
	// noCredit is what is left, at the head of a replay, of bytes whose
	// credit the client already has: their Sent gives none back.
	noCredit int
}

// reqKeep is a call's request DATA bytes sent so far, kept in pooled
// buffers for a retry, up to a limit; past it nothing is kept any more.
type reqKeep struct {
	on     bool
	n      int
	chunks []*[]byte
	// arr holds the first chunks without an allocation: a unary call's
	// request is one.
	arr [2]*[]byte
}

// add keeps p, or stops keeping when p would take the bytes past limit.
func (k *reqKeep) add(r *Relay, p []byte, limit int) {
	if !k.on || len(p) == 0 {
		return
	}
	if k.n+len(p) > limit {
		k.release(r)
		return
	}
	k.n += len(p)
	for len(p) > 0 {
		if k.chunks == nil {
			k.chunks = k.arr[:0]
		}
		if len(k.chunks) == 0 || len(*k.chunks[len(k.chunks)-1]) == cap(*k.chunks[len(k.chunks)-1]) {
			bp := r.kept.Get().(*[]byte)
			*bp = (*bp)[:0]
			k.chunks = append(k.chunks, bp)
		}
		last := k.chunks[len(k.chunks)-1]
		n := min(len(p), cap(*last)-len(*last))
		*last = append(*last, p[:n]...)
		p = p[n:]
	}
}

// release stops keeping and gives the buffers back.
func (k *reqKeep) release(r *Relay) {
	for _, bp := range k.chunks {
		r.kept.Put(bp)
	}
	clear(k.chunks)
	k.chunks, k.n, k.on = nil, 0, false
}

// replay writes what was kept to s, ending the request if end. The
// writer gets copies: a later retry may need the bytes again.
func (k *reqKeep) replay(s *h2.Stream, end bool) {
	for i, bp := range k.chunks {
		s.WriteData(h2.Bytes(bytes.Clone(*bp)), end && i == len(k.chunks)-1)
	}
}

// msgLimit reads gRPC message prefixes (1 byte flag, 4 bytes length)
// across DATA frames, to hold each message to a size limit without
// buffering it.
type msgLimit struct {
	hdr    [5]byte
	have   int    // bytes of hdr read
	remain uint32 // bytes of the current message body still to come
}

// feed reads p and returns the length of a message over max, or 0, and
// how many of p's bytes are message payload (prefixes aside).
func (m *msgLimit) feed(p []byte, max int) (over uint32, payload int) {
	for len(p) > 0 {
		if m.remain > 0 {
			n := min(uint32(len(p)), m.remain)
			m.remain -= n
			payload += int(n)
			p = p[n:]
			continue
		}
		n := copy(m.hdr[m.have:], p)
		m.have += n
		p = p[n:]
		if m.have < 5 {
			return 0, payload
		}
		m.have = 0
		l := binary.BigEndian.Uint32(m.hdr[1:])
		if int64(l) > int64(max) {
			return l, payload
		}
		m.remain = l
	}
	return 0, payload
}

// Relay serves clients with the relay engine.
type Relay struct {
	p     *Proxy
	local map[string]RelayUpstream
	web   RelayUpstream
	ua    string
	tls   *tls.Config
	// pool holds the buffers client DATA is read into, shared by every
	// client connection.
	pool *h2.Pool
	// kept holds the buffers of request bytes kept for retries.
	kept sync.Pool

	mu       sync.Mutex
	conns    map[*h2.Conn]struct{}
	draining bool
	wg       sync.WaitGroup
	lis      []net.Listener
}

// RelayConfig is what the relay needs beside the proxy's configuration.
type RelayConfig struct {
	// Local maps a gRPC service ("grpc.health.v1.Health") to an upstream
	// that serves it inside the gateway: its calls go there, never
	// through the Picker.
	Local map[string]RelayUpstream
	// Web, if set, takes every gRPC-Web call (content-type
	// application/grpc-web...) and CORS preflight: it translates the call
	// and makes it again, as gRPC, through this relay. Nil: gRPC-Web calls
	// are refused.
	Web RelayUpstream
	// UserAgent is sent to backends.
	UserAgent string
}

// NewRelay returns the relay engine for p.
func (p *Proxy) NewRelay(cfg RelayConfig) *Relay {
	r := &Relay{p: p, local: cfg.Local, web: cfg.Web, ua: cfg.UserAgent, conns: map[*h2.Conn]struct{}{}}
	if p.cfg.ListenTLS != nil {
		// gRPC clients insist on ALPN h2.
		r.tls = p.cfg.ListenTLS.Clone()
		if !slices.Contains(r.tls.NextProtos, "h2") {
			r.tls.NextProtos = append(r.tls.NextProtos, "h2")
		}
	}
	r.pool = h2.NewPool(h2.DefaultMaxFrameSize)
	r.kept.New = func() any { b := make([]byte, 0, 16<<10); return &b }
	return r
}

// Serve accepts client connections on lis until it is closed.
func (r *Relay) Serve(lis net.Listener) error {
	r.mu.Lock()
	if r.draining {
		r.mu.Unlock()
		lis.Close()
		return net.ErrClosed
	}
	r.lis = append(r.lis, lis)
	r.mu.Unlock()
	for {
		nc, err := lis.Accept()
		if err != nil {
			r.mu.Lock()
			draining := r.draining
			r.mu.Unlock()
			if draining {
				return nil
			}
			return err
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.serveConn(nc)
		}()
	}
}

func (r *Relay) serveConn(nc net.Conn) {
	l := r.p.cfg.Limits
	handshake := time.Now().Add(l.HandshakeTimeout)
	var tlsID string
	// The gRPC-Web bridge's connections come from inside the process:
	// TLS was the client's hop, already ended.
	_, internal := nc.(internalConn)
	if r.tls != nil && !internal {
		t := tls.Server(nc, r.tls)
		_ = nc.SetDeadline(handshake)
		if err := t.Handshake(); err != nil {
			nc.Close()
			return
		}
		_ = nc.SetDeadline(time.Time{})
		if p := t.ConnectionState().NegotiatedProtocol; p != "h2" {
			// gRPC is HTTP/2 only; a client that did not offer h2 cannot
			// speak it.
			t.Close()
			return
		}
		if r.p.identity {
			tlsID = identityOf(t.ConnectionState())
		}
		nc = t
	}
	// The policy depends on the client alone: worked out once for all the
	// connection's calls.
	policy := policyFor(nc.RemoteAddr(), r.p.trusted)
	var c *h2.Conn
	pings := pingPolicy{min: l.MinPingInterval}
	resets := newResetPolicy(l.MaxConcurrentStreams)
	cfg := h2.Config{
		MaxConcurrentStreams: l.MaxConcurrentStreams,
		MaxHeaderListSize:    l.MaxHeaderListBytes,
		StreamWindow:         1 << 20,
		ConnWindow:           16 << 20,
		Pool:                 r.pool,
		OnStream: func(s *h2.Stream, f *http2.MetaHeadersFrame) {
			r.startCall(s, f, policy, tlsID)
		},
		OnPing:  pings.allow,
		OnReset: resets.allow,
		Logger:  r.p.log,
	}
	if internal {
		// The bridge's connection carries every gRPC-Web client's calls,
		// and their cancels: no one client's rate of them is its own.
		cfg.OnReset = nil
	}
	c = h2.NewConn(nc, h2.Server, cfg)
	r.mu.Lock()
	if r.draining {
		r.mu.Unlock()
		nc.Close()
		return
	}
	r.conns[c] = struct{}{}
	r.mu.Unlock()
	stop := r.connTimers(c)
	_ = c.Serve(handshake)
	stop()
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

// connTimers enforces the idle timeout and the maximum age of a client
// connection, each with a GOAWAY that lets the calls in flight finish
// (within the age's grace, if it has one).
func (r *Relay) connTimers(c *h2.Conn) (stop func()) {
	l := r.p.cfg.Limits
	age := time.AfterFunc(l.MaxConnectionAge, func() {
		c.GoAway(http2.ErrCodeNo, "max_age")
		if g := l.MaxConnectionAgeGrace; g > 0 {
			time.AfterFunc(g, c.Close)
		}
	})
	var idle *time.Timer
	var check func()
	check = func() {
		if c.Active() == 0 {
			c.GoAway(http2.ErrCodeNo, "idle")
			return
		}
		idle.Reset(l.IdleTimeout)
	}
	idle = time.AfterFunc(l.IdleTimeout, check)
	return func() { age.Stop(); idle.Stop() }
}

// pingPolicy is the keepalive enforcement of grpc-go's servers: a PING
// sooner than the minimum interval after the last is a strike, and the
// third strike closes the connection.
type pingPolicy struct {
	mu      sync.Mutex
	min     time.Duration
	last    time.Time
	strikes int
}

func (p *pingPolicy) allow(answered bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	switch {
	case answered:
		// grpc-go clients measure bandwidth with a PING after data they
		// receive: the connection is working, not being flooded.
		p.strikes = 0
	case !p.last.IsZero() && now.Sub(p.last) < p.min:
		p.strikes++
	}
	p.last = now
	return p.strikes <= 2
}

// resetPolicy closes a connection whose client resets streams before
// they are answered faster than a client has reason to (CVE-2023-44487,
// rapid reset): each such reset opened, and cancelled, a stream on a
// backend, without the client waiting for anything. A token bucket: a
// burst of as many as the connection may have streams at once, then that
// many per second. Clients that cancel calls, even most of their calls,
// stay far below it; a client that resets at the rate it can write
// HEADERS and RST_STREAM does not.
type resetPolicy struct {
	mu     sync.Mutex
	rate   float64
	tokens float64
	last   time.Time
}

func newResetPolicy(maxStreams uint32) *resetPolicy {
	r := float64(max(maxStreams, 100))
	return &resetPolicy{rate: r, tokens: r}
}

func (p *resetPolicy) allow(answered bool) bool {
	if answered {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if !p.last.IsZero() {
		p.tokens = min(p.rate, p.tokens+now.Sub(p.last).Seconds()*p.rate)
	}
	p.last = now
	if p.tokens < 1 {
		return false
	}
	p.tokens--
	return true
}

// GracefulStop stops accepting, sends every connection GOAWAY and waits
// until their calls have finished.
func (r *Relay) GracefulStop() {
	for _, c := range r.stopAccepting() {
		c.GoAway(http2.ErrCodeNo, "draining")
	}
	r.wg.Wait()
}

// Stop closes every connection at once.
func (r *Relay) Stop() {
	for _, c := range r.stopAccepting() {
		c.Close()
	}
	r.wg.Wait()
}

// stopAccepting closes the listeners and returns the open connections.
func (r *Relay) stopAccepting() []*h2.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.draining = true
	for _, l := range r.lis {
		l.Close()
	}
	conns := make([]*h2.Conn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	return conns
}

func identityOf(cs tls.ConnectionState) string {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	leaf := cs.VerifiedChains[0][0]
	switch {
	case len(leaf.URIs) > 0:
		return leaf.URIs[0].String()
	case len(leaf.DNSNames) > 0:
		return leaf.DNSNames[0]
	}
	return leaf.Subject.CommonName
}

// startCall routes a new stream, on the client connection's reader.
func (r *Relay) startCall(s *h2.Stream, f *http2.MetaHeadersFrame, policy forwardPolicy, tlsID string) {
	call := &relayCall{r: r, client: s, policy: policy, tlsID: tlsID, start: time.Now()}
	s.Accept(clientSide{call})
	s.Value = call
	ct := ""
	for _, hf := range f.RegularFields() {
		if hf.Name == "content-type" {
			ct = hf.Value
			break
		}
	}
	// gRPC-Web calls, and the CORS preflights (OPTIONS) that browsers
	// send before them, go to the bridge; a native call pays one prefix
	// check for it.
	isWeb := strings.HasPrefix(ct, "application/grpc-web")
	call.web = r.web != nil && (isWeb || !strings.HasPrefix(ct, "application/grpc") && f.PseudoValue("method") == "OPTIONS")
	if obs := r.p.cfg.Observer; obs != nil && !call.web {
		obs.CallStarted()
	}
	if f.Truncated {
		call.fail(codes.ResourceExhausted, fmt.Sprintf("healthgate: request headers larger than %d bytes", r.p.cfg.Limits.MaxHeaderListBytes), nil, FromClient)
		return
	}
	call.method = f.PseudoValue("path")
	// Requests that are not gRPC get the answers grpc-go's server gives
	// them: an HTTP status with a gRPC status beside it.
	if !call.web && (!strings.HasPrefix(ct, "application/grpc") || isWeb) {
		call.earlyAbort(415, codes.InvalidArgument, fmt.Sprintf("invalid gRPC request content-type %q", ct))
		return
	}
	if call.web {
		// The bridge answers preflights and wrong methods itself.
		call.local = r.web
		call.reqFields = r.outgoing(f, call, 0, false)
		// The bridge tells same-origin pages by the authority they called.
		call.reqFields[3].Value = f.PseudoValue("authority")
		call.reqEnded = f.StreamEnded()
		call.mu.Lock()
		call.open(s)
		call.mu.Unlock()
		return
	}
	if m := f.PseudoValue("method"); m != "POST" {
		call.earlyAbort(405, codes.Internal, fmt.Sprintf("invalid gRPC request method %q", m))
		return
	}
	if !strings.HasPrefix(call.method, "/") || strings.Count(call.method, "/") < 2 {
		call.fail(codes.Unimplemented, fmt.Sprintf("malformed method name: %q", call.method), nil, FromClient)
		return
	}
	timeout, hasTimeout, err := grpcTimeout(f)
	if err != nil {
		call.earlyAbort(400, codes.Internal, err.Error())
		return
	}
	if svc, ok := serviceOf(call.method); ok && r.local[svc] != nil {
		// The gateway's own services are not traced: they are not
		// proxied, and health checks would drown the traces.
		call.local = r.local[svc]
	} else {
		call.trace = r.p.startTrace(call.method, frameHeaders{f}, policy.peer)
		if call.route, err = r.p.picker.Route(call.method, frameHeaders{f}); err != nil {
			st := pickStatus(err)
			call.unrouted = st.Code() == codes.Unimplemented
			call.fail(st.Code(), st.Message(), nil, Local)
			return
		}
	}
	if r.p.limitsDeadline(&call.route) {
		timeout, hasTimeout, call.capped = r.p.callTimeout(&call.route, timeout, hasTimeout)
	}
	if call.local == nil {
		call.rc = r.p.retryFor(&call.route, call.start)
		call.keep.on = call.rc.on()
	}
	call.reqFields = r.outgoing(f, call, timeout, hasTimeout)
	call.reqEnded = f.StreamEnded()
	if hasTimeout {
		call.deadline = call.start.Add(timeout)
		call.mu.Lock()
		call.timer = time.AfterFunc(timeout, call.expired)
		call.mu.Unlock()
	}
	if d := idleTimeout(&call.route, timeout, hasTimeout); d > 0 {
		call.mu.Lock()
		call.idle = newIdleTimer(d, call.idleExpired)
		call.mu.Unlock()
	}
	call.mu.Lock()
	call.open(s)
	call.mu.Unlock()
}

// outgoing is the header list the backend gets: the forwarding policy
// (README "Forwarding policy") applied to the client's.
func (r *Relay) outgoing(f *http2.MetaHeadersFrame, call *relayCall, timeout time.Duration, hasTimeout bool) []hpack.HeaderField {
	regular := f.RegularFields()
	out := make([]hpack.HeaderField, 0, len(regular)+8)
	method := "POST"
	if call.web {
		method = f.PseudoValue("method")
	}
	out = append(out,
		hpack.HeaderField{Name: ":method", Value: method},
		hpack.HeaderField{Name: ":scheme", Value: "http"},
		hpack.HeaderField{Name: ":path", Value: call.method},
		hpack.HeaderField{Name: ":authority", Value: ""}, // the backend's, set at open
		hpack.HeaderField{Name: "te", Value: "trailers"},
	)
	if r.ua != "" {
		out = append(out, hpack.HeaderField{Name: "user-agent", Value: r.ua})
	}
	if hasTimeout {
		out = append(out, hpack.HeaderField{Name: "grpc-timeout", Value: encodeTimeout(timeout)})
	}
	hasXFH := false
	for _, hf := range regular {
		switch hf.Name {
		case "content-type", "grpc-encoding", "grpc-accept-encoding":
			// The relay moves the client's bytes as they are, compressed
			// or not: these describe them end to end.
			out = append(out, hf)
			continue
		case "grpc-timeout":
			if call.web {
				// The bridge's call carries it on.
				out = append(out, hf)
			}
			continue
		case traceparentKey:
			call.clientTP = hf.Value
		}
		if !call.policy.keep(hf.Name) {
			continue
		}
		hasXFH = hasXFH || hf.Name == "x-forwarded-host"
		hf.Sensitive = hf.Sensitive || hf.Name == "authorization"
		out = append(out, hf)
	}
	call.policy.added(f.PseudoValue("authority"), hasXFH, func(k, v string) {
		out = append(out, hpack.HeaderField{Name: k, Value: v})
	})
	return out
}

// open picks an upstream and opens the backend stream; mu held. reader,
// when not nil, is the stream whose handler (on its connection's reader)
// opens it: the backend's connection is then flushed after that read.
func (c *relayCall) open(reader *h2.Stream) {
	r := c.r
	for {
		var up Upstream
		var err error
		if c.local != nil {
			up = c.local
		} else {
			up, err = c.rc.pick(c.route.Backends, c.tried)
		}
		if err != nil {
			st := pickStatus(err)
			c.unrouted = st.Code() == codes.Unimplemented
			c.failLocked(st.Code(), st.Message(), nil, Local)
			return
		}
		c.attempts++
		c.trace.attempt(c.route.Name, up, c.attempts-1)
		ru, ok := up.(RelayUpstream)
		var conn *h2.Conn
		if ok {
			conn = ru.RelayConn()
		}
		if conn != nil {
			fields := c.reqFields
			if c.attempts > 1 {
				// The first attempt's list may still be the writer's.
				fields = slices.Clone(fields)
			}
			if c.trace.att != nil {
				fields = c.trace.fields(fields)
			}
			if !c.web {
				fields[3].Value = up.Addr()
			}
			if c.attempts > 1 && !c.deadline.IsZero() {
				// A retry has less time left than the first attempt had.
				if i := slices.IndexFunc(fields, func(hf hpack.HeaderField) bool { return hf.Name == "grpc-timeout" }); i >= 0 {
					fields[i].Value = encodeTimeout(time.Until(c.deadline))
				}
			}
			end := c.reqEnded && c.keep.n == 0
			var bs *h2.Stream
			var err error
			if reader != nil {
				bs, err = conn.QueueStream(fields, end, backendSide{c})
			} else {
				bs, err = conn.OpenStream(fields, end, backendSide{c})
			}
			if err == nil {
				c.backend, c.up = bs, up
				if c.keep.n > 0 {
					c.keep.replay(bs, c.reqEnded)
				}
				if d := c.rc.perTry(); d > 0 {
					c.tryTimer = time.AfterFunc(d, func() { c.tryExpired(bs) })
				}
				if reader != nil {
					reader.ThenFlush(bs)
				}
				return
			}
		}
		// Not accepted: the stream never reached the backend.
		c.trace.done(up, Outcome{Code: codes.Unavailable, Origin: Local})
		c.tried = append(c.tried, up)
		if c.attempts >= r.p.cfg.MaxAttempts {
			c.failLocked(codes.Unavailable, fmt.Sprintf("healthgate: no connection to backend %s", up.Addr()), nil, Local)
			return
		}
	}
}

// fields is the header list fs with the attempt's trace context in place
// of the client's: a new list, since an earlier attempt's may still be the
// writer's.
func (t *callTrace) fields(fs []hpack.HeaderField) []hpack.HeaderField {
	out := make([]hpack.HeaderField, 0, len(fs)+2)
	for _, hf := range fs {
		if hf.Name != traceparentKey && hf.Name != tracestateKey {
			out = append(out, hf)
		}
	}
	t.att.Propagate(func(k, v string) { out = append(out, hpack.HeaderField{Name: k, Value: v}) })
	return out
}

// frameHeaders are a request's HEADERS as a Picker reads them.
type frameHeaders struct{ f *http2.MetaHeadersFrame }

func (h frameHeaders) Get(name string) string {
	for _, hf := range h.f.RegularFields() {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

func serviceOf(method string) (string, bool) {
	if len(method) < 2 || method[0] != '/' {
		return "", false
	}
	i := strings.IndexByte(method[1:], '/')
	if i < 0 {
		return "", false
	}
	return method[1 : 1+i], true
}

// clientSide handles the client's stream.
type clientSide struct{ c *relayCall }

func (h clientSide) Headers(s *h2.Stream, f *http2.MetaHeadersFrame) {
	// Request trailers are not part of gRPC: end the request.
	c := h.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamEnded() {
		c.reqEnded = true
		if c.backend != nil {
			c.backend.WriteData(h2.Chunk{}, true)
		}
	}
}

func (h clientSide) Data(s *h2.Stream, ch h2.Chunk, end bool) {
	c := h.c
	p := ch.B
	c.mu.Lock()
	defer c.mu.Unlock()
	payload, over, ok := c.frameIn(s, ch, c.done, &c.reqMsg, c.r.p.cfg.MaxRequestBytes)
	if !ok {
		if over > 0 {
			c.failLocked(codes.ResourceExhausted, fmt.Sprintf("grpc: received message larger than max (%d vs. %d)", over, c.r.p.cfg.MaxRequestBytes), nil, FromClient)
		}
		return
	}
	c.reqBytes += int64(payload)
	if c.waiting {
		// Kept for the retry, and credited when the retry sends it.
		c.reqEnded = c.reqEnded || end
		c.keep.add(c.r, p, c.rc.buffer())
		ch.Release()
		c.reqPending += len(p)
		if !c.keep.on {
			c.giveUpLocked()
		}
		return
	}
	if c.backend == nil {
		ch.Release()
		s.Consumed(len(p))
		return
	}
	if end {
		c.reqEnded = true
	}
	c.sentReq = c.sentReq || len(p) > 0
	if c.keep.on {
		c.keep.add(c.r, p, c.rc.buffer())
	}
	c.reqPending += len(p)
	if c.backend.QueueData(ch, end) {
		s.ThenFlush(c.backend)
	}
}

func (h clientSide) Reset(s *h2.Stream, code http2.ErrCode, err error) {
	c := h.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return
	}
	if c.backend != nil {
		c.backend.Reset(http2.ErrCodeCancel)
	}
	st := codes.Canceled
	msg := "healthgate: the client cancelled the call"
	if c.atDeadline() {
		st, msg = codes.DeadlineExceeded, "healthgate: the client's deadline passed"
	}
	if err != nil {
		msg = "healthgate: the client's connection closed: " + err.Error()
	}
	c.finishLocked(st, msg, FromClient)
}

func (h clientSide) Sent(s *h2.Stream, n int) {
	c := h.c
	c.mu.Lock()
	b := c.backend
	c.mu.Unlock()
	if b != nil {
		b.Consumed(n)
	}
}

// frameIn is what either side does first with a DATA frame, mu held. A
// frame of a call that is over for this stream (gone) is dropped; else the
// idle timer is touched and the frame's gRPC message prefixes are read
// against max. ok is false when the frame is dropped, its chunk released
// and its credit given back: for gone, or for a message over max, whose
// length is over, and then the caller fails the call. payload is the
// frame's message bytes, prefixes aside.
func (c *relayCall) frameIn(s *h2.Stream, ch h2.Chunk, gone bool, m *msgLimit, max int) (payload int, over uint32, ok bool) {
	n := len(ch.B)
	if !gone {
		if c.idle != nil {
			c.idle.touch()
		}
		payload = n
		if !c.web {
			over, payload = m.feed(ch.B, max)
		}
		if over == 0 {
			return payload, 0, true
		}
	}
	ch.Release()
	s.Consumed(n)
	return 0, over, false
}

// backendSide handles the backend's stream.
type backendSide struct{ c *relayCall }

func (h backendSide) Headers(s *h2.Stream, f *http2.MetaHeadersFrame) {
	c := h.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done || s != c.backend {
		return
	}
	if c.idle != nil {
		c.idle.touch()
	}
	fields := responseFields(f)
	end := f.StreamEnded()
	if !end || c.answered {
		c.stopTryLocked()
		c.keep.release(c.r)
	}
	if end && !c.answered && c.rc.on() {
		// A trailers-only answer: nothing of it reached the client yet.
		code := codes.Unknown
		if v := fieldValue(f, "grpc-status"); v != "" {
			if n, err := strconv.Atoi(v); err == nil {
				code = codes.Code(n)
			}
		}
		e := attemptEnd{code: code, kept: c.keep.on, attempts: c.attempts}
		for _, hf := range f.Fields {
			if hf.Name == pushbackKey {
				e.pushback, e.hasPushback = hf.Value, true
				break
			}
		}
		if wait, ok := c.rc.next(e, time.Now(), c.deadline); ok {
			c.retryLocked(wait, Outcome{Code: code, Origin: FromBackend}, fields, code, "")
			return
		}
	}
	if !end {
		if c.client.QueueHeaders(fields, false) {
			s.ThenFlush(c.client)
		}
		c.answered = true
		return
	}
	code := codes.Unknown
	if v := fieldValue(f, "grpc-status"); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			code = codes.Code(n)
		}
	} else if !c.answered {
		code = httpStatus(f.PseudoValue("status"))
	}
	if code == codes.DeadlineExceeded && !c.answered && c.atDeadline() {
		// The backend's copy of the deadline (a little earlier than the
		// gateway's, by the time the HEADERS took) ended the call first:
		// the deadline's own status is the answer, as it would have been
		// a moment later.
		c.expiredLocked()
		return
	}
	c.answered = true
	// The call is recorded before the client can see its end.
	c.finishLocked(code, "", FromBackend)
	if c.client.QueueHeaders(fields, true) {
		s.ThenFlush(c.client)
	}
}

// responseFields are the backend's response headers or trailers as the
// client gets them: all of them, hop-by-hop names aside. The frame's own
// list is used when it has none, as it should: the framer makes a new one
// for every frame.
func responseFields(f *http2.MetaHeadersFrame) []hpack.HeaderField {
	if !slices.ContainsFunc(f.Fields, hopByHop) {
		return f.Fields
	}
	out := make([]hpack.HeaderField, 0, len(f.Fields))
	for _, hf := range f.Fields {
		if !hopByHop(hf) {
			out = append(out, hf)
		}
	}
	return out
}

func hopByHop(hf hpack.HeaderField) bool {
	switch hf.Name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		return true
	}
	return false
}

func fieldValue(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.Fields {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

func (h backendSide) Data(s *h2.Stream, ch h2.Chunk, end bool) {
	c := h.c
	c.mu.Lock()
	defer c.mu.Unlock()
	payload, over, ok := c.frameIn(s, ch, c.done || s != c.backend, &c.respMsg, c.r.p.cfg.MaxResponseBytes)
	if !ok {
		if over > 0 {
			s.Reset(http2.ErrCodeCancel)
			c.failLocked(codes.ResourceExhausted, fmt.Sprintf("grpc: received message larger than max (%d vs. %d)", over, c.r.p.cfg.MaxResponseBytes), nil, Local)
		}
		return
	}
	c.respBytes += int64(payload)
	if end && c.web {
		// gRPC-Web's status is in the body, which ends the answer.
		c.finishLocked(codes.OK, "", FromBackend)
		if c.client.QueueData(ch, true) {
			s.ThenFlush(c.client)
		}
		return
	}
	if c.client.QueueData(ch, false) {
		s.ThenFlush(c.client)
	}
	if end {
		// A response without trailers: the backend broke the protocol.
		c.failLocked(codes.Internal, "healthgate: the backend ended the stream without a status", nil, FromBackend)
	}
}

func (h backendSide) Reset(s *h2.Stream, code http2.ErrCode, err error) {
	c := h.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done || s != c.backend {
		return
	}
	if !c.answered && !c.sentReq && code == http2.ErrCodeRefusedStream {
		// The backend never processed the stream, and nothing of the
		// request is lost: another backend can take it.
		c.trace.done(c.up, Outcome{Code: codes.Unavailable, Origin: Local})
		c.tried = append(c.tried, c.up)
		c.backend, c.up = nil, nil
		if c.attempts < c.r.p.cfg.MaxAttempts {
			// Reset may come from any goroutine: the writer is woken.
			c.open(nil)
			return
		}
	}
	if !c.answered && c.up != nil && c.rc.on() {
		// Reset, or the connection broke, before any response header:
		// UNAVAILABLE, which the route may retry.
		e := attemptEnd{code: codes.Unavailable, kept: c.keep.on, attempts: c.attempts}
		if wait, ok := c.rc.next(e, time.Now(), c.deadline); ok {
			msg := fmt.Sprintf("healthgate: backend %s reset the stream: %s", c.upAddr(), code)
			c.retryLocked(wait, Outcome{Code: codes.Unavailable, Origin: Local}, nil, codes.Unavailable, msg)
			return
		}
	}
	if !c.answered && code == http2.ErrCodeRefusedStream {
		// Refused before any answer: the client's gRPC library sends it
		// again transparently.
		c.client.Reset(http2.ErrCodeRefusedStream)
		c.finishLocked(codes.Unavailable, "healthgate: the backend refused the stream", Local)
		return
	}
	if code == http2.ErrCodeCancel && !c.deadline.IsZero() && !time.Now().Before(c.deadline) {
		// The backend's copy of the deadline passed, a little after the
		// gateway's, before the gateway's timer ran: the deadline, as
		// grpc-go's client reads such a reset too.
		c.expiredLocked()
		return
	}
	msg := fmt.Sprintf("healthgate: backend %s reset the stream: %s", c.upAddr(), code)
	if err != nil {
		msg = fmt.Sprintf("healthgate: backend %s: %v", c.upAddr(), err)
	}
	c.failLocked(codes.Unavailable, msg, nil, Local)
}

func (h backendSide) Sent(s *h2.Stream, n int) {
	c := h.c
	c.mu.Lock()
	if c.done || s != c.backend {
		// finishLocked, or the retry, gave the credit back already.
		c.mu.Unlock()
		return
	}
	if c.noCredit > 0 {
		k := min(n, c.noCredit)
		c.noCredit -= k
		n -= k
		if n == 0 {
			c.mu.Unlock()
			return
		}
	}
	c.reqPending -= n
	c.mu.Unlock()
	c.client.Consumed(n)
}

func (c *relayCall) upAddr() string {
	if c.up == nil {
		return ""
	}
	return c.up.Addr()
}

// atDeadline reports whether the call has a deadline and is at it, within
// deadlineSlack.
func (c *relayCall) atDeadline() bool {
	return !c.deadline.IsZero() && !time.Now().Before(c.deadline.Add(-deadlineSlack(c.deadline.Sub(c.start))))
}

// expired is the deadline's timer.
func (c *relayCall) expired() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expiredLocked()
}

// expiredLocked ends the call for its deadline.
func (c *relayCall) expiredLocked() {
	if c.done {
		return
	}
	origin := FromClient
	if !c.answered {
		// No response header before the deadline: the backend's.
		origin = Local
	}
	msg := "healthgate: deadline exceeded"
	if c.capped {
		msg = cappedMessage(c.route.Name, c.deadline.Sub(c.start))
	}
	c.failLocked(codes.DeadlineExceeded, msg, nil, origin)
}

// idleExpired is the idle timer's end: the call moved nothing for the
// route's idle_timeout. Like a deadline, the backend's fault while it had
// not answered.
func (c *relayCall) idleExpired() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return
	}
	origin := FromClient
	if !c.answered {
		origin = Local
	}
	c.failLocked(codes.DeadlineExceeded, idleMessage(c.route.Name, c.idle.idle), nil, origin)
}

func (c *relayCall) fail(code codes.Code, msg string, details []hpack.HeaderField, origin Origin) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failLocked(code, msg, details, origin)
}

// failLocked ends the call with a status the gateway makes: trailers (or
// a trailers-only answer), and the backend stream reset.
func (c *relayCall) failLocked(code codes.Code, msg string, _ []hpack.HeaderField, origin Origin) {
	if c.done {
		return
	}
	if c.backend != nil {
		c.backend.Reset(http2.ErrCodeCancel)
	}
	fields := make([]hpack.HeaderField, 0, 4)
	if !c.answered {
		ct := "application/grpc"
		if c.web {
			// gRPC-Web clients read a status in the headers of an answer
			// that has nothing else.
			ct = "application/grpc-web+proto"
		}
		fields = append(fields, hpack.HeaderField{Name: ":status", Value: "200"}, hpack.HeaderField{Name: "content-type", Value: ct})
	}
	fields = append(fields, hpack.HeaderField{Name: "grpc-status", Value: strconv.Itoa(int(code))})
	if msg != "" {
		fields = append(fields, hpack.HeaderField{Name: "grpc-message", Value: grpcwire.EncodeMessage(msg)})
	}
	c.answered = true
	// The call is recorded before the client can see its end.
	c.finishLocked(code, msg, origin)
	c.client.WriteHeaders(fields, true)
}

// earlyAbort answers a request the gateway will not take with an HTTP
// status and a gRPC status, before any backend is chosen.
func (c *relayCall) earlyAbort(httpStatus int, code codes.Code, msg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.answered = true
	c.finishLocked(code, msg, FromClient)
	c.client.WriteHeaders([]hpack.HeaderField{
		{Name: ":status", Value: strconv.Itoa(httpStatus)},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "grpc-status", Value: strconv.Itoa(int(code))},
		{Name: "grpc-message", Value: grpcwire.EncodeMessage(msg)},
	}, true)
}

// finishLocked records the end of the call: the upstream's outcome and
// the observer's line.
func (c *relayCall) finishLocked(code codes.Code, _ string, origin Origin) {
	if c.done {
		return
	}
	c.done = true
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.idle != nil {
		c.idle.stop()
	}
	c.stopTryLocked()
	if c.retryTimer != nil {
		c.retryTimer.Stop()
	}
	c.waiting, c.held = false, nil
	c.keep.release(c.r)
	if c.reqPending > 0 {
		c.client.Consumed(c.reqPending)
		c.reqPending = 0
	}
	if c.up != nil {
		c.trace.done(c.up, Outcome{Code: code, Origin: origin})
	}
	c.trace.end(c.route.Name, code)
	if obs := c.r.p.cfg.Observer; obs != nil && !c.web {
		info := CallInfo{
			FullMethod: c.method, Routed: !c.unrouted, Route: c.route.Name, Code: code, Duration: time.Since(c.start),
			RequestBytes: c.reqBytes, ResponseBytes: c.respBytes, Attempts: c.attempts,
			ClientIdentity: c.tlsID, Retries: c.rc.retried, RetryBudgetExhausted: c.rc.exhausted,
			TraceID: c.trace.traceID(c.clientTP), Peer: c.policy.peer,
		}
		if c.up != nil {
			info.Upstream = c.up.Addr()
		} else if len(c.tried) > 0 {
			info.Upstream = c.tried[len(c.tried)-1].Addr()
		}
		obs.CallFinished(info)
	}
}

// retryLocked ends the attempt in progress, whose answer has not reached
// the client, with outcome o on its backend, and sends the call to another
// after wait, on a timer: the connections' goroutines never wait. held,
// code and msg are the attempt's answer, which the client gets should the
// retry not happen.
func (c *relayCall) retryLocked(wait time.Duration, o Outcome, held []hpack.HeaderField, code codes.Code, msg string) {
	c.stopTryLocked()
	c.trace.done(c.up, o)
	c.tried = append(c.tried, c.up)
	old := c.backend
	c.backend, c.up = nil, nil
	// Ended by the backend, or failed: a reset frees what is left of it.
	old.Reset(http2.ErrCodeCancel)
	// The old stream will not report what it had not written: the client
	// gets that credit now, and the replay sends the bytes again.
	if c.reqPending > 0 {
		c.client.Consumed(c.reqPending)
		c.reqPending = 0
	}
	c.noCredit = c.keep.n
	c.waiting, c.held, c.heldCode, c.heldMsg = true, held, code, msg
	if c.retryTimer == nil {
		c.retryTimer = time.AfterFunc(wait, c.retryNow)
	} else {
		c.retryTimer.Reset(wait)
	}
}

// retryNow is the retry's timer: the call goes to the next backend.
func (c *relayCall) retryNow() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done || !c.waiting {
		return
	}
	c.waiting, c.held = false, nil
	c.open(nil)
}

// giveUpLocked ends a call whose retry can no longer happen (its request
// outgrew the buffer while it waited) with the answer being retried.
func (c *relayCall) giveUpLocked() {
	c.waiting = false
	c.retryTimer.Stop()
	if held := c.held; held != nil {
		c.answered = true
		// The call is recorded before the client can see its end.
		c.finishLocked(c.heldCode, "", FromBackend)
		c.client.WriteHeaders(held, true)
		return
	}
	c.failLocked(c.heldCode, c.heldMsg, nil, Local)
}

// tryExpired is the per-try timer of the attempt on backend stream bs.
func (c *relayCall) tryExpired(bs *h2.Stream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done || c.backend != bs || c.answered {
		return
	}
	msg := fmt.Sprintf("healthgate: backend %s did not answer within the per-try timeout of %s", c.upAddr(), c.rc.perTry())
	e := attemptEnd{code: codes.DeadlineExceeded, kept: c.keep.on, attempts: c.attempts}
	if wait, ok := c.rc.next(e, time.Now(), c.deadline); ok {
		c.retryLocked(wait, Outcome{Code: codes.DeadlineExceeded, Origin: Local}, nil, codes.DeadlineExceeded, msg)
		return
	}
	c.failLocked(codes.DeadlineExceeded, msg, nil, Local)
}

func (c *relayCall) stopTryLocked() {
	if c.tryTimer != nil {
		c.tryTimer.Stop()
		c.tryTimer = nil
	}
}

// grpcTimeout reads the grpc-timeout header.
func grpcTimeout(f *http2.MetaHeadersFrame) (time.Duration, bool, error) {
	v := fieldValue(f, "grpc-timeout")
	if v == "" {
		return 0, false, nil
	}
	if len(v) < 2 || len(v) > 9 {
		return 0, false, fmt.Errorf("malformed grpc-timeout %q", v)
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false, fmt.Errorf("malformed grpc-timeout %q", v)
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false, fmt.Errorf("malformed grpc-timeout %q", v)
	}
	const maxHours = int64(time.Duration(1<<63-1) / time.Hour)
	if unit == time.Hour && n > maxHours {
		return time.Duration(1<<63 - 1), true, nil
	}
	return time.Duration(n) * unit, true, nil
}

// encodeTimeout is d as grpc-timeout: at most 8 digits, in the finest unit
// that fits.
func encodeTimeout(d time.Duration) string {
	if d <= 0 {
		return "0n"
	}
	for _, u := range []struct {
		d time.Duration
		s string
	}{{time.Nanosecond, "n"}, {time.Microsecond, "u"}, {time.Millisecond, "m"}, {time.Second, "S"}, {time.Minute, "M"}, {time.Hour, "H"}} {
		n := (d + u.d - 1) / u.d
		if n < 1e8 {
			return strconv.FormatInt(int64(n), 10) + u.s
		}
	}
	return "99999999H"
}

// httpStatus is the gRPC code of a backend's HTTP status without
// grpc-status.
func httpStatus(s string) codes.Code {
	n, _ := strconv.Atoi(s)
	return grpcwire.HTTPStatusCode(n)
}
