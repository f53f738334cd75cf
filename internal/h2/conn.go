// Package h2 is one HTTP/2 connection for relaying frames between two
// connections: a reader and a writer goroutine, no goroutine per stream,
// and flow control in both directions that a relay can tie to the other
// connection, so that the credit given to one peer is the room the other
// peer's stream has made.
//
// It is built on golang.org/x/net/http2's Framer and hpack, not on
// net/http: a relay moves frames, and net/http's model costs a goroutine
// and a request object per stream.
//
// Events from the peer reach a Stream's Handler on the reader goroutine;
// what a Handler does there must not block. Frames to the peer are queued
// and written by the writer goroutine, as many as are ready per write
// system call.
package h2

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Role says which end of the connection this is.
type Role uint8

const (
	// Server: the peer opens the streams (a client of the gateway).
	Server Role = iota
	// Client: this end opens the streams (the gateway to a backend).
	Client
)

// ClientPreface is what a client writes first.
const ClientPreface = http2.ClientPreface

// Config of a connection. Zero values are documented defaults.
type Config struct {
	// MaxConcurrentStreams is advertised to the peer; a Server refuses
	// streams beyond it with REFUSED_STREAM. Zero means 1000; a Client
	// advertises 0 (the backend opens no streams).
	MaxConcurrentStreams uint32
	// MaxHeaderListSize is advertised and enforced on received header
	// blocks, HPACK decoded. Zero means 16 KiB.
	MaxHeaderListSize uint32
	// StreamWindow is the receive window of each stream: the most a stream
	// can have received and not yet had Consumed. Zero means 1 MiB.
	StreamWindow uint32
	// ConnWindow is the connection's receive window. Zero means 16 MiB.
	ConnWindow uint32
	// ConnCreditOnReceipt gives connection-level credit back as soon as
	// DATA is received, leaving only the stream windows to hold the peer
	// back: on a connection shared by many streams, one stream whose
	// consumer is slow then stalls only itself. Off, connection credit is
	// given back as streams' data is Consumed, which bounds what the
	// connection holds at ConnWindow.
	ConnCreditOnReceipt bool
	// MaxFrameSize is the largest frame the peer may send. Zero means
	// DefaultMaxFrameSize.
	MaxFrameSize uint32
	// Pool holds the buffers DATA payloads are read into; nil means each
	// gets memory of its own. Its buffers should hold MaxFrameSize.
	Pool *Pool
	// WriteBufferSize and ReadBufferSize size the socket buffers. Zero
	// means 64 KiB each.
	WriteBufferSize, ReadBufferSize int
	// MaxControlFrames bounds the control frames (PING and SETTINGS
	// acknowledgements, RST_STREAM, WINDOW_UPDATE) queued and not yet
	// written: a peer that makes the connection answer more than it reads
	// is cut with ENHANCE_YOUR_CALM. Zero means 10000.
	MaxControlFrames int
	// OnStream, Server only, is called on the reader goroutine for each
	// new stream with its request headers; it must set the stream's
	// Handler (Stream.Accept) or reset it before it returns, and must not
	// block. A header block over MaxHeaderListSize comes with
	// f.Truncated set.
	OnStream func(s *Stream, f *http2.MetaHeadersFrame)
	// OnPing, if set, is told of every PING the peer sends (not acks), on
	// the reader goroutine, with whether HEADERS or DATA went to the peer
	// since its last PING; returning false closes the connection with
	// GOAWAY ENHANCE_YOUR_CALM.
	OnPing func(answered bool) bool
	// OnReset, if set, is told of every RST_STREAM the peer sends, with
	// whether the stream had an answer yet (a response header written);
	// returning false closes the connection with GOAWAY
	// ENHANCE_YOUR_CALM (rapid reset).
	OnReset func(answered bool) bool
	// OnGoAway, if set, is told when the peer sends GOAWAY.
	OnGoAway func(lastStreamID uint32, code http2.ErrCode)
	// Logger receives connection errors at debug level.
	Logger *slog.Logger
}

func (c Config) withDefaults(role Role) Config {
	if c.MaxConcurrentStreams == 0 && role == Server {
		c.MaxConcurrentStreams = 1000
	}
	if c.MaxHeaderListSize == 0 {
		c.MaxHeaderListSize = 16 << 10
	}
	if c.StreamWindow == 0 {
		c.StreamWindow = 1 << 20
	}
	if c.ConnWindow == 0 {
		c.ConnWindow = 16 << 20
	}
	if c.MaxFrameSize == 0 {
		c.MaxFrameSize = DefaultMaxFrameSize
	}
	if c.WriteBufferSize == 0 {
		c.WriteBufferSize = 64 << 10
	}
	if c.ReadBufferSize == 0 {
		c.ReadBufferSize = 64 << 10
	}
	if c.MaxControlFrames == 0 {
		c.MaxControlFrames = 10000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// ErrClosed is returned for streams opened on a connection that is closed
// or going away.
var ErrClosed = errors.New("h2: connection closed")

// Conn is one HTTP/2 connection.
type Conn struct {
	nc   net.Conn
	role Role
	cfg  Config
	log  *slog.Logger

	br  *bufio.Reader
	rf  *http2.Framer // read side; the reader goroutine's alone
	hr  *headerReader // the reader goroutine's alone
	out *outBuf
	wf  *http2.Framer // write side; the writer goroutine's alone
	// enc and encBuf are the writer goroutine's: headers are encoded in
	// the order they are written, as HPACK requires.
	enc    *hpack.Encoder
	encBuf encBuffer

	wake chan struct{} // the writer has work; capacity 1
	// inline: Flush may write on its caller's goroutine (the socket
	// takes a write that does not wait).
	inline bool
	// picks and ctrls are the write turn's scratch lists.
	picks []pick
	ctrls []ctrlFrame
	// flushes are connections to Flush once the reader has read what it
	// has (Stream.ThenFlush); the reader goroutine's alone.
	flushes []*Conn
	done    chan struct{} // closed when the connection is closed

	mu sync.Mutex // guards the fields below
	// streams are the open streams by ID; a Client's streams get their ID
	// when their HEADERS are written.
	streams map[uint32]*Stream
	// pending are a Client's streams whose HEADERS wait for an ID and a
	// free slot under the peer's MaxConcurrentStreams.
	pending []*Stream
	// writing: someone has the write turn (the writer goroutine, or a
	// Flush); wantWrite: the writer was turned away meanwhile.
	writing, wantWrite bool
	// ready are the streams with frames to write, in turn; readySpare is
	// the previous turn's list, kept for the next.
	ready, readySpare []*Stream
	control           []ctrlFrame
	// peer settings
	peerMaxStreams   uint32
	peerStreamWindow int32
	peerMaxFrame     uint32
	peerTableSize    uint32
	tableSizeChanged bool
	settingsAcks     int
	// sendWindow is the peer's connection-level window for our DATA.
	sendWindow int64
	// recvWindow is what the peer may still send on the connection;
	// recvUnacked is credit consumed and not yet given back.
	recvWindow, recvUnacked int64
	nextStreamID            uint32 // Client: the next ID to assign
	lastPeerStream          uint32 // Server: the highest stream ID the peer opened
	active                  int    // streams open, for MaxConcurrentStreams
	goAwaySent              bool
	draining                bool // the first GOAWAY of two is out
	// lazy wakes the writer for frames queued by queueLazy that found
	// nothing to go out with.
	lazy           *time.Timer
	goAwayRecv     bool
	peerLastStream uint32
	closed         bool
	closeErr       error
	writerDone     chan struct{}
	closeDone      chan struct{} // closed when closeWith has finished
	// onIdle is called (without mu) when the last stream closes.
	onIdle func()
	// onReady is called once the handshake is done.
	onReady func()
	// first are the SETTINGS the writer sends first (after the preface,
	// for a Client); nil once sent.
	first []http2.Setting
	// maxFrame is the peer's largest frame as of the writer's last
	// collect: the writer goroutine's alone, so that writing a frame takes
	// no lock.
	maxFrame uint32
	// wroteStream is set by the writer when it writes HEADERS or DATA and
	// cleared by each PING received: a PING after an answer is keepalive
	// that is earning its keep, not a flood.
	wroteStream bool
}

type ctrlKind uint8

const (
	ctrlSettingsAck ctrlKind = iota
	ctrlPing
	ctrlPingAck
	ctrlWindow
	ctrlRST
	ctrlGoAway
	// ctrlClose closes the connection once the frames before it are out.
	ctrlClose
)

type ctrlFrame struct {
	kind   ctrlKind
	stream uint32
	n      uint32
	code   http2.ErrCode
	data   [8]byte
	debug  string
	// after, for GOAWAY: close the connection once written.
	after bool
}

// NewConn wraps nc, over which the preface has not been exchanged yet.
// Call Serve.
func NewConn(nc net.Conn, role Role, cfg Config) *Conn {
	cfg = cfg.withDefaults(role)
	c := &Conn{
		nc: nc, role: role, cfg: cfg, log: cfg.Logger,
		wake: make(chan struct{}, 1), done: make(chan struct{}), writerDone: make(chan struct{}), closeDone: make(chan struct{}),
		streams:          map[uint32]*Stream{},
		peerMaxStreams:   math.MaxUint32,
		peerStreamWindow: 65535,
		peerMaxFrame:     16 << 10,
		peerTableSize:    4096,
		sendWindow:       65535,
		recvWindow:       65535,
		nextStreamID:     1,
	}
	var rd io.Reader = nc
	sr, sw := newRawIO(nc)
	if sr != nil {
		rd = sr
	}
	c.br = bufio.NewReaderSize(rd, cfg.ReadBufferSize)
	c.out = newOutBuf(nc, sw, cfg.WriteBufferSize)
	c.inline = sw != nil
	c.rf = http2.NewFramer(nil, c.br)
	c.rf.SetMaxReadFrameSize(cfg.MaxFrameSize)
	c.rf.MaxHeaderListSize = cfg.MaxHeaderListSize
	c.hr = newHeaderReader(cfg.MaxHeaderListSize)
	c.rf.SetReuseFrames()
	c.wf = http2.NewFramer(c.out, nil)
	c.enc = hpack.NewEncoder(&c.encBuf)
	return c
}

// NetConn is the connection underneath.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Done is closed when the connection has closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is why the connection closed; nil while it is open.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeErr
}

// Serve exchanges the preface and settings, then reads frames until the
// connection ends; the writer runs beside it. handshakeDeadline, if not
// zero, bounds the time to the peer's preface and first SETTINGS. Serve
// returns when both goroutines have ended.
func (c *Conn) Serve(handshakeDeadline time.Time) error {
	go c.writeLoop()
	err := c.handshake(handshakeDeadline)
	if err == nil {
		c.mu.Lock()
		ready := c.onReady
		c.mu.Unlock()
		if ready != nil {
			ready()
		}
		err = c.readLoop()
	}
	c.closeWith(err)
	<-c.writerDone
	// Another goroutine may have begun the close: Serve returns only
	// once it, and the handlers it tells, are done.
	<-c.closeDone
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeErr
}

func (c *Conn) handshake(deadline time.Time) error {
	settings := []http2.Setting{
		{ID: http2.SettingMaxHeaderListSize, Val: c.cfg.MaxHeaderListSize},
		{ID: http2.SettingInitialWindowSize, Val: c.cfg.StreamWindow},
		{ID: http2.SettingMaxFrameSize, Val: c.cfg.MaxFrameSize},
	}
	if c.role == Server {
		settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.cfg.MaxConcurrentStreams})
	} else {
		settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	}
	// The first frames are the writer's, like every other: the peer may
	// be writing its own at the same moment, and over an unbuffered pipe
	// two ends that both write first would wait for each other.
	c.mu.Lock()
	c.first = settings
	if c.cfg.ConnWindow > 65535 {
		c.recvWindow = int64(c.cfg.ConnWindow)
	}
	c.mu.Unlock()
	c.kick()
	if !deadline.IsZero() {
		_ = c.nc.SetReadDeadline(deadline)
	}
	if c.role == Server {
		buf := make([]byte, len(ClientPreface))
		if _, err := io.ReadFull(c.br, buf); err != nil {
			return fmt.Errorf("h2: reading the client preface: %w", err)
		}
		if string(buf) != ClientPreface {
			return errors.New("h2: bad client preface")
		}
	}
	f, err := c.rf.ReadFrame()
	if err != nil {
		return fmt.Errorf("h2: reading the peer's first SETTINGS: %w", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return connError(http2.ErrCodeProtocol, "first frame is not SETTINGS")
	}
	if err := c.applySettings(sf); err != nil {
		return err
	}
	if !deadline.IsZero() {
		_ = c.nc.SetReadDeadline(time.Time{})
	}
	return nil
}

// connError is a connection error sent to the peer in GOAWAY.
func connError(code http2.ErrCode, reason string) error {
	return goAwayError{code: code, reason: reason}
}

type goAwayError struct {
	code   http2.ErrCode
	reason string
}

func (e goAwayError) Error() string { return fmt.Sprintf("h2: %s: %s", e.code, e.reason) }

func (c *Conn) readLoop() error {
	// What handlers asked to have written goes out even when the
	// connection ends.
	defer c.runFlushes()
	for {
		if len(c.flushes) > 0 && !c.frameBuffered() {
			// The next frame is not here yet: what arrived together
			// leaves together, before the reader waits.
			c.runFlushes()
		}
		if ok, err := c.readData(); ok || err != nil {
			if err != nil {
				return err
			}
			continue
		}
		f, err := c.rf.ReadFrame()
		if hf, ok := f.(*http2.HeadersFrame); ok && err == nil {
			f, err = c.hr.read(c.rf, hf)
		}
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code, true)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return connError(http2.ErrCode(ce), "frame error: "+errString(c.rf.ErrorDetail()))
			}
			return err
		}
		if err := c.handleFrame(f); err != nil {
			return err
		}
	}
}

// readData reads the next frame itself when it is a plain DATA frame (no
// padding, a stream, within the frame size limit): its payload goes from
// the socket's read buffer straight into a pooled Chunk that the stream's
// handler then owns, where the framer would read it into a buffer of its
// own to be copied again. Anything else, and every malformed DATA frame,
// is left to the framer, which checks it. ok reports that a frame was read.
func (c *Conn) readData() (ok bool, err error) {
	hdr, err := c.br.Peek(9)
	if err != nil {
		// The framer reads what there is and says what went wrong.
		return false, nil
	}
	flags := http2.Flags(hdr[4])
	if http2.FrameType(hdr[3]) != http2.FrameData || flags.Has(http2.FlagDataPadded) {
		return false, nil
	}
	n := uint32(hdr[0])<<16 | uint32(hdr[1])<<8 | uint32(hdr[2])
	id := binary.BigEndian.Uint32(hdr[5:]) & (1<<31 - 1)
	if id == 0 || n > c.cfg.MaxFrameSize {
		return false, nil
	}
	_, _ = c.br.Discard(9)
	ch := c.cfg.Pool.get(int(n))
	if _, err := io.ReadFull(c.br, ch.B); err != nil {
		ch.Release()
		return true, err
	}
	return true, c.data(id, int64(n), ch, flags.Has(http2.FlagDataEndStream))
}

// frameBuffered reports whether a whole frame is in the read buffer.
func (c *Conn) frameBuffered() bool {
	n := c.br.Buffered()
	if n < 9 {
		return false
	}
	hdr, _ := c.br.Peek(9)
	return n >= 9+(int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
}

// runFlushes flushes the connections that handlers asked for.
func (c *Conn) runFlushes() {
	for i, w := range c.flushes {
		w.Flush()
		c.flushes[i] = nil
	}
	c.flushes = c.flushes[:0]
}

func errString(err error) string {
	if err == nil {
		return "invalid frame"
	}
	return err.Error()
}

func (c *Conn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		return c.applySettings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			if binary.BigEndian.Uint64(f.Data[:]) == drainPing {
				c.finishGoAway(http2.ErrCodeNo, "draining")
			}
			return nil
		}
		c.mu.Lock()
		active := c.wroteStream
		c.wroteStream = false
		c.mu.Unlock()
		if c.cfg.OnPing != nil && !c.cfg.OnPing(active) {
			return connError(http2.ErrCodeEnhanceYourCalm, "too_many_pings")
		}
		return c.queueLazy(ctrlFrame{kind: ctrlPingAck, data: f.Data})
	case *http2.WindowUpdateFrame:
		return c.windowUpdate(f)
	case *http2.MetaHeadersFrame:
		return c.headers(f)
	case *http2.DataFrame:
		return c.data(f.StreamID, int64(f.Length), c.cfg.Pool.copyOf(f.Data()), f.StreamEnded())
	case *http2.RSTStreamFrame:
		return c.peerReset(f.StreamID, f.ErrCode)
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			c.resetStream(f.StreamID, http2.ErrCodeProtocol, true)
		}
		return nil
	case *http2.GoAwayFrame:
		c.goAway(f.LastStreamID, f.ErrCode)
		return nil
	case *http2.PushPromiseFrame:
		return connError(http2.ErrCodeProtocol, "PUSH_PROMISE with push disabled")
	}
	// PRIORITY and unknown frame types are ignored, as RFC 9113 says.
	return nil
}

func (c *Conn) applySettings(f *http2.SettingsFrame) error {
	var err error
	c.mu.Lock()
	f.ForeachSetting(func(s http2.Setting) error {
		if e := s.Valid(); e != nil {
			err = e
			return e
		}
		switch s.ID {
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		case http2.SettingInitialWindowSize:
			delta := int32(s.Val) - c.peerStreamWindow
			c.peerStreamWindow = int32(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		case http2.SettingHeaderTableSize:
			c.peerTableSize, c.tableSizeChanged = s.Val, true
		}
		return nil
	})
	c.mu.Unlock()
	if err != nil {
		var ce http2.ConnectionError
		if errors.As(err, &ce) {
			return connError(http2.ErrCode(ce), "bad SETTINGS")
		}
		return err
	}
	// The peer's limit on streams may have risen: pending ones may go.
	return c.queueControl(ctrlFrame{kind: ctrlSettingsAck})
}

// queueControl queues a control frame; too many unwritten is a peer that
// makes the connection answer faster than it reads.
func (c *Conn) queueControl(f ctrlFrame) error {
	if err := c.enqueue(f, false); err != nil {
		return err
	}
	c.kick()
	return nil
}

// enqueue queues f unless the connection is closed or the peer has made
// it queue too many; lazy arms the timer that sends f if nothing else
// goes out first.
func (c *Conn) enqueue(f ctrlFrame, lazy bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	if len(c.control) >= c.cfg.MaxControlFrames {
		return connError(http2.ErrCodeEnhanceYourCalm, "too many control frames queued")
	}
	c.control = append(c.control, f)
	if lazy {
		if c.lazy == nil {
			c.lazy = time.AfterFunc(lazyDelay, c.kick)
		} else {
			c.lazy.Reset(lazyDelay)
		}
	}
	return nil
}

// lazyDelay is the longest a PING's answer waits for other frames to go
// out with. gRPC's peers send a PING for each window of data they receive
// (to measure the bandwidth-delay product): answered alone, each costs a
// write system call, as much as the call's own frames; riding along with
// the next frames, nothing. A later answer only makes the peer's estimate
// of the connection's capacity larger.
const lazyDelay = time.Millisecond

// queueLazy queues a control frame that may wait up to lazyDelay for
// other frames to be written with.
func (c *Conn) queueLazy(f ctrlFrame) error { return c.enqueue(f, true) }

func (c *Conn) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Conn) windowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		if c.sendWindow > math.MaxInt32 {
			c.mu.Unlock()
			return connError(http2.ErrCodeFlowControl, "connection window over 2^31-1")
		}
		// Wake the writer only if a stream was waiting for this window.
		woke := c.readyAllLocked()
		c.mu.Unlock()
		if woke {
			c.kick()
		}
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		idle := c.idleLocked(f.StreamID)
		c.mu.Unlock()
		if idle {
			return connError(http2.ErrCodeProtocol, "WINDOW_UPDATE on an idle stream")
		}
		return nil
	}
	s.sendWindow += int32(f.Increment)
	if s.sendWindow < 0 {
		c.mu.Unlock()
		c.resetStream(f.StreamID, http2.ErrCodeFlowControl, true)
		return nil
	}
	waiting := len(s.out) > 0
	c.readyLocked(s)
	c.mu.Unlock()
	if waiting {
		c.kick()
	}
	return nil
}

// readyAllLocked queues every stream that has DATA waiting for window,
// and reports whether there was one.
func (c *Conn) readyAllLocked() bool {
	any := false
	for _, s := range c.streams {
		if len(s.out) > 0 {
			c.readyLocked(s)
			any = true
		}
	}
	return any
}

func (c *Conn) readyLocked(s *Stream) {
	// A stream still waiting for its ID joins the turn when it gets one:
	// joining before would let it be written before streams that got a
	// lower ID, and IDs must rise in the order streams open.
	if !s.inReady && len(s.out) > 0 && s.id != 0 {
		s.inReady = true
		c.ready = append(c.ready, s)
	}
}

func (c *Conn) headers(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	s := c.streams[id]
	if s != nil {
		c.mu.Unlock()
		if s.remoteDone {
			c.resetStream(id, http2.ErrCodeStreamClosed, true)
			return nil
		}
		// A request's second header block is its trailers: it must end
		// the stream and carry no pseudo-header (RFC 9113 8.1).
		if c.role == Server && (!f.StreamEnded() || len(f.PseudoFields()) > 0) {
			c.resetStream(id, http2.ErrCodeProtocol, true)
			return nil
		}
		if f.StreamEnded() {
			if !s.lengthOK() {
				c.resetStream(id, http2.ErrCodeProtocol, true)
				return nil
			}
			c.remoteEnded(s)
		}
		s.h.Headers(s, f)
		return nil
	}
	if c.role == Client {
		next := c.nextStreamID
		c.mu.Unlock()
		// A response to a stream we reset or never opened.
		if id >= next {
			return connError(http2.ErrCodeProtocol, "HEADERS on a stream never opened")
		}
		return nil
	}
	if id%2 == 0 || id <= c.lastPeerStream {
		c.mu.Unlock()
		if id%2 == 0 {
			return connError(http2.ErrCodeProtocol, "client stream ID is even")
		}
		// A stream already closed: RFC 9113 5.1, STREAM_CLOSED.
		return connError(http2.ErrCodeStreamClosed, "HEADERS on a closed stream")
	}
	c.lastPeerStream = id
	if c.goAwaySent || c.closed {
		c.mu.Unlock()
		return nil
	}
	if uint32(c.active) >= c.cfg.MaxConcurrentStreams {
		c.mu.Unlock()
		return c.queueControl(ctrlFrame{kind: ctrlRST, stream: id, code: http2.ErrCodeRefusedStream})
	}
	contentLength, ok := checkRequest(f)
	if f.HasPriority() && f.Priority.StreamDep == id {
		ok = false // a stream cannot depend on itself (RFC 9113 5.3.1)
	}
	if !ok {
		// Malformed (RFC 9113 8.1.1): a stream error, before any
		// handler sees the request.
		c.mu.Unlock()
		return c.queueControl(ctrlFrame{kind: ctrlRST, stream: id, code: http2.ErrCodeProtocol})
	}
	s = c.newStreamLocked(id)
	s.contentLength = contentLength
	c.mu.Unlock()
	if f.StreamEnded() {
		c.remoteEnded(s)
	}
	c.cfg.OnStream(s, f)
	if s.h == nil {
		s.Reset(http2.ErrCodeInternal)
	}
	return nil
}

// checkRequest reports whether a request's header block is well-formed
// as RFC 9113 8.3.1 and 8.2.2 say, and its content-length (-1 without one).
func checkRequest(f *http2.MetaHeadersFrame) (contentLength int64, ok bool) {
	if f.PseudoValue("method") == "" || f.PseudoValue("scheme") == "" || f.PseudoValue("path") == "" {
		return 0, false
	}
	contentLength = -1
	for _, hf := range f.RegularFields() {
		switch hf.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return 0, false
		case "te":
			if hf.Value != "trailers" {
				return 0, false
			}
		case "content-length":
			n, err := strconv.ParseInt(hf.Value, 10, 64)
			if err != nil || n < 0 {
				return 0, false
			}
			contentLength = n
		}
	}
	return contentLength, true
}

func (c *Conn) newStreamLocked(id uint32) *Stream {
	s := &Stream{c: c, id: id, sendWindow: c.peerStreamWindow, recvWindow: int32(c.cfg.StreamWindow), contentLength: -1}
	s.out = s.outArr[:0]
	c.streams[id] = s
	c.active++
	return s
}

// data takes a DATA frame of n bytes on the wire (padding included) whose
// payload is ch.
func (c *Conn) data(id uint32, n int64, ch Chunk, end bool) error {
	payload := int64(len(ch.B))
	c.mu.Lock()
	if n > c.recvWindow {
		c.mu.Unlock()
		ch.Release()
		return connError(http2.ErrCodeFlowControl, "DATA beyond the connection window")
	}
	c.recvWindow -= n
	s := c.streams[id]
	if s == nil || s.remoteDone {
		// Data for a stream we are done with still used the connection's
		// window: give it back.
		c.creditConnLocked(n)
		c.mu.Unlock()
		ch.Release()
		c.kick()
		if s == nil && id > c.highestKnown() {
			return connError(http2.ErrCodeProtocol, "DATA on a stream never opened")
		}
		if s != nil {
			c.resetStream(id, http2.ErrCodeStreamClosed, true)
		}
		return nil
	}
	if int32(n) > s.recvWindow {
		c.creditConnLocked(n)
		c.mu.Unlock()
		ch.Release()
		c.resetStream(id, http2.ErrCodeFlowControl, true)
		return nil
	}
	s.recvWindow -= int32(n)
	// Padding is flow-controlled but never reaches the consumer: its
	// credit goes back at once.
	if pad := n - payload; pad > 0 {
		s.unacked += int32(pad)
	}
	if c.cfg.ConnCreditOnReceipt {
		c.creditConnLocked(n)
	} else if pad := n - payload; pad > 0 {
		c.creditConnLocked(pad)
	}
	s.received += payload
	c.mu.Unlock()
	if (s.contentLength >= 0 && s.received > s.contentLength) || (end && !s.lengthOK()) {
		ch.Release()
		c.resetStream(id, http2.ErrCodeProtocol, true)
		return nil
	}
	if end {
		c.remoteEnded(s)
	}
	s.h.Data(s, ch, end)
	return nil
}

func (c *Conn) highestKnown() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.role == Server {
		return c.lastPeerStream
	}
	return c.nextStreamID
}

// creditConnLocked gives the peer n bytes of connection window back,
// batched: a WINDOW_UPDATE for every quarter of the window consumed.
func (c *Conn) creditConnLocked(n int64) {
	c.recvUnacked += n
	if c.recvUnacked >= int64(c.cfg.ConnWindow)/4 {
		c.control = append(c.control, ctrlFrame{kind: ctrlWindow, n: uint32(c.recvUnacked)})
		c.recvWindow += c.recvUnacked
		c.recvUnacked = 0
	}
}

func (c *Conn) peerReset(id uint32, code http2.ErrCode) error {
	c.mu.Lock()
	s := c.streams[id]
	if s == nil {
		idle := c.idleLocked(id)
		c.mu.Unlock()
		if idle {
			return connError(http2.ErrCodeProtocol, "RST_STREAM on an idle stream")
		}
		return nil
	}
	answered := s.answered
	c.closeStreamLocked(s)
	c.mu.Unlock()
	if c.cfg.OnReset != nil && !c.cfg.OnReset(answered) {
		c.closeWith(connError(http2.ErrCodeEnhanceYourCalm, "too many streams reset before an answer"))
	}
	s.h.Reset(s, code, nil)
	return nil
}

// idleLocked reports whether stream id was never opened (RFC 9113 5.1).
func (c *Conn) idleLocked(id uint32) bool {
	if c.role == Server {
		return id > c.lastPeerStream
	}
	return id >= c.nextStreamID
}

func (c *Conn) goAway(last uint32, code http2.ErrCode) {
	c.log.Debug("h2 GOAWAY from the peer", "remote", c.nc.RemoteAddr(), "last_stream", last, "code", code)
	c.mu.Lock()
	c.goAwayRecv = true
	c.peerLastStream = last
	var refused []*Stream
	if c.role == Client {
		for id, s := range c.streams {
			if id > last {
				refused = append(refused, s)
				c.closeStreamLocked(s)
			}
		}
		for _, s := range c.pending {
			refused = append(refused, s)
		}
		c.pending = nil
	}
	c.mu.Unlock()
	if c.cfg.OnGoAway != nil {
		c.cfg.OnGoAway(last, code)
	}
	// Streams the peer never processed: a caller may send them elsewhere.
	for _, s := range refused {
		s.h.Reset(s, http2.ErrCodeRefusedStream, ErrClosed)
	}
}

// remoteEnded records the peer's END_STREAM on s.
func (c *Conn) remoteEnded(s *Stream) {
	c.mu.Lock()
	s.remoteDone = true
	if s.localDone && len(s.out) == 0 {
		c.closeStreamLocked(s)
	}
	c.mu.Unlock()
}

// closeStreamLocked forgets s; frames still queued for it are dropped.
func (c *Conn) closeStreamLocked(s *Stream) {
	if s.closed {
		return
	}
	s.closed = true
	if s.id != 0 {
		delete(c.streams, s.id)
	}
	for _, it := range s.out {
		it.owner.Release()
	}
	s.out = nil
	c.active--
	if c.active == 0 {
		if c.goAwaySent && !c.closed {
			// Drained: every stream the GOAWAY let finish has.
			c.control = append(c.control, ctrlFrame{kind: ctrlClose})
			c.kickLocked()
		}
		if c.onIdle != nil {
			go c.onIdle()
		}
	}
	if c.role == Client {
		// A slot under the peer's limit may have opened.
		if len(c.pending) > 0 {
			c.kickLocked()
		}
	}
}

func (c *Conn) kickLocked() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// resetStream resets stream id with code: the peer gets RST_STREAM, and
// the stream's handler, when notify, hears of it.
func (c *Conn) resetStream(id uint32, code http2.ErrCode, notify bool) {
	c.mu.Lock()
	s := c.streams[id]
	if s != nil {
		c.closeStreamLocked(s)
	}
	c.mu.Unlock()
	_ = c.queueControl(ctrlFrame{kind: ctrlRST, stream: id, code: code})
	if s != nil && notify && s.h != nil {
		s.h.Reset(s, code, fmt.Errorf("h2: stream reset by the gateway: %s", code))
	}
}

// closeWith ends the connection: a GOAWAY for a connection error, then the
// socket; every open stream's handler hears of it.
func (c *Conn) closeWith(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	close(c.done)
	if c.lazy != nil {
		c.lazy.Stop()
	}
	if err == nil {
		err = ErrClosed
	}
	c.closeErr = err
	var ge goAwayError
	if errors.As(err, &ge) && !c.goAwaySent {
		c.goAwaySent = true
		last := c.lastPeerStream
		c.control = append(c.control, ctrlFrame{kind: ctrlGoAway, stream: last, code: ge.code, debug: ge.reason, after: true})
	}
	streams := make([]*Stream, 0, len(c.streams)+len(c.pending))
	for _, s := range c.streams {
		streams = append(streams, s)
	}
	streams = append(streams, c.pending...)
	// The handlers are read under the lock: a stream's may be set by
	// Accept on the reader goroutine while this runs on another.
	handlers := make([]Handler, len(streams))
	for i, s := range streams {
		handlers[i] = s.h
		c.closeStreamLocked(s)
	}
	c.pending = nil
	c.mu.Unlock()
	c.kick()
	if !errors.As(err, &ge) {
		_ = c.nc.Close()
	} else {
		// The writer closes the socket once the GOAWAY is out; a peer
		// that does not read gets a second.
		_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	}
	for i, s := range streams {
		if h := handlers[i]; h != nil {
			h.Reset(s, http2.ErrCodeCancel, err)
		}
	}
	c.log.Debug("h2 connection closed", "remote", c.nc.RemoteAddr(), "err", err)
	close(c.closeDone)
}

// Close closes the connection at once.
func (c *Conn) Close() { c.closeWith(nil) }

// GoAway tells the peer that no stream above the last it opened will be
// processed (a Server's drain). With graceful, a first GOAWAY with the
// largest stream ID goes out first, and the last stream ID is taken after
// a PING round trip, so that streams the client opened meanwhile are not
// lost (RFC 9113 6.8).
func (c *Conn) GoAway(code http2.ErrCode, debug string) {
	c.mu.Lock()
	if c.goAwaySent || c.closed || c.draining {
		c.mu.Unlock()
		return
	}
	if c.role == Server && code == http2.ErrCodeNo {
		// The first phase: no stream is refused yet, and the PING's
		// answer proves that the client has seen the GOAWAY, so that
		// every stream it opened before is counted in the second.
		c.draining = true
		c.control = append(c.control,
			ctrlFrame{kind: ctrlGoAway, stream: 1<<31 - 1, code: code, debug: debug},
			ctrlFrame{kind: ctrlPing, data: pingData(drainPing)})
		c.mu.Unlock()
		c.kick()
		// A client that does not answer PINGs gets the second GOAWAY
		// anyway.
		time.AfterFunc(time.Second, func() { c.finishGoAway(code, debug) })
		return
	}
	c.mu.Unlock()
	c.finishGoAway(code, debug)
}

// drainPing marks the PING of a two-phase GOAWAY ("hgdrain" in ASCII).
const drainPing uint64 = 0x6867647261696e00

func pingData(v uint64) (b [8]byte) {
	binary.BigEndian.PutUint64(b[:], v)
	return b
}

// finishGoAway sends the GOAWAY that names the last stream processed, and
// closes the connection at once if no stream is open, else when the last
// one ends.
func (c *Conn) finishGoAway(code http2.ErrCode, debug string) {
	c.mu.Lock()
	if c.goAwaySent || c.closed {
		c.mu.Unlock()
		return
	}
	c.goAwaySent = true
	c.control = append(c.control, ctrlFrame{kind: ctrlGoAway, stream: c.lastPeerStream, code: code, debug: debug})
	idle := c.active == 0
	c.mu.Unlock()
	c.kick()
	if idle {
		c.closeAfterWrites()
	}
}

// closeAfterWrites closes the connection once queued frames are written.
func (c *Conn) closeAfterWrites() {
	c.mu.Lock()
	c.control = append(c.control, ctrlFrame{kind: ctrlClose})
	c.mu.Unlock()
	c.kick()
}

// Active is the number of open streams.
func (c *Conn) Active() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active
}

// SetOnReady sets a function called once the preface and SETTINGS have
// been exchanged.
func (c *Conn) SetOnReady(f func()) {
	c.mu.Lock()
	c.onReady = f
	c.mu.Unlock()
}

// SetOnIdle sets a function called (on its own goroutine) each time the
// last open stream closes.
func (c *Conn) SetOnIdle(f func()) {
	c.mu.Lock()
	c.onIdle = f
	c.mu.Unlock()
}

// CanOpen reports whether a Client connection takes new streams.
func (c *Conn) CanOpen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed && !c.goAwayRecv && !c.goAwaySent
}
