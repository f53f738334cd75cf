package h2

import (
	"net"
)

// outBuf gathers what the writer sends in one go: frames encoded into buf,
// and large DATA payloads referenced where they lie, so that one writev(2)
// sends the lot without copying the payloads once more. A connection that
// cannot take a vectored write (TLS, an in-memory pipe) gets the payloads
// copied into buf and one write per flush instead.
type outBuf struct {
	nc net.Conn
	// sw writes nc's socket itself (sysio_linux.go); nil when nc is not a
	// socket of the net package's.
	sw sockWriter
	// vec: nc takes a vectored write.
	vec bool
	// flushAt is the size of buf at which it is written out before more
	// is added, bounding the memory a connection holds.
	flushAt int
	buf     []byte
	// seg is where in buf the bytes not yet in bufs start.
	seg  int
	bufs net.Buffers
	// copyAll copies every payload into buf, for a write that may leave
	// part of buf behind after the payloads went back to their pools.
	copyAll bool
}

// sockWriter writes a socket: Write and WriteBuffers all they are given,
// waiting for the socket as need be; TryWrite what the socket takes at
// once.
type sockWriter interface {
	Write(p []byte) (int, error)
	TryWrite(p []byte) (int, error)
	WriteBuffers(bufs [][]byte) (int, error)
}

// BuffersWriter is a connection that wraps one of the net package's own
// (a listener's accounting, say) and passes a vectored write through to
// it.
type BuffersWriter interface {
	WriteBuffers(v *net.Buffers) (int64, error)
}

// refMin is the smallest payload referenced rather than copied: below it,
// copying costs less than the kernel's work for one more iovec.
const refMin = 4 << 10

func newOutBuf(nc net.Conn, sw sockWriter, flushAt int) *outBuf {
	// net.Buffers writes with writev only to the net package's own
	// connections; anything else would get one write per buffer.
	vec := sw != nil
	switch nc.(type) {
	case *net.TCPConn, *net.UnixConn, BuffersWriter:
		vec = true
	}
	return &outBuf{nc: nc, sw: sw, vec: vec, flushAt: flushAt, buf: make([]byte, 0, flushAt)}
}

// Write adds encoded frame bytes; it is how the framer writes.
func (o *outBuf) Write(p []byte) (int, error) {
	if !o.copyAll && len(o.buf) > 0 && len(o.buf)+len(p) > o.flushAt {
		if err := o.Flush(); err != nil {
			return 0, err
		}
	}
	o.buf = append(o.buf, p...)
	return len(p), nil
}

// payload adds a DATA payload, which must stay untouched until Flush
// returns.
func (o *outBuf) payload(p []byte) error {
	if !o.vec || o.copyAll || len(p) < refMin {
		_, err := o.Write(p)
		return err
	}
	if len(o.buf) > o.seg {
		o.bufs = append(o.bufs, o.buf[o.seg:len(o.buf):len(o.buf)])
		o.seg = len(o.buf)
	}
	o.bufs = append(o.bufs, p)
	return nil
}

// Flush writes everything added, in order.
func (o *outBuf) Flush() error {
	var err error
	switch {
	case len(o.bufs) > 0:
		if len(o.buf) > o.seg {
			o.bufs = append(o.bufs, o.buf[o.seg:])
		}
		v := o.bufs
		switch bw, ok := o.nc.(BuffersWriter); {
		case o.sw != nil:
			_, err = o.sw.WriteBuffers(v)
		case ok:
			_, err = bw.WriteBuffers(&v)
		default:
			_, err = v.WriteTo(o.nc)
		}
		clear(o.bufs)
		o.bufs = o.bufs[:0]
	case len(o.buf) > 0 && o.sw != nil:
		_, err = o.sw.Write(o.buf)
	case len(o.buf) > 0:
		_, err = o.nc.Write(o.buf)
	}
	o.discard()
	return err
}

// discard drops what was added and not written.
func (o *outBuf) discard() {
	clear(o.bufs)
	o.bufs = o.bufs[:0]
	o.buf, o.seg = o.buf[:0], 0
	if cap(o.buf) > 4*o.flushAt {
		// A burst of small frames grew it; do not keep that for good.
		o.buf = make([]byte, 0, o.flushAt)
	}
}

// pending reports bytes added and not yet written.
func (o *outBuf) pending() bool { return len(o.buf) > 0 || len(o.bufs) > 0 }

// tryWrite writes what the socket takes at once, with one write(2) that
// never waits, and keeps the rest for Flush. Every payload must have been
// copied (copyAll).
func (o *outBuf) tryWrite() error {
	if o.sw == nil || len(o.bufs) > 0 {
		return o.Flush()
	}
	n, err := o.sw.TryWrite(o.buf)
	if err != nil {
		return err
	}
	if n == len(o.buf) {
		o.discard()
		return nil
	}
	left := copy(o.buf, o.buf[n:])
	o.buf, o.seg = o.buf[:left], 0
	return nil
}
