package proxy

import (
	"net"
	"net/http"
)

// Internal wraps lis, whose connections come from inside the gateway: the
// gRPC-Web bridge's calls, translated from a client's. The forwarding
// policy trusts them and adds no address of theirs: their x-forwarded-for
// and x-forwarded-host were set from the real client, by the policy,
// before the translation (see ForwardHTTP).
func Internal(lis net.Listener) net.Listener { return internalListener{lis} }

type internalListener struct{ net.Listener }

func (l internalListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return internalConn{c}, nil
}

type internalConn struct{ net.Conn }

func (internalConn) RemoteAddr() net.Addr { return internalAddr{} }

// internalAddr is the address of a connection from inside the gateway.
type internalAddr struct{}

func (internalAddr) Network() string { return "internal" }
func (internalAddr) String() string  { return "internal" }

// ForwardHTTP applies the forwarding policy to the headers h of a call
// the gateway received over HTTP/1.1 (gRPC-Web) from the client at
// remoteAddr ("ip:port") for host: x-forwarded-for and x-forwarded-host
// become what they would be for a native call from that client.
func (p *Proxy) ForwardHTTP(h http.Header, remoteAddr, host string) {
	fp := policyFor(stringAddr(remoteAddr), p.trusted)
	if !fp.trusted {
		h.Del("X-Forwarded-For")
		h.Del("X-Forwarded-Host")
	}
	fp.added(host, h.Get("X-Forwarded-Host") != "", func(k, v string) {
		if k == "x-forwarded-host" {
			h.Set(k, v)
			return
		}
		h.Add(k, v)
	})
}

type stringAddr string

func (a stringAddr) Network() string { return "tcp" }
func (a stringAddr) String() string  { return string(a) }
