package healthcheck

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"time"

	"github.com/healthgate/healthgate/internal/h2"
)

// The relay engine's connection to a backend: an HTTP/2 connection of the
// gateway's own (internal/h2), kept beside the grpc-go connection that
// carries the health Watch and the liveness probe, dialled with the same
// transport, and closed with it when the backend stops answering.

// RelayConn is the backend's HTTP/2 connection for the relay engine, if
// one is up and takes new streams; nil otherwise. It never blocks.
func (b *Handle) RelayConn() *h2.Conn {
	b.mu.Lock()
	c := b.relay
	b.mu.Unlock()
	if c == nil || !c.CanOpen() {
		return nil
	}
	return c
}

// relayLoop keeps a relay connection up until the backend is closed,
// dialling again with a jittered backoff after each one ends.
func (b *Handle) relayLoop() {
	defer b.wg.Done()
	tc, err := b.transport.tlsConfig(b.c.cfg.Connect)
	if err != nil {
		b.log.Error("relay connection: cannot dial the backend", "err", err)
		return
	}
	if tc != nil {
		tc = tc.Clone()
		tc.NextProtos = []string{"h2"}
		if tc.ServerName == "" && !tc.InsecureSkipVerify {
			host, _, _ := net.SplitHostPort(b.addr)
			tc.ServerName = host
		}
	}
	failures := 0
	for b.ctx.Err() == nil {
		nc, err := b.dialRelay(tc)
		if err != nil {
			failures++
			b.log.Debug("relay connection failed", "err", err, "failures", failures)
			d := min(100*time.Millisecond<<min(failures, 6), 5*time.Second)
			d = d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
			t := time.NewTimer(d)
			select {
			case <-b.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		failures = 0
		c := h2.NewConn(nc, h2.Client, h2.Config{
			// A backend connection is shared by every client's calls to
			// the backend: its connection window must not let one slow
			// client stall them all (B81); each stream's window bounds
			// what the gateway holds for it.
			ConnCreditOnReceipt: true,
			StreamWindow:        1 << 20,
			ConnWindow:          16 << 20,
			Logger:              b.log,
		})
		c.SetOnReady(func() {
			b.mu.Lock()
			b.relay = c
			b.mu.Unlock()
			b.setConn(b.cc.GetState())
		})
		stop := context.AfterFunc(b.ctx, c.Close)
		err = c.Serve(time.Now().Add(10 * time.Second))
		stop()
		b.mu.Lock()
		wasUp := b.relay == c
		if wasUp {
			b.relay = nil
		}
		b.mu.Unlock()
		if wasUp && b.ctx.Err() == nil {
			b.setConn(b.cc.GetState())
		}
		b.log.Debug("relay connection closed", "err", err)
	}
}

func (b *Handle) dialRelay(tc *tls.Config) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", b.addr)
	if err != nil {
		return nil, err
	}
	if tc == nil {
		return nc, nil
	}
	if b.transport.connect {
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

// closeRelay cuts the relay connection, as the liveness probe cuts the
// grpc-go one: its calls fail at once, and it is dialled again.
func (b *Handle) closeRelay() {
	b.mu.Lock()
	c := b.relay
	b.mu.Unlock()
	if c != nil {
		c.Close()
	}
}
