package h2

import (
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Handler receives one stream's events from the peer, on the connection's
// reader goroutine, except Sent, which runs on the writer goroutine. No
// method may block.
type Handler interface {
	// Headers: a header block; trailers when f.StreamEnded().
	Headers(s *Stream, f *http2.MetaHeadersFrame)
	// Data: payload bytes, which the handler owns from then on: it
	// passes ch to a WriteData or calls ch.Release. The stream's window
	// shrinks by len(ch.B) until Consumed gives it back.
	Data(s *Stream, ch Chunk, endStream bool)
	// Reset: the stream ended abnormally: reset by the peer (err nil), or
	// by the connection (err says why: closed, GOAWAY above the stream,
	// a protocol error). No event follows.
	Reset(s *Stream, code http2.ErrCode, err error)
	// Sent: n bytes of DATA queued by WriteData went out.
	Sent(s *Stream, n int)
}

// Stream is one HTTP/2 stream. Its methods may be called from any
// goroutine.
type Stream struct {
	c  *Conn
	id uint32 // 0 for a Client stream until its HEADERS are written
	h  Handler
	// Value is the owner's: the relay keeps its call here.
	Value any

	// guarded by c.mu
	out []outItem
	// outArr holds out's first items without an allocation: a unary
	// call's side is at most three (headers, a message, trailers).
	outArr     [3]outItem
	inReady    bool
	sendWindow int32
	recvWindow int32
	unacked    int32
	localDone  bool // END_STREAM queued or sent by us
	remoteDone bool // END_STREAM received
	answered   bool // a Server stream's response HEADERS queued
	closed     bool
	// contentLength is the request's content-length, -1 without one;
	// received counts its DATA bytes (the reader goroutine's).
	contentLength, received int64
	// opened: the HEADERS that open the stream were taken to be written;
	// before that the peer has never heard of it, and a RST_STREAM for it
	// would be a protocol error on the whole connection.
	opened bool
}

type outKind uint8

const (
	outHeaders outKind = iota
	outData
)

type outItem struct {
	kind   outKind
	fields []hpack.HeaderField
	data   []byte
	end    bool
	// owner is what data was cut from, released once the item is written
	// or dropped.
	owner Chunk
}

// lengthOK reports whether the DATA received matches the content-length,
// at the end of the stream.
func (s *Stream) lengthOK() bool { return s.contentLength < 0 || s.received == s.contentLength }

// Accept sets a Server stream's handler; OnStream must call it (or Reset).
func (s *Stream) Accept(h Handler) {
	// Under the lock: a close on another goroutine reads it.
	s.c.mu.Lock()
	s.h = h
	s.c.mu.Unlock()
}

// OpenStream queues a new stream with its request headers; its ID is
// assigned when they are written, in order, under the peer's limit on
// concurrent streams.
func (c *Conn) OpenStream(fields []hpack.HeaderField, endStream bool, h Handler) (*Stream, error) {
	s, err := c.QueueStream(fields, endStream, h)
	if err == nil {
		c.kick()
	}
	return s, err
}

// QueueStream is OpenStream without waking the writer: the caller flushes
// (ThenFlush, Conn.Flush).
func (c *Conn) QueueStream(fields []hpack.HeaderField, endStream bool, h Handler) (*Stream, error) {
	c.mu.Lock()
	if c.closed || c.goAwayRecv || c.goAwaySent {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	s := &Stream{c: c, h: h, sendWindow: c.peerStreamWindow, recvWindow: int32(c.cfg.StreamWindow), contentLength: -1}
	s.out = s.outArr[:0]
	s.out = append(s.out, outItem{kind: outHeaders, fields: fields, end: endStream})
	s.localDone = endStream
	c.pending = append(c.pending, s)
	c.active++
	c.mu.Unlock()
	return s, nil
}

// WriteHeaders queues a header block: response headers, or trailers with
// endStream. The fields are the connection's until written.
func (s *Stream) WriteHeaders(fields []hpack.HeaderField, endStream bool) {
	if s.QueueHeaders(fields, endStream) {
		s.c.kick()
	}
}

// QueueHeaders is WriteHeaders without waking the writer: the caller
// flushes (ThenFlush, Conn.Flush). It reports whether anything was queued.
func (s *Stream) QueueHeaders(fields []hpack.HeaderField, endStream bool) bool {
	c := s.c
	c.mu.Lock()
	if s.closed || s.localDone {
		c.mu.Unlock()
		return false
	}
	s.answered = true
	s.out = append(s.out, outItem{kind: outHeaders, fields: fields, end: endStream})
	s.localDone = endStream
	c.readyLocked(s)
	c.mu.Unlock()
	return true
}

// WriteData queues ch's bytes, sent as the peer's windows allow; the
// handler's Sent reports each part written, and ch is released once
// written. It reports false, having released ch, when the stream is gone.
func (s *Stream) WriteData(ch Chunk, endStream bool) bool {
	if !s.QueueData(ch, endStream) {
		return false
	}
	s.c.kick()
	return true
}

// QueueData is WriteData without waking the writer: the caller flushes
// (ThenFlush, Conn.Flush).
func (s *Stream) QueueData(ch Chunk, endStream bool) bool {
	c := s.c
	c.mu.Lock()
	if s.closed || s.localDone {
		c.mu.Unlock()
		ch.Release()
		return false
	}
	s.out = append(s.out, outItem{kind: outData, data: ch.B, end: endStream, owner: ch})
	s.localDone = endStream
	c.readyLocked(s)
	c.mu.Unlock()
	return true
}

// ThenFlush has w's connection flushed (Conn.Flush) once s's reader has
// read every frame that arrived with the one it is handling: frames
// relayed from one read leave in one write, on the reader's goroutine.
// Only s's Headers and Data handlers may call it: it belongs to the
// reader goroutine of s's connection.
func (s *Stream) ThenFlush(w *Stream) {
	c := s.c
	for _, x := range c.flushes {
		if x == w.c {
			return
		}
	}
	c.flushes = append(c.flushes, w.c)
}

// Reset ends the stream with RST_STREAM code; its handler hears nothing
// more.
func (s *Stream) Reset(code http2.ErrCode) {
	c := s.c
	c.mu.Lock()
	if s.closed {
		c.mu.Unlock()
		return
	}
	id, opened := s.id, s.opened || c.role == Server
	c.closeStreamLocked(s)
	if !opened {
		// Never sent: nothing to tell the peer; drop it from pending.
		for i, p := range c.pending {
			if p == s {
				c.pending = append(c.pending[:i], c.pending[i+1:]...)
				break
			}
		}
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	_ = c.queueControl(ctrlFrame{kind: ctrlRST, stream: id, code: code})
}

// Consumed gives the peer n bytes of the stream's window back (and of the
// connection's, unless that went back on receipt): the consumer has taken
// them. Updates are batched, a quarter of the window at a time.
func (s *Stream) Consumed(n int) {
	if n <= 0 {
		return
	}
	c := s.c
	c.mu.Lock()
	queued := len(c.control)
	if !c.cfg.ConnCreditOnReceipt {
		c.creditConnLocked(int64(n))
	}
	if !s.closed && !s.remoteDone {
		s.unacked += int32(n)
		if s.unacked >= int32(c.cfg.StreamWindow/4) {
			c.control = append(c.control, ctrlFrame{kind: ctrlWindow, stream: s.id, n: uint32(s.unacked)})
			s.recvWindow += s.unacked
			s.unacked = 0
		}
	}
	// Wake the writer only for an update to send: a wake for nothing
	// would also send what waits to go out with other frames (PING
	// answers) alone.
	wake := len(c.control) > queued
	c.mu.Unlock()
	if wake {
		c.kick()
	}
}
