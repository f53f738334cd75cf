package grpcweb

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// preface is what every HTTP/2 client sends first on a connection without
// TLS (RFC 9113, 3.4).
const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// tlsHandshake is the first byte of a TLS record carrying a handshake.
const tlsHandshake = 0x16

// Split divides the connections accepted on a listener by their first
// bytes: a TLS handshake or the HTTP/2 preface (gRPC, and gRPC-Web over
// HTTP/2) go to H2, anything else (gRPC-Web over HTTP/1.1) to HTTP1. It
// reads no more than it must to tell (the preface's first bytes differ
// from any HTTP/1 method's), gives the bytes back to whoever serves the
// connection, and reads each connection's first bytes on a goroutine of
// its own, so that a slow client holds up no other. Closing either side
// closes the whole.
type Split struct {
	lis     net.Listener
	timeout time.Duration
	h2, h1  chan net.Conn
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup

	mu sync.Mutex // guards the fields below
	// sniffing are the connections whose first bytes are awaited.
	sniffing map[net.Conn]struct{}
	err      error
}

// NewSplit starts splitting lis. A connection that has not told what it is
// within timeout is closed.
func NewSplit(lis net.Listener, timeout time.Duration) *Split {
	s := &Split{
		lis: lis, timeout: timeout,
		h2: make(chan net.Conn), h1: make(chan net.Conn), done: make(chan struct{}),
		sniffing: map[net.Conn]struct{}{},
	}
	s.wg.Add(1)
	go s.accept()
	return s
}

// H2 is the listener of the connections that speak HTTP/2 or TLS.
func (s *Split) H2() net.Listener { return side{s, s.h2} }

// HTTP1 is the listener of the other connections.
func (s *Split) HTTP1() net.Listener { return side{s, s.h1} }

// Close stops accepting, closes the connections not yet handed over and
// waits for the goroutines of the split.
func (s *Split) Close() error {
	var err error
	s.once.Do(func() {
		close(s.done)
		err = s.lis.Close()
	})
	s.mu.Lock()
	for c := range s.sniffing {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Split) accept() {
	defer s.wg.Done()
	for {
		c, err := s.lis.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
			// Either side's Accept learns of it.
			s.once.Do(func() { close(s.done); s.lis.Close() })
			return
		}
		s.mu.Lock()
		select {
		case <-s.done:
			s.mu.Unlock()
			c.Close()
			return
		default:
		}
		s.sniffing[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.sniff(c)
	}
}

// sniff reads c's first bytes and hands it to the side they name.
func (s *Split) sniff(c net.Conn) {
	defer s.wg.Done()
	_ = c.SetReadDeadline(time.Now().Add(s.timeout))
	buf := make([]byte, 0, len(preface))
	isH2 := false
	for {
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > 0 && buf[0] == tlsHandshake {
			isH2 = true
			break
		}
		if !bytes.HasPrefix([]byte(preface), buf) {
			break
		}
		if len(buf) == len(preface) {
			isH2 = true
			break
		}
		if err != nil {
			s.forget(c)
			c.Close()
			return
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	s.forget(c)
	to := s.h1
	if isH2 {
		to = s.h2
	}
	select {
	case to <- &peeked{Conn: c, buf: buf}:
	case <-s.done:
		c.Close()
	}
}

func (s *Split) forget(c net.Conn) {
	s.mu.Lock()
	delete(s.sniffing, c)
	s.mu.Unlock()
}

// side is one of the split's listeners.
type side struct {
	s  *Split
	ch chan net.Conn
}

func (l side) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.s.done:
		l.s.mu.Lock()
		defer l.s.mu.Unlock()
		if l.s.err != nil {
			return nil, l.s.err
		}
		return nil, net.ErrClosed
	}
}

func (l side) Close() error   { return l.s.Close() }
func (l side) Addr() net.Addr { return l.s.lis.Addr() }

// peeked is a connection whose first bytes were read to tell its protocol:
// they are read again first.
type peeked struct {
	net.Conn
	buf []byte
}

func (c *peeked) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// WriteBuffers passes the relay's vectored writes through to the
// connection underneath, which does them in one writev(2) when it can.
func (c *peeked) WriteBuffers(v *net.Buffers) (int64, error) {
	if bw, ok := c.Conn.(interface {
		WriteBuffers(*net.Buffers) (int64, error)
	}); ok {
		return bw.WriteBuffers(v)
	}
	return v.WriteTo(c.Conn)
}

var _ io.Reader = (*peeked)(nil)
