package proxy

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
)

// Listener wraps lis so that at most Limits.MaxConnections client
// connections are open at once. One more is closed as soon as it is
// accepted: its client learns at once, and may go to another gateway,
// instead of waiting in the kernel's backlog for a slot.
func (p *Proxy) Listener(lis net.Listener) net.Listener {
	return &capped{Listener: lis, max: int64(p.cfg.Limits.MaxConnections)}
}

type capped struct {
	net.Listener
	max  int64
	open atomic.Int64
	// refused counts the connections closed for being over the cap.
	refused atomic.Int64
}

func (l *capped) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			l.refused.Add(1)
			c.Close()
			continue
		}
		return &countedConn{Conn: c, l: l}, nil
	}
}

// countedConn gives its slot back when it is closed, once.
type countedConn struct {
	net.Conn
	l    *capped
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}

// WriteBuffers passes the relay's vectored writes through to the
// connection, which does them in one writev(2) when it is the net
// package's own.
func (c *countedConn) WriteBuffers(v *net.Buffers) (int64, error) { return v.WriteTo(c.Conn) }

// SyscallConn lets the relay write to the connection without waiting, as
// it may to the net package's own.
func (c *countedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("proxy: the connection has no file descriptor")
}
