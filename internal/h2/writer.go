package h2

import (
	"runtime"

	"golang.org/x/net/http2"
)

// encBuffer collects one HPACK-encoded header block.
type encBuffer struct{ b []byte }

func (e *encBuffer) Write(p []byte) (int, error) { e.b = append(e.b, p...); return len(p), nil }

// pick is one frame (or a header block) taken from the queues to write.
type pick struct {
	s    *Stream
	id   uint32
	item outItem
	ctrl *ctrlFrame
	// rstAfter: a Server stream answered in full before the client
	// finished sending gets RST_STREAM NO_ERROR, so that it stops.
	rstAfter bool
}

// fairShare is how much DATA one stream may write per turn while others
// wait: a stream with a large message does not hold up the others' small
// ones for longer than a few frames.
const fairShare = 64 << 10

func (c *Conn) writeLoop() {
	defer close(c.writerDone)
	defer c.nc.Close()
	for {
		<-c.wake
		// Let the goroutines that are ready to run (readers of other
		// connections with frames for this one) queue theirs first: one
		// write of many frames costs about what one write of one frame
		// does, and on a busy gateway that is most of the relay's CPU.
		// With nothing else ready it returns at once.
		runtime.Gosched()
		if !c.takeTurn() {
			// A reader is writing for this connection (Flush); it wakes
			// the writer again if it leaves anything.
			continue
		}
		finished := c.drain()
		c.endTurn()
		if finished {
			return
		}
	}
}

// takeTurn makes the caller the connection's one writer, if no one else
// is; c.out, the encoder and the framer belong to whoever has the turn.
func (c *Conn) takeTurn() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.writing {
		c.wantWrite = true
		return false
	}
	c.writing = true
	return true
}

// endTurn gives the turn back, and wakes the writer if it was turned away
// meanwhile or anything is left.
func (c *Conn) endTurn() {
	c.mu.Lock()
	c.writing = false
	again := c.wantWrite || c.out.pending()
	c.wantWrite = false
	c.mu.Unlock()
	if again {
		c.kick()
	}
}

// drain writes until nothing is queued, blocking on the socket as it must;
// true when the connection is finished and the writer ends.
func (c *Conn) drain() (finished bool) {
	if err := c.writeFirst(); err != nil {
		c.closeWith(err)
		return true
	}
	if c.out.pending() {
		// What an inline write left, first.
		if err := c.out.Flush(); err != nil {
			c.closeWith(err)
			return true
		}
	}
	for {
		picks, ctrls, tableSize, tableChanged, closed, _ := c.collect(c.picks[:0], c.ctrls[:0], false)
		c.picks, c.ctrls = picks, ctrls
		if len(picks) == 0 {
			if closed {
				_ = c.out.Flush()
				return true
			}
			return false
		}
		if tableChanged {
			c.enc.SetMaxDynamicTableSizeLimit(tableSize)
		}
		closeAfter, err := c.writePicks(picks)
		if err == nil {
			err = c.out.Flush()
		} else {
			c.out.discard()
		}
		c.afterWrite(picks)
		if err != nil {
			c.closeWith(err)
			return true
		}
		if closeAfter {
			c.mu.Lock()
			c.goAwaySent = true // no GOAWAY again from closeWith
			c.mu.Unlock()
			c.closeWith(nil)
			_ = c.out.Flush()
			return true
		}
	}
}

// Flush writes what is queued on the connection now, on the caller's
// goroutine, when no one else is writing, the socket takes it without
// waiting and nothing but frames of streams and their control frames is
// queued: a call's frames then go out without waking the writer goroutine,
// which on an idle gateway costs more time than the write. Otherwise it
// wakes the writer, as a queued write would. It must be called without
// locks that a Handler's Sent takes: it may call Sent.
func (c *Conn) Flush() {
	c.mu.Lock()
	if !c.inline || c.writing || c.closed || c.first != nil || c.active > inlineMaxStreams {
		c.mu.Unlock()
		c.kick()
		return
	}
	c.writing = true
	c.mu.Unlock()
	c.writeInline()
	c.endTurn()
}

// inlineMaxStreams is the most streams a connection may have open for
// Flush to write inline. With more, frames of several streams are likely
// to be queued within moments of each other, and the writer goroutine,
// which lets them gather before it writes, makes one write of what would
// be several inline (make bench: a third more writes at c=50 inline). Two
// leaves room for a backend connection's health Watch beside one call.
const inlineMaxStreams = 2

// writeInline is Flush's write, with the turn.
func (c *Conn) writeInline() {
	if c.out.pending() {
		// The socket did not take the last inline write whole: the
		// writer waits for it, and for what follows.
		return
	}
	picks, ctrls, tableSize, tableChanged, closed, bail := c.collect(c.picks[:0], c.ctrls[:0], true)
	c.picks, c.ctrls = picks, ctrls
	if closed || bail || len(picks) == 0 {
		if closed || bail {
			c.mu.Lock()
			c.wantWrite = true
			c.mu.Unlock()
		}
		return
	}
	if tableChanged {
		c.enc.SetMaxDynamicTableSizeLimit(tableSize)
	}
	c.out.copyAll = true
	_, err := c.writePicks(picks)
	c.out.copyAll = false
	if err == nil {
		err = c.out.tryWrite()
	} else {
		c.out.discard()
	}
	c.afterWrite(picks)
	if err != nil {
		c.closeWith(err)
	}
}

// writeFirst writes the preface (a Client's) and the first SETTINGS, once.
func (c *Conn) writeFirst() error {
	c.mu.Lock()
	first := c.first
	c.first = nil
	c.mu.Unlock()
	if first == nil {
		return nil
	}
	if c.role == Client {
		if _, err := c.out.Write([]byte(ClientPreface)); err != nil {
			return err
		}
	}
	if err := c.wf.WriteSettings(first...); err != nil {
		return err
	}
	if c.cfg.ConnWindow > 65535 {
		if err := c.wf.WriteWindowUpdate(0, c.cfg.ConnWindow-65535); err != nil {
			return err
		}
	}
	return c.out.Flush()
}

// collect takes what can be written now: control frames first, then new
// streams' headers, then each ready stream's frames in turn within the
// peer's windows.
//
// inline: the caller writes without waiting on the socket (Flush); it gets
// bail, and nothing, when a frame is queued that only the writer may send
// (the first SETTINGS, a GOAWAY, the close).
func (c *Conn) collect(picks []pick, ctrls []ctrlFrame, inline bool) (_ []pick, _ []ctrlFrame, tableSize uint32, tableChanged, closed, bail bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if inline {
		if c.closed || c.first != nil {
			return picks, ctrls, 0, false, c.closed, true
		}
		for i := range c.control {
			if k := c.control[i].kind; k == ctrlGoAway || k == ctrlClose {
				return picks, ctrls, 0, false, false, true
			}
		}
	}
	ctrls = append(ctrls, c.control...)
	clear(c.control)
	c.control = c.control[:0]
	for i := range ctrls {
		picks = append(picks, pick{ctrl: &ctrls[i]})
	}
	tableSize, tableChanged = c.peerTableSize, c.tableSizeChanged
	c.maxFrame = c.peerMaxFrame
	c.tableSizeChanged = false
	if c.closed {
		return picks, ctrls, tableSize, tableChanged, true, false
	}
	n := 0
	for n < len(c.pending) && uint32(len(c.streams)) < c.peerMaxStreams {
		s := c.pending[n]
		n++
		s.id = c.nextStreamID
		c.nextStreamID += 2
		c.streams[s.id] = s
		c.readyLocked(s)
	}
	if n > 0 {
		// Shift down rather than reslice, so the list keeps its room.
		left := copy(c.pending, c.pending[n:])
		clear(c.pending[left:])
		c.pending = c.pending[:left]
	}
	// The turn's list and the next one's trade places: no allocation per
	// batch.
	ready := c.ready
	c.ready = c.readySpare[:0]
	defer func() {
		clear(ready)
		c.readySpare = ready[:0]
	}()
	for _, s := range ready {
		s.inReady = false
		budget := fairShare
		for len(s.out) > 0 && !s.closed {
			it := &s.out[0]
			if it.kind == outData && len(it.data) > 0 {
				n := min(int64(len(it.data)), int64(s.sendWindow), c.sendWindow, int64(budget))
				if n <= 0 {
					break
				}
				if n < int64(len(it.data)) {
					// Part of the item: the rest waits for window or its turn.
					picks = append(picks, pick{s: s, id: s.id, item: outItem{kind: outData, data: it.data[:n]}})
					it.data = it.data[n:]
					s.sendWindow -= int32(n)
					c.sendWindow -= n
					budget -= int(n)
					continue
				}
				s.sendWindow -= int32(n)
				c.sendWindow -= n
				budget -= int(n)
			}
			item := *it
			if item.kind == outHeaders {
				s.opened = true
			}
			s.out[0] = outItem{}
			s.out = s.out[1:]
			if len(s.out) == 0 {
				s.out = s.outArr[:0]
			}
			p := pick{s: s, id: s.id, item: item}
			if item.end {
				if !s.remoteDone && c.role == Server {
					p.rstAfter = true
					s.remoteDone = true
				}
				if s.remoteDone {
					c.closeStreamLocked(s)
				}
			}
			picks = append(picks, p)
		}
		if len(s.out) > 0 && !s.closed && (s.out[0].kind != outData || len(s.out[0].data) == 0 || (s.sendWindow > 0 && c.sendWindow > 0)) {
			// More to write at once, after the others' turn.
			c.readyLocked(s)
		}
	}
	return picks, ctrls, tableSize, tableChanged, false, false
}

func (c *Conn) writePicks(picks []pick) (closeAfter bool, err error) {
	wrote := false
	defer func() {
		if wrote {
			c.markWroteStream()
		}
	}()
	for i := range picks {
		p := &picks[i]
		if p.ctrl != nil {
			f := p.ctrl
			switch f.kind {
			case ctrlSettingsAck:
				err = c.wf.WriteSettingsAck()
			case ctrlPing:
				err = c.wf.WritePing(false, f.data)
			case ctrlPingAck:
				err = c.wf.WritePing(true, f.data)
			case ctrlWindow:
				err = c.wf.WriteWindowUpdate(f.stream, f.n)
			case ctrlRST:
				err = c.wf.WriteRSTStream(f.stream, f.code)
			case ctrlGoAway:
				err = c.wf.WriteGoAway(f.stream, f.code, []byte(f.debug))
				closeAfter = closeAfter || f.after
			case ctrlClose:
				closeAfter = true
			}
			if err != nil {
				return false, err
			}
			continue
		}
		wrote = true
		switch p.item.kind {
		case outHeaders:
			err = c.writeHeaders(p.id, p.item)
		case outData:
			err = c.writeData(p.id, p.item.data, p.item.end)
		}
		if err == nil && p.rstAfter {
			err = c.wf.WriteRSTStream(p.id, http2.ErrCodeNo)
		}
		if err != nil {
			return false, err
		}
	}
	return closeAfter, nil
}

func (c *Conn) writeHeaders(id uint32, it outItem) error {
	c.encBuf.b = c.encBuf.b[:0]
	for _, f := range it.fields {
		if err := c.enc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.encBuf.b
	max := int(c.maxFrame)
	first := block
	if len(first) > max {
		first = first[:max]
	}
	rest := block[len(first):]
	if err := c.wf.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: it.end, EndHeaders: len(rest) == 0}); err != nil {
		return err
	}
	for len(rest) > 0 {
		frag := rest
		if len(frag) > max {
			frag = frag[:max]
		}
		rest = rest[len(frag):]
		if err := c.wf.WriteContinuation(id, len(rest) == 0, frag); err != nil {
			return err
		}
	}
	return nil
}

func (c *Conn) writeData(id uint32, data []byte, end bool) error {
	max := int(c.maxFrame)
	for {
		chunk := data
		if len(chunk) > max {
			chunk = chunk[:max]
		}
		data = data[len(chunk):]
		if err := c.writeDataFrame(id, end && len(data) == 0, chunk); err != nil {
			return err
		}
		if len(data) == 0 {
			return nil
		}
	}
}

// writeDataFrame writes one DATA frame straight into the socket's buffer:
// the Framer would first copy the payload into a frame buffer of its own,
// a second copy of every byte relayed.
func (c *Conn) writeDataFrame(id uint32, end bool, p []byte) error {
	var flags byte
	if end {
		flags = byte(http2.FlagDataEndStream)
	}
	n := len(p)
	hdr := [9]byte{byte(n >> 16), byte(n >> 8), byte(n), byte(http2.FrameData), flags,
		byte(id >> 24 & 0x7f), byte(id >> 16), byte(id >> 8), byte(id)}
	if _, err := c.out.Write(hdr[:]); err != nil {
		return err
	}
	return c.out.payload(p)
}

// afterWrite tells each stream's handler what went out, and lets go of
// the buffers written.
func (c *Conn) afterWrite(picks []pick) {
	for i := range picks {
		p := &picks[i]
		if p.ctrl != nil || p.item.kind != outData {
			p.item.fields = nil
			continue
		}
		if n := len(p.item.data); n > 0 && p.s.h != nil {
			p.s.h.Sent(p.s, n)
		}
		p.item.owner.Release()
		*p = pick{}
	}
}

func (c *Conn) markWroteStream() {
	c.mu.Lock()
	c.wroteStream = true
	c.mu.Unlock()
}
