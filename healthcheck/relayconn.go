package healthcheck

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/healthgate/healthgate/internal/h2"
	"github.com/healthgate/healthgate/internal/h2/h2grpc"
)

// The relay engine's connection to a backend: one HTTP/2 connection of the
// gateway's own (internal/h2), kept up by an h2grpc.Channel, that carries
// the relayed calls, the health Watches and the liveness probe. The health
// signal then travels the path the traffic does, and the backend's
// routability is that connection's state: there is no second connection
// whose state could disagree with it.

// Relay connection settings, those of BackendDialOptions for the grpc
// engine's connections: a backend that restarts is back in well under a
// second, one that stays down is tried every 5s at most.
const (
	relayBackoffBase    = 100 * time.Millisecond
	relayBackoffMax     = 5 * time.Second
	relayConnectTimeout = 5 * time.Second
)

// RelayConn is the backend's HTTP/2 connection for the relay engine, if
// it is READY and takes new streams; nil otherwise (and always with the
// grpc engine). It never blocks.
func (b *Handle) RelayConn() *h2.Conn {
	if b.relay == nil {
		return nil
	}
	return b.relay.Conn()
}

// newRelayChannel is the relay engine's connection to the backend, IDLE
// until the monitor connects it.
func (b *Handle) newRelayChannel() (*h2grpc.Channel, error) {
	tc, err := b.transport.tlsConfig(b.c.cfg.Connect)
	if err != nil {
		return nil, err
	}
	if tc != nil {
		tc = tc.Clone()
		tc.NextProtos = []string{"h2"}
		if tc.ServerName == "" && !tc.InsecureSkipVerify {
			// As grpc-go's credentials do: the name checked is the host
			// of the address dialled.
			host, _, _ := net.SplitHostPort(b.addr)
			tc.ServerName = host
		}
	}
	return h2grpc.New(h2grpc.Config{
		Dial:      func(ctx context.Context) (net.Conn, error) { return b.dialRelay(ctx, tc) },
		Authority: b.addr,
		UserAgent: b.c.cfg.UserAgent,
		H2: h2.Config{
			// A backend connection is shared by every client's calls to
			// the backend: its connection window must not let one slow
			// client stall them all (B81); each stream's window bounds
			// what the gateway holds for it.
			ConnCreditOnReceipt: true,
			StreamWindow:        1 << 20,
			ConnWindow:          16 << 20,
			Pool:                b.c.pool,
			Logger:              b.log,
		},
		BackoffBase:    relayBackoffBase,
		BackoffMax:     relayBackoffMax,
		ConnectTimeout: relayConnectTimeout,
		Logger:         b.log,
	})
}

// dialRelay makes one TCP connection to the backend, with TLS (ALPN h2)
// when tc is not nil. Its errors say which step failed: they are the
// backend's reason in /backends while it cannot be reached.
func (b *Handle) dialRelay(ctx context.Context, tc *tls.Config) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", b.addr)
	if err != nil {
		return nil, err
	}
	if tc == nil {
		return nc, nil
	}
	if b.transport.connect {
		// The first connection to a Connect backend may be made before
		// the agent has given the gateway its certificate: wait for it,
		// within the attempt, rather than fail and back off.
		if err := b.c.cfg.Connect.Ready(ctx); err != nil {
			nc.Close()
			return nil, err
		}
	}
	t := tls.Client(nc, tc)
	if err := t.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if p := t.ConnectionState().NegotiatedProtocol; p != "h2" && !slices.Contains(tc.NextProtos, p) {
		t.Close()
		return nil, fmt.Errorf("the backend does not speak h2 over TLS (ALPN %q)", p)
	}
	return t, nil
}
