package h2grpc

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/internal/grpcwire"
	"github.com/healthgate/healthgate/internal/h2"
)

// DefaultMaxRecvMsgSize bounds a received message, as grpc-go's client
// does, unless grpc.MaxCallRecvMsgSize says otherwise.
const DefaultMaxRecvMsgSize = 4 << 20

// sendBuffer is how many bytes SendMsg leaves queued and not yet written
// before it waits: the peer's flow control then holds the sender back, as
// grpc-go's send quota does, instead of a queue that grows without bound.
const sendBuffer = 64 << 10

// callOptions are the grpc.CallOptions a call here honours. Options that
// change nothing on the wire (a static method, a deadline-free hint) are
// ignored; those that would (compression, per-call credentials) fail the
// call rather than be quietly dropped.
type callOptions struct {
	waitForReady     bool
	maxRecv, maxSend int
	codec            encoding.CodecV2
	subtype          string
	header, trailer  *metadata.MD
	peer             *peer.Peer
	onFinish         []func(error)
	authority        string
}

func parseOptions(opts []grpc.CallOption) (callOptions, error) {
	co := callOptions{maxRecv: DefaultMaxRecvMsgSize, maxSend: math.MaxInt32}
	for _, o := range opts {
		switch o := o.(type) {
		case grpc.FailFastCallOption:
			co.waitForReady = !o.FailFast
		case grpc.MaxRecvMsgSizeCallOption:
			co.maxRecv = o.MaxRecvMsgSize
		case grpc.MaxSendMsgSizeCallOption:
			co.maxSend = o.MaxSendMsgSize
		case grpc.ForceCodecV2CallOption:
			co.codec = o.CodecV2
		case grpc.ForceCodecCallOption:
			co.codec = codecV1{o.Codec}
		case grpc.ContentSubtypeCallOption:
			co.subtype = strings.ToLower(o.ContentSubtype)
		case grpc.HeaderCallOption:
			co.header = o.HeaderAddr
		case grpc.TrailerCallOption:
			co.trailer = o.TrailerAddr
		case grpc.PeerCallOption:
			co.peer = o.PeerAddr
		case grpc.OnFinishCallOption:
			co.onFinish = append(co.onFinish, o.OnFinish)
		case grpc.AuthorityOverrideCallOption:
			co.authority = o.Authority
		case grpc.CompressorCallOption:
			if o.CompressorType != "" && o.CompressorType != "identity" {
				return co, status.Errorf(codes.Unimplemented, "h2grpc: compression %q is not supported", o.CompressorType)
			}
		case grpc.PerRPCCredsCallOption:
			return co, status.Error(codes.Unimplemented, "h2grpc: per-call credentials are not supported")
		}
	}
	switch {
	case co.codec == nil && co.subtype == "":
		co.codec = encoding.GetCodecV2(protoenc.Name)
	case co.codec == nil:
		if co.codec = encoding.GetCodecV2(co.subtype); co.codec == nil {
			return co, status.Errorf(codes.Internal, "h2grpc: no codec registered for content-subtype %q", co.subtype)
		}
	case co.subtype == "":
		co.subtype = strings.ToLower(co.codec.Name())
	}
	return co, nil
}

// codecV1 is a grpc.ForceCodec codec seen as a CodecV2.
type codecV1 struct{ c encoding.Codec }

func (c codecV1) Marshal(v any) (mem.BufferSlice, error) {
	b, err := c.c.Marshal(v)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (c codecV1) Unmarshal(data mem.BufferSlice, v any) error {
	return c.c.Unmarshal(data.Materialize(), v)
}
func (c codecV1) Name() string { return c.c.Name() }

// streamConfig is what a channel gives each of its calls.
type streamConfig struct {
	authority, userAgent string
}

// clientStream is one call on an h2.Conn. It is the stream's h2.Handler:
// the connection's reader goroutine hands it headers, data and resets,
// which it only records, and the caller's goroutine does the rest.
type clientStream struct {
	ctx    context.Context
	desc   *grpc.StreamDesc
	co     callOptions
	s      *h2.Stream // set before the caller or the context's AfterFunc use it
	stopAF func() bool

	// headerReady is closed when the response headers came or the call
	// ended without them; done when the call's status is known.
	headerReady, done chan struct{}
	// wake (capacity 1) says data or the end arrived; sendWake that bytes
	// went out or the end arrived.
	wake, sendWake chan struct{}

	mu sync.Mutex // guards the fields below
	// in[off:] are the bytes received and not yet taken by RecvMsg; the
	// stream's window bounds them.
	in         []byte
	off        int
	gotHeaders bool
	header     metadata.MD
	trailer    metadata.MD
	st         *status.Status // the call's status; nil until known
	unsent     int            // bytes queued by SendMsg and not yet written
	sentLast   bool           // END_STREAM queued
	headerShut bool           // headerReady is closed

	// The caller's alone (RecvMsg is not called concurrently, per
	// grpc.ClientStream).
	recvErr error // what RecvMsg returns from now on
}

func newClientStream(ctx context.Context, conn *h2.Conn, sc streamConfig, desc *grpc.StreamDesc, method string, co callOptions) (*clientStream, error) {
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	scheme := "http"
	if _, ok := conn.NetConn().(*tls.Conn); ok {
		scheme = "https"
	}
	authority := sc.authority
	if co.authority != "" {
		authority = co.authority
	}
	ct := "application/grpc"
	if co.subtype != "" {
		ct += "+" + co.subtype
	}
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: scheme},
		{Name: ":path", Value: method},
		{Name: ":authority", Value: authority},
		{Name: "content-type", Value: ct},
		{Name: "te", Value: "trailers"},
	}
	if sc.userAgent != "" {
		fields = append(fields, hpack.HeaderField{Name: "user-agent", Value: sc.userAgent})
	}
	if d, ok := ctx.Deadline(); ok {
		fields = append(fields, hpack.HeaderField{Name: "grpc-timeout", Value: encodeTimeout(time.Until(d))})
	}
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		for k, vs := range md {
			if reservedHeader(k) {
				continue
			}
			bin := strings.HasSuffix(k, "-bin")
			for _, v := range vs {
				if bin {
					v = base64.RawStdEncoding.EncodeToString([]byte(v))
				}
				fields = append(fields, hpack.HeaderField{Name: k, Value: v, Sensitive: k == "authorization"})
			}
		}
	}
	cs := &clientStream{
		ctx: ctx, desc: desc, co: co,
		headerReady: make(chan struct{}), done: make(chan struct{}),
		wake: make(chan struct{}, 1), sendWake: make(chan struct{}, 1),
	}
	s, err := conn.OpenStream(fields, false, cs)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "h2grpc: %v", err)
	}
	cs.s = s
	if co.peer != nil {
		// Filled at once: that the call was given a connection is what a
		// caller such as the liveness probe wants to know.
		nc := conn.NetConn()
		co.peer.Addr, co.peer.LocalAddr = nc.RemoteAddr(), nc.LocalAddr()
		if t, ok := nc.(*tls.Conn); ok {
			co.peer.AuthInfo = credentials.TLSInfo{State: t.ConnectionState()}
		}
	}
	// The context ends the call: RST_STREAM CANCEL, and the status its
	// error says, whatever the caller is doing.
	cs.stopAF = context.AfterFunc(ctx, func() {
		cs.fail(cs.s, status.FromContextError(ctx.Err()), http2.ErrCodeCancel)
	})
	return cs, nil
}

// finishLocked records the call's status, if it has none yet, and wakes
// every waiter. Data received and not yet read stays readable if keep
// (messages before trailers are the call's), else it is dropped and its
// size returned, for its credit to go back. mu is held.
func (cs *clientStream) finishLocked(st *status.Status, keep bool) (first bool, dropped int) {
	if cs.st != nil {
		return false, 0
	}
	cs.st = st
	if !keep {
		dropped = len(cs.in) - cs.off
		cs.in, cs.off = nil, 0
	}
	close(cs.done)
	if !cs.headerShut {
		cs.headerShut = true
		close(cs.headerReady)
	}
	signal(cs.wake)
	signal(cs.sendWake)
	return true, dropped
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// fail ends the call with st, resetting the stream with code; it does
// nothing to a call already ended.
func (cs *clientStream) fail(s *h2.Stream, st *status.Status, code http2.ErrCode) {
	cs.mu.Lock()
	first, dropped := cs.finishLocked(st, false)
	cs.mu.Unlock()
	if !first {
		return
	}
	s.Reset(code)
	// The connection's credit for bytes nobody will read.
	s.Consumed(dropped)
}

// Headers is the h2.Handler's: response headers, or trailers.
func (cs *clientStream) Headers(s *h2.Stream, f *http2.MetaHeadersFrame) {
	r := parseFields(f)
	cs.mu.Lock()
	if cs.st != nil {
		cs.mu.Unlock()
		return
	}
	if f.Truncated {
		cs.mu.Unlock()
		cs.fail(s, status.New(codes.Internal, "h2grpc: the server's header list is over the limit"), http2.ErrCodeProtocol)
		return
	}
	if !cs.gotHeaders && !f.StreamEnded() {
		// Response headers.
		cs.gotHeaders = true
		switch {
		case r.httpStatus != 200:
			cs.mu.Unlock()
			cs.fail(s, status.Newf(grpcwire.HTTPStatusCode(r.httpStatus), "unexpected HTTP status code received from server: %d", r.httpStatus), http2.ErrCodeCancel)
			return
		case !r.grpc:
			cs.mu.Unlock()
			cs.fail(s, status.Newf(codes.Internal, "h2grpc: unexpected content-type %q", r.contentTyp), http2.ErrCodeCancel)
			return
		case r.bad != "":
			cs.mu.Unlock()
			cs.fail(s, status.New(codes.Internal, "h2grpc: "+r.bad), http2.ErrCodeCancel)
			return
		}
		cs.header = r.md
		cs.headerShut = true
		close(cs.headerReady)
		cs.mu.Unlock()
		return
	}
	if !f.StreamEnded() {
		cs.mu.Unlock()
		cs.fail(s, status.New(codes.Internal, "h2grpc: a HEADERS frame in the middle of the stream"), http2.ErrCodeProtocol)
		return
	}
	// Trailers, or a trailers-only answer: the status of the call.
	cs.trailer = r.md
	cs.finishLocked(r.status(), true)
	localOpen := !cs.sentLast
	cs.mu.Unlock()
	if localOpen {
		// The call is over; a stream left half-open would hold a slot of
		// the server's until the connection closed.
		s.Reset(http2.ErrCodeNo)
	}
}

// Data is the h2.Handler's: part of the response's messages.
func (cs *clientStream) Data(s *h2.Stream, ch h2.Chunk, end bool) {
	// The bytes are taken into the message buffer: the chunk goes back at
	// once.
	defer ch.Release()
	p := ch.B
	cs.mu.Lock()
	switch {
	case cs.st != nil:
		cs.mu.Unlock()
		s.Consumed(len(p))
		return
	case !cs.gotHeaders:
		cs.mu.Unlock()
		s.Consumed(len(p))
		cs.fail(s, status.New(codes.Internal, "h2grpc: DATA before the response headers"), http2.ErrCodeProtocol)
		return
	}
	if cs.off == len(cs.in) {
		cs.in, cs.off = cs.in[:0], 0
	}
	cs.in = append(cs.in, p...)
	if end {
		cs.finishLocked(status.New(codes.Internal, "h2grpc: the server closed the stream without sending trailers"), true)
	}
	cs.mu.Unlock()
	signal(cs.wake)
}

// Reset is the h2.Handler's: the peer reset the stream, or the connection
// ended or went away under it.
func (cs *clientStream) Reset(s *h2.Stream, code http2.ErrCode, err error) {
	var st *status.Status
	switch {
	case errors.Is(err, h2.ErrClosed) && code == http2.ErrCodeRefusedStream:
		st = status.New(codes.Unavailable, "h2grpc: the server is going away and did not take the stream")
	case err != nil:
		st = status.Newf(codes.Unavailable, "h2grpc: connection lost: %v", err)
	default:
		c := resetCode(code)
		if d, ok := cs.ctx.Deadline(); ok && c == codes.Canceled && !time.Now().Before(d) {
			// The server's copy of the deadline (grpc-timeout) ran out
			// first: the call's own deadline is why, as grpc-go says.
			c = codes.DeadlineExceeded
		}
		st = status.Newf(c, "stream terminated by RST_STREAM with error code: %s", code)
	}
	cs.fail(s, st, code)
}

// Sent is the h2.Handler's: n bytes of SendMsg's went out.
func (cs *clientStream) Sent(_ *h2.Stream, n int) {
	cs.mu.Lock()
	cs.unsent -= n
	cs.mu.Unlock()
	signal(cs.sendWake)
}

// Context is the call's context.
func (cs *clientStream) Context() context.Context { return cs.ctx }

// Header waits for the response headers. A call that ended without them
// gives empty metadata if it ended OK (a trailers-only answer), else its
// status.
func (cs *clientStream) Header() (metadata.MD, error) {
	<-cs.headerReady
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.header != nil {
		return cs.header.Copy(), nil
	}
	if cs.st != nil && cs.st.Code() != codes.OK {
		return nil, cs.st.Err()
	}
	return metadata.MD{}, nil
}

// Trailer is the trailer metadata; complete once RecvMsg has returned an
// error (io.EOF included).
func (cs *clientStream) Trailer() metadata.MD {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.trailer.Copy()
}

// CloseSend half-closes the stream: END_STREAM after the messages sent.
func (cs *clientStream) CloseSend() error {
	cs.mu.Lock()
	if cs.sentLast || cs.st != nil {
		cs.mu.Unlock()
		return nil
	}
	cs.sentLast = true
	cs.mu.Unlock()
	cs.s.WriteData(h2.Chunk{}, true)
	return nil
}

// SendMsg frames m and queues it; a call whose request is one message
// ends its side with it. It waits while more than sendBuffer bytes are
// queued and not written. io.EOF says the call has ended; RecvMsg tells
// how.
func (cs *clientStream) SendMsg(m any) error {
	err := cs.sendMsg(m)
	if err == io.EOF && !cs.desc.ClientStreams {
		// As grpc-go: a call whose request is one message learns how it
		// ended from RecvMsg, and generated code gives up on any error
		// from SendMsg, so the server's early answer (a trailers-only
		// UNIMPLEMENTED) must not surface here as io.EOF.
		return nil
	}
	return err
}

func (cs *clientStream) sendMsg(m any) error {
	cs.mu.Lock()
	sentLast, ended := cs.sentLast, cs.st != nil
	cs.mu.Unlock()
	switch {
	case ended:
		return io.EOF
	case sentLast:
		return status.Error(codes.Internal, "h2grpc: SendMsg called after CloseSend")
	}
	data, err := cs.co.codec.Marshal(m)
	if err != nil {
		st := status.Newf(codes.Internal, "grpc: error while marshaling: %v", err)
		cs.fail(cs.s, st, http2.ErrCodeCancel)
		return st.Err()
	}
	n := data.Len()
	if n > cs.co.maxSend || n > math.MaxUint32-5 {
		data.Free()
		st := status.Newf(codes.ResourceExhausted, "grpc: trying to send message larger than max (%d vs. %d)", n, cs.co.maxSend)
		cs.fail(cs.s, st, http2.ErrCodeCancel)
		return st.Err()
	}
	frame := make([]byte, 5+n)
	binary.BigEndian.PutUint32(frame[1:5], uint32(n))
	data.CopyTo(frame[5:])
	data.Free()
	end := !cs.desc.ClientStreams
	cs.mu.Lock()
	if cs.st != nil {
		cs.mu.Unlock()
		return io.EOF
	}
	cs.unsent += len(frame)
	cs.sentLast = cs.sentLast || end
	cs.mu.Unlock()
	if !cs.s.WriteData(h2.Bytes(frame), end) {
		return io.EOF
	}
	for {
		cs.mu.Lock()
		unsent, over := cs.unsent, cs.st != nil
		cs.mu.Unlock()
		switch {
		case unsent <= sendBuffer:
			return nil
		case over:
			return io.EOF
		}
		<-cs.sendWake
	}
}

// RecvMsg reads the next message into m. After the last one it returns
// io.EOF if the call ended OK, else the call's status. A call whose
// response is one message reads the status with it.
func (cs *clientStream) RecvMsg(m any) error {
	if cs.recvErr != nil {
		return cs.recvErr
	}
	b, err := cs.recv()
	if err != nil {
		return cs.end(err)
	}
	if err := cs.co.codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, m); err != nil {
		st := status.Newf(codes.Internal, "grpc: failed to unmarshal the received message: %v", err)
		cs.fail(cs.s, st, http2.ErrCodeCancel)
		return cs.end(st.Err())
	}
	if cs.desc.ServerStreams {
		return nil
	}
	// One answer: what follows it must be the end.
	switch _, err := cs.recv(); {
	case err == nil:
		st := status.New(codes.Internal, "cardinality violation: expected <EOF> for non server-streaming RPCs, but received another message")
		cs.fail(cs.s, st, http2.ErrCodeCancel)
		return cs.end(st.Err())
	case err == io.EOF:
		cs.end(io.EOF)
		return nil
	default:
		return cs.end(err)
	}
}

// end records the call's outcome for the caller, once: what RecvMsg
// returns from now on, the call options that report it.
func (cs *clientStream) end(err error) error {
	if cs.recvErr != nil {
		return cs.recvErr
	}
	cs.recvErr = err
	cs.stopAF()
	cs.mu.Lock()
	header, trailer := cs.header, cs.trailer
	cs.mu.Unlock()
	if cs.co.header != nil {
		*cs.co.header = header.Copy()
	}
	if cs.co.trailer != nil {
		*cs.co.trailer = trailer.Copy()
	}
	callErr := err
	if err == io.EOF {
		callErr = nil
	}
	for _, f := range cs.co.onFinish {
		f(callErr)
	}
	return err
}

// recv reads one message: its 5-byte prefix, then its bytes, giving the
// stream's window back as it takes them, so that a message larger than
// the window can still arrive and memory stays bounded by the message
// limit.
func (cs *clientStream) recv() ([]byte, error) {
	var prefix [5]byte
	if err := cs.readFull(prefix[:], true); err != nil {
		return nil, err
	}
	if prefix[0]&1 != 0 {
		// No grpc-accept-encoding was sent: a compressed message is the
		// server's mistake.
		st := status.New(codes.Internal, "h2grpc: compressed message received, but no compression was offered")
		cs.fail(cs.s, st, http2.ErrCodeCancel)
		return nil, st.Err()
	}
	n := binary.BigEndian.Uint32(prefix[1:])
	if uint64(n) > uint64(cs.co.maxRecv) {
		st := status.Newf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", n, cs.co.maxRecv)
		cs.fail(cs.s, st, http2.ErrCodeCancel)
		return nil, st.Err()
	}
	b := make([]byte, n)
	if err := cs.readFull(b, false); err != nil {
		return nil, err
	}
	return b, nil
}

// readFull fills p from the bytes received, waiting for more. At the end
// of the call it returns io.EOF if the call ended OK with nothing of a
// message read (atStart), else the call's status.
func (cs *clientStream) readFull(p []byte, atStart bool) error {
	got := 0
	for got < len(p) {
		cs.mu.Lock()
		for cs.off == len(cs.in) && cs.st == nil {
			cs.mu.Unlock()
			<-cs.wake
			cs.mu.Lock()
		}
		if cs.off == len(cs.in) {
			st := cs.st
			cs.mu.Unlock()
			if st.Code() != codes.OK {
				return st.Err()
			}
			if atStart && got == 0 {
				return io.EOF
			}
			return status.Error(codes.Internal, "h2grpc: the call ended in the middle of a message")
		}
		n := copy(p[got:], cs.in[cs.off:])
		cs.off += n
		cs.mu.Unlock()
		cs.s.Consumed(n)
		got += n
	}
	return nil
}

// Invoke makes a unary call on stream-opening function open.
func invoke(ctx context.Context, open func(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error), method string, args, reply any, opts ...grpc.CallOption) error {
	s, err := open(ctx, unaryDesc, method, opts...)
	if err != nil {
		return err
	}
	if err := s.SendMsg(args); err != nil && err != io.EOF {
		cs := s.(*clientStream)
		return cs.end(err)
	}
	return s.RecvMsg(reply)
}

var unaryDesc = &grpc.StreamDesc{}
