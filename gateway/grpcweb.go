package gateway

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/grpcweb"
	"github.com/healthgate/healthgate/internal/h2"
	"github.com/healthgate/healthgate/proxy"
)

// web is gRPC-Web on the gateway's listener. Connections that do not
// begin with the HTTP/2 preface or TLS (gRPC-Web over HTTP/1.1) go to h1;
// gRPC-Web over HTTP/2 reaches the relay like any call, which diverts it
// to h2 through local. Both serve the bridge, which makes each call again
// as gRPC on an in-memory connection to the engine (inner): a gRPC-Web
// call takes every step of a native one, in the one engine that does
// them, and nothing of the native path changes but a content-type check.
//
// With the grpc engine, grpc-go's server refuses other content types on
// its HTTP/2 connections before any handler of ours could take them:
// there gRPC-Web is HTTP/1.1 only (README, "Browsers (gRPC-Web)").
type web struct {
	// engine is what serves gRPC clients.
	engine    front
	inner     *pairListener
	transport *http.Transport
	h1        *http.Server
	// h2 and local are nil with the grpc engine.
	h2        *http.Server
	local     *localUpstream
	handshake time.Duration
	// wg holds the servers' goroutines.
	wg sync.WaitGroup
}

// newWeb builds gRPC-Web for the engine that px makes (relay or not).
func newWeb(cfg config.Config, px *proxy.Proxy, relay bool, logger *slog.Logger) (*web, error) {
	w := &web{inner: newPairListener(), handshake: cfg.Proxy.Limits.HandshakeTimeout}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	w.transport = &http.Transport{
		Protocols: &protos,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return w.inner.Dial(ctx)
		},
		// Compression is per message in gRPC, said by grpc-encoding.
		DisableCompression: true,
	}
	bridge := func(forwarded func(http.Header, *http.Request)) (*grpcweb.Bridge, error) {
		return grpcweb.New(grpcweb.Config{
			Transport:       w.transport,
			MaxRequestBytes: cfg.Proxy.MaxRequestBytes,
			AllowedOrigins:  cfg.GRPCWeb.AllowedOrigins,
			Forwarded:       forwarded,
			Logger:          logger,
		})
	}
	// Over HTTP/1.1 the bridge has the client itself: the forwarding
	// policy is applied there.
	direct, err := bridge(func(h http.Header, r *http.Request) { px.ForwardHTTP(h, r.RemoteAddr, r.Host) })
	if err != nil {
		return nil, err
	}
	l := cfg.Proxy.Limits
	errLog := slog.NewLogLogger(logger.With("component", "grpcweb").Handler(), slog.LevelWarn)
	var h1 http.Protocols
	h1.SetHTTP1(true)
	w.h1 = &http.Server{
		Handler:           direct,
		Protocols:         &h1,
		ReadHeaderTimeout: l.HandshakeTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    int(l.MaxHeaderListBytes),
		ErrorLog:          errLog,
	}
	if relay {
		// What the relay diverts has been through the forwarding policy
		// already, with the client's own address.
		relayed, err := bridge(nil)
		if err != nil {
			return nil, err
		}
		w.h2 = &http.Server{Handler: relayed, Protocols: &protos, ErrorLog: errLog}
		w.local = &localUpstream{lis: h2.NewPipeListener(), up: make(chan struct{})}
	}
	return w, nil
}

// start brings up the relay's way to h2; it returns once it is up, or
// after 5s.
func (w *web) start(ctx context.Context, logger *slog.Logger) {
	if w.local == nil {
		return
	}
	w.wg.Go(func() { _ = w.h2.Serve(w.local.lis) })
	w.wg.Go(func() { w.local.run(ctx) })
	select {
	case <-w.local.up:
	case <-time.After(5 * time.Second):
		logger.Error("the relay's in-memory connection to the gRPC-Web bridge is not up after 5s")
	}
}

// Serve serves gRPC and gRPC-Web on lis, and the bridge's calls to the
// engine, until the engine stops.
func (w *web) Serve(lis net.Listener) error {
	sp := grpcweb.NewSplit(lis, w.handshake)
	w.wg.Go(func() { _ = w.h1.Serve(sp.HTTP1()) })
	w.wg.Go(func() { _ = w.engine.Serve(proxy.Internal(w.inner)) })
	return w.engine.Serve(sp.H2())
}

// GracefulStop stops accepting and waits for the calls in flight, of both
// protocols.
func (w *web) GracefulStop() {
	var wg sync.WaitGroup
	wg.Go(w.engine.GracefulStop)
	wg.Go(func() { _ = w.h1.Shutdown(context.Background()) })
	wg.Wait()
}

// Stop ends every call at once.
func (w *web) Stop() {
	var wg sync.WaitGroup
	wg.Go(w.engine.Stop)
	wg.Go(func() { _ = w.h1.Close() })
	wg.Wait()
}

// close releases what is left once the engine has stopped and start's
// context has ended.
func (w *web) close() {
	w.inner.Close()
	if w.local != nil {
		w.local.lis.Close()
		_ = w.h2.Close()
	}
	_ = w.h1.Close()
	w.transport.CloseIdleConnections()
	w.wg.Wait()
}

// pairListener is a net.Listener whose connections are made in memory by
// Dial, each a socketPair.
type pairListener struct {
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func newPairListener() *pairListener {
	return &pairListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pairListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Dial returns the client's end of a new connection, once the server has
// accepted it.
func (l *pairListener) Dial(ctx context.Context) (net.Conn, error) {
	client, server, err := socketPair()
	if err != nil {
		return nil, err
	}
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		err = net.ErrClosed
	case <-ctx.Done():
		err = ctx.Err()
	}
	client.Close()
	server.Close()
	return nil, err
}

func (l *pairListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pairListener) Addr() net.Addr { return pairAddr{} }

type pairAddr struct{}

func (pairAddr) Network() string { return "pair" }
func (pairAddr) String() string  { return "in-process" }
