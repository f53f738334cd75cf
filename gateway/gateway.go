// Package gateway assembles healthgate from its configuration: discovery
// feeds health checking, whose state feeds the balancer and the gateway's
// own health service, and the proxy forwards each call to the backend the
// balancer picks. It runs them under one context and drains on its end.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/healthgate/healthgate/balancer"
	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/healthserver"
	"github.com/healthgate/healthgate/proxy"
)

// Version is reported in the user-agent of backend connections.
const Version = "0.1.0"

// Gateway is one running healthgate.
type Gateway struct {
	cfg     config.Config
	log     *slog.Logger
	source  discovery.Source
	checker *healthcheck.Checker
	bal     *balancer.Balancer
	health  *healthserver.Server
	srv     *grpc.Server
	state   atomic.Pointer[healthcheck.State]
	// synced is closed when the first synced state is published.
	synced     chan struct{}
	syncedOnce sync.Once
}

// New builds a gateway from cfg, which must have passed Validate.
func New(cfg config.Config, logger *slog.Logger) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("gateway: config: %w", err)
	}
	cfg.ApplyDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	g := &Gateway{cfg: cfg, log: logger, synced: make(chan struct{})}

	src, err := sources(cfg, logger)
	if err != nil {
		return nil, err
	}
	g.source = src

	hsvc := map[string]string{}
	policies := map[string]balancer.Policy{}
	minHealthy := map[string]int{}
	for _, r := range cfg.Routes {
		if r.HealthService != nil {
			hsvc[r.Service] = *r.HealthService
		}
		policies[r.Service] = r.Policy
		minHealthy[r.Service] = r.MinHealthy
	}
	g.checker, err = healthcheck.New(healthcheck.Config{
		HealthServices: hsvc,
		DialOptions:    backendDialOptions(),
		BackoffBase:    cfg.Health.BackoffBase,
		BackoffMax:     cfg.Health.BackoffMax,
		DrainGrace:     cfg.Health.DrainGrace,
	}, logger)
	if err != nil {
		return nil, err
	}
	if g.bal, err = balancer.New(balancer.Config{Policies: policies}, logger); err != nil {
		return nil, err
	}
	g.health = healthserver.New(healthserver.Config{MinHealthy: minHealthy}, logger)
	px, err := proxy.New(proxy.Config{
		MaxRequestBytes:  cfg.Proxy.MaxRequestBytes,
		MaxResponseBytes: cfg.Proxy.MaxResponseBytes,
		DefaultTimeout:   cfg.Proxy.DefaultTimeout,
	}, picker{g.bal}, logger)
	if err != nil {
		return nil, err
	}
	g.srv = grpc.NewServer(px.ServerOptions()...)
	healthpb.RegisterHealthServer(g.srv, g.health)
	return g, nil
}

// picker adapts the balancer to the proxy's interface; the proxy declares
// what it needs and imports nothing of the stages before it.
type picker struct{ b *balancer.Balancer }

func (p picker) Pick(ctx context.Context, fullMethod string) (proxy.Upstream, error) {
	ep, err := p.b.Pick(ctx, fullMethod)
	if err != nil {
		return nil, err
	}
	return ep, nil
}

func backendDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUserAgent("healthgate/" + Version),
		// A backend that restarts should be back in rotation in well under
		// a second, not after grpc's default 1s-120s backoff.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		// The connection is kept for health checking even when no call
		// uses it; idling it would only delay the next call.
		grpc.WithIdleTimeout(0),
	}
}

func sources(cfg config.Config, logger *slog.Logger) (discovery.Source, error) {
	var srcs []discovery.Source
	static := discovery.Static{}
	var consulRoutes []discovery.ConsulRoute
	for _, r := range cfg.Routes {
		if len(r.Backends) > 0 {
			static[r.Service] = r.Backends
		}
		if r.ConsulService != "" {
			consulRoutes = append(consulRoutes, discovery.ConsulRoute{Route: r.Service, Service: r.ConsulService, Tags: r.Tags})
		}
	}
	if len(static) > 0 {
		srcs = append(srcs, static)
	}
	if cfg.Consul.Address != "" {
		c, err := discovery.NewConsul(discovery.ConsulConfig{
			Address:        cfg.Consul.Address,
			Token:          cfg.Consul.Token,
			Datacenter:     cfg.Consul.Datacenter,
			Tags:           cfg.Consul.Tags,
			AllowUnhealthy: cfg.Consul.AllowUnhealthy,
			RouteTag:       cfg.Consul.RouteTag,
			AutoRoutes:     !cfg.Consul.DisableAutoRoutes,
			Routes:         consulRoutes,
			TLS: discovery.ConsulTLS{
				CAFile: cfg.Consul.TLS.CAFile, CertFile: cfg.Consul.TLS.CertFile, KeyFile: cfg.Consul.TLS.KeyFile,
				ServerName: cfg.Consul.TLS.ServerName, InsecureSkipVerify: cfg.Consul.TLS.InsecureSkipVerify,
			},
		}, logger)
		if err != nil {
			return nil, err
		}
		srcs = append(srcs, c)
	} else if len(consulRoutes) > 0 {
		return nil, fmt.Errorf("gateway: routes name consul_service %q but consul.address is not set", consulRoutes[0].Service)
	}
	if len(srcs) == 0 {
		return nil, errors.New("gateway: nothing to route: no routes with backends and no consul.address")
	}
	return discovery.Merge(srcs...), nil
}

// State is the latest published state; nil before the first.
func (g *Gateway) State() *healthcheck.State { return g.state.Load() }

// Synced is closed once discovery has been heard from and its state is
// routed.
func (g *Gateway) Synced() <-chan struct{} { return g.synced }

// Run serves on lis until ctx ends, then drains: every health status turns
// NOT_SERVING at once, the listener keeps accepting for the drain delay so
// that clients notice, then it closes and calls in flight get the grace
// period to finish. Run returns when everything it started has stopped.
func (g *Gateway) Run(ctx context.Context, lis net.Listener) error {
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	checkDone := make(chan error, 1)
	go func() {
		checkDone <- g.checker.Run(runCtx, g.source, g.publish)
	}()
	serveDone := make(chan error, 1)
	go func() { serveDone <- g.srv.Serve(lis) }()
	g.log.Info("healthgate serving", "listen", lis.Addr().String())

	var err error
	select {
	case <-ctx.Done():
	case err = <-checkDone:
		checkDone <- err
		g.log.Error("health checking stopped", "err", err)
	case err = <-serveDone:
		serveDone <- err
		g.log.Error("grpc server stopped", "err", err)
	}

	g.log.Info("draining: reporting NOT_SERVING", "drain_delay", g.cfg.Shutdown.DrainDelay, "grace", g.cfg.Shutdown.Grace)
	g.health.Shutdown()
	if err == nil {
		t := time.NewTimer(g.cfg.Shutdown.DrainDelay)
		<-t.C
	}
	g.log.Info("draining: closing the listener, waiting for calls in flight")
	// Watch streams on the gateway's own health service would hold the
	// graceful stop for the whole grace period.
	g.health.Close()
	stopped := make(chan struct{})
	go func() { g.srv.GracefulStop(); close(stopped) }()
	t := time.NewTimer(g.cfg.Shutdown.Grace)
	select {
	case <-stopped:
		t.Stop()
	case <-t.C:
		g.log.Warn("grace period over, cancelling the calls still in flight")
		g.srv.Stop()
		<-stopped
	}
	stop()
	if cerr := <-checkDone; err == nil {
		err = cerr
	}
	g.log.Info("healthgate stopped")
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}

// publish hands each new state to its consumers. It runs on the checker's
// goroutine; every consumer only swaps a pointer or updates a few values.
func (g *Gateway) publish(st *healthcheck.State) {
	g.bal.Update(st)
	g.health.Update(st)
	g.state.Store(st)
	if st.Synced {
		g.syncedOnce.Do(func() { close(g.synced) })
	}
}
