//go:build linux

package h2

import (
	"io"
	"os"
	"syscall"
	"unsafe"
)

// A connection's socket is read and written with system calls the Go
// scheduler is not told of (syscall.RawSyscall) rather than through the
// net package, which makes each call with syscall.Syscall. The socket is
// non-blocking, so no call waits: a read or write the socket cannot take
// returns EAGAIN, and the net package's poller (through syscall.RawConn)
// waits for the socket as it does for its own calls. What the scheduler
// is not told saves work a proxy does on every frame: entering a call the
// scheduler knows of wakes its monitor thread when every P was idle, and a
// loopback write that runs the receiver's network stack for tens of µs
// lets the monitor hand the P to another thread meanwhile; on a proxy
// pinned to one CPU that is context switches for nothing, which a profile
// at c=50 put at a sixth of the relay's CPU.
//
// Nothing else changes: deadlines, Close and errors.Is(err, net.ErrClosed)
// act through the RawConn as for the net package's calls.

// iovMax bounds the buffers of one writev(2) (IOV_MAX on Linux).
const iovMax = 1024

// rawReader reads a socket.
type rawReader struct {
	rc syscall.RawConn
	// The call in progress, for readFn, which is bound once: a closure
	// per call would be allocated.
	p      []byte
	n      int
	errno  syscall.Errno
	readFn func(fd uintptr) bool
}

// rawWriter writes a socket: all of p, or of the buffers, waiting for the
// socket as need be; or, with try, what the socket takes at once.
type rawWriter struct {
	rc    syscall.RawConn
	p     []byte
	bufs  [][]byte
	iov   []syscall.Iovec
	n     int
	try   bool
	errno syscall.Errno
	// writeFn and writevFn are bound once, as readFn is.
	writeFn, writevFn func(fd uintptr) bool
}

// newRawIO is a reader and a writer for nc's socket, or nils when nc is
// not a socket of the net package's (TLS, an in-memory pipe).
func newRawIO(nc any) (io.Reader, sockWriter) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, nil
	}
	r := &rawReader{rc: rc}
	r.readFn = r.read
	w := &rawWriter{rc: rc}
	w.writeFn, w.writevFn = w.write, w.writev
	return r, w
}

// Read reads what the socket holds, up to len(p), waiting until it holds
// something.
func (r *rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p, r.n, r.errno = p, 0, 0
	err := r.rc.Read(r.readFn)
	r.p = nil
	switch {
	case err != nil:
		return 0, err
	case r.errno != 0:
		return 0, os.NewSyscallError("read", r.errno)
	case r.n == 0:
		return 0, io.EOF
	}
	return r.n, nil
}

func (r *rawReader) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&r.p[0])), uintptr(len(r.p)))
		switch e {
		case 0:
			r.n = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			r.errno = e
			return true
		}
	}
}

// Write writes all of p.
func (w *rawWriter) Write(p []byte) (int, error) {
	return w.do(p, false)
}

// TryWrite writes what of p the socket takes at once, which may be
// nothing.
func (w *rawWriter) TryWrite(p []byte) (int, error) {
	return w.do(p, true)
}

func (w *rawWriter) do(p []byte, try bool) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	w.p, w.n, w.try, w.errno = p, 0, try, 0
	err := w.rc.Write(w.writeFn)
	n := w.n
	w.p = nil
	return n, w.err(err)
}

func (w *rawWriter) err(err error) error {
	if err != nil {
		return err
	}
	if w.errno != 0 {
		return os.NewSyscallError("write", w.errno)
	}
	return nil
}

func (w *rawWriter) write(fd uintptr) bool {
	for len(w.p) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&w.p[0])), uintptr(len(w.p)))
		switch e {
		case 0:
			w.n += int(n)
			w.p = w.p[n:]
			if w.try {
				return true
			}
		case syscall.EINTR:
		case syscall.EAGAIN:
			return w.try
		default:
			w.errno = e
			return true
		}
	}
	return true
}

// WriteBuffers writes every byte of bufs, in order, with writev(2); it
// may change bufs' elements.
func (w *rawWriter) WriteBuffers(bufs [][]byte) (int, error) {
	w.bufs, w.n, w.try, w.errno = bufs, 0, false, 0
	err := w.rc.Write(w.writevFn)
	n := w.n
	w.bufs = nil
	clear(w.iov)
	return n, w.err(err)
}

func (w *rawWriter) writev(fd uintptr) bool {
	for {
		for len(w.bufs) > 0 && len(w.bufs[0]) == 0 {
			w.bufs = w.bufs[1:]
		}
		if len(w.bufs) == 0 {
			return true
		}
		w.iov = w.iov[:0]
		for _, b := range w.bufs[:min(len(w.bufs), iovMax)] {
			if len(b) > 0 {
				v := syscall.Iovec{Base: &b[0]}
				v.SetLen(len(b))
				w.iov = append(w.iov, v)
			}
		}
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iov[0])), uintptr(len(w.iov)))
		switch e {
		case 0:
			w.n += int(n)
			for left := int(n); left > 0; {
				if l := len(w.bufs[0]); l <= left {
					left -= l
					w.bufs = w.bufs[1:]
				} else {
					w.bufs[0] = w.bufs[0][left:]
					left = 0
				}
			}
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			w.errno = e
			return true
		}
	}
}
