// Package gateway assembles healthgate from its configuration: discovery
// feeds health checking, whose state feeds the balancer and the gateway's
// own health service, and the proxy forwards each call to the backend the
// balancer picks. It runs them under one context, reloads what can change
// without a restart, and drains on its end.
package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	// Clients may compress their messages with gzip; the gateway's
	// listener must be able to read them. They go on to the backend
	// uncompressed: compression is per hop.
	_ "google.golang.org/grpc/encoding/gzip"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/healthgate/healthgate/admin"
	"github.com/healthgate/healthgate/balancer"
	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/healthserver"
	"github.com/healthgate/healthgate/internal/certfile"
	"github.com/healthgate/healthgate/internal/h2"
	"github.com/healthgate/healthgate/metrics"
	"github.com/healthgate/healthgate/proxy"
	"github.com/healthgate/healthgate/proxy/proxycfg"
	"github.com/healthgate/healthgate/reflectsvc"
	"github.com/healthgate/healthgate/register"
	"github.com/healthgate/healthgate/tracing"
)

// Version is reported in the user-agent of backend connections.
const Version = "0.1.0"

// Gateway is one running healthgate.
type Gateway struct {
	log     *slog.Logger
	source  *discovery.Switch
	checker *healthcheck.Checker
	bal     *balancer.Balancer
	health  *healthserver.Server
	metrics *metrics.Metrics
	srv     *grpc.Server
	proxy   *proxy.Proxy
	// front serves clients: srv for the grpc engine, relay for the relay
	// engine, which reaches srv (the gateway's own health service) in
	// memory through local.
	front   front
	relay   *proxy.Relay
	local   *localUpstream
	connect *discovery.ConnectCA
	state   atomic.Pointer[healthcheck.State]
	// policies are the routes' traffic policies, by route name.
	policies atomic.Pointer[map[string]*proxy.RoutePolicy]

	// reflection is the gateway's own gRPC reflection; nil when disabled.
	reflection *reflectsvc.Service
	// web serves gRPC-Web; nil unless grpc_web.enabled.
	web *web
	// tracer exports the calls' spans while Run runs; nil when tracing is
	// off.
	tracer *tracing.Tracer

	// listening is true while the listener accepts calls.
	listening atomic.Bool
	// synced is closed when the first synced state is published.
	synced     chan struct{}
	syncedOnce sync.Once

	mu sync.Mutex // guards the fields below
	// cfg is the config in force: the one given to New, then each reload's.
	cfg config.Config
}

// New builds a gateway from cfg.
func New(cfg config.Config, logger *slog.Logger) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("gateway: config: %w", err)
	}
	cfg = effective(cfg)
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	g := &Gateway{log: logger, synced: make(chan struct{}), cfg: cfg}
	var access *slog.Logger
	if cfg.Log.Access {
		access = logger.With("component", "access")
	}
	g.metrics = metrics.New(access)
	g.metrics.Register(stateCollector{g})

	p, err := g.plan(cfg)
	if err != nil {
		return nil, err
	}
	g.policies.Store(&p.policies)
	g.source = discovery.NewSwitch(p.source)
	// Always there, idle until a Connect backend needs it: Consul may come
	// with a reload.
	g.connect = discovery.NewConnectCA(cfg.Consul, g.metrics.ConsulQuery, logger)
	g.checker, err = healthcheck.New(healthcheck.Config{
		Settings:    cfg.Health,
		Routes:      p.routes,
		Outlier:     cfg.Outlier,
		DialOptions: BackendDialOptions(),
		Events:      g.metrics,
		Connect:     g.connect,
		RelayConns:  cfg.Proxy.Engine == proxycfg.EngineRelay,
		UserAgent:   "healthgate/" + Version,
	}, logger)
	if err != nil {
		return nil, err
	}
	if g.bal, err = balancer.New(p.balancer, logger); err != nil {
		return nil, err
	}
	g.health = healthserver.New(logger)
	listenTLS, err := serverTLS(cfg.ListenTLS, logger)
	if err != nil {
		return nil, err
	}
	pcfg := proxy.Config{Settings: cfg.Proxy, Observer: g.metrics, ListenTLS: listenTLS}
	if g.tracer, err = tracing.New(cfg.Tracing, logger); err != nil {
		return nil, err
	}
	if g.tracer != nil {
		// Set only when on: a nil *Tracer in the interface would not be
		// nil to the proxy.
		pcfg.Tracer = g.tracer
	}
	px, err := proxy.New(pcfg, picker{g.bal, &g.policies}, logger)
	if err != nil {
		return nil, err
	}
	g.proxy = px
	if cfg.Proxy.Engine == proxycfg.EngineRelay {
		// Reached only in memory, behind the relay, which terminates TLS
		// and enforces the limits: a server for the health service alone.
		g.srv = grpc.NewServer(serverOptions()...)
	} else {
		g.srv = grpc.NewServer(append(px.ServerOptions(), serverOptions()...)...)
	}
	healthpb.RegisterHealthServer(g.srv, g.health)
	if !cfg.Reflection.Disabled {
		g.reflection, err = reflectsvc.New(reflectsvc.Config{
			Table: reflectionTable{&g.state},
			Own:   []protoreflect.ServiceDescriptor{healthpb.File_grpc_health_v1_health_proto.Services().Get(0)},
		}, logger)
		if err != nil {
			return nil, err
		}
		g.reflection.Register(g.srv)
	}
	g.front = g.srv
	// webLocal stays a nil interface without gRPC-Web.
	var webLocal proxy.RelayUpstream
	if cfg.GRPCWeb.Enabled {
		if g.web, err = newWeb(cfg, px, cfg.Proxy.Engine == proxycfg.EngineRelay, logger); err != nil {
			return nil, err
		}
		if g.web.local != nil {
			webLocal = g.web.local
		}
	}
	if cfg.Proxy.Engine == proxycfg.EngineRelay {
		g.local = &localUpstream{lis: h2.NewPipeListener(), up: make(chan struct{})}
		local := map[string]proxy.RelayUpstream{healthpb.Health_ServiceDesc.ServiceName: g.local}
		if g.reflection != nil {
			for _, name := range reflectsvc.Services() {
				local[name] = g.local
			}
		}
		g.relay = px.NewRelay(proxy.RelayConfig{
			Local:     local,
			Web:       webLocal,
			UserAgent: "healthgate/" + Version,
		})
		g.front = g.relay
	}
	if g.web != nil {
		g.web.engine = g.front
		g.front = g.web
	}
	return g, nil
}

// serverTLS is the listener's TLS configuration; nil without TLS. The
// certificate is read from its files again when they change, so a renewal
// needs no restart.
func serverTLS(t proxycfg.ListenTLS, logger *slog.Logger) (*tls.Config, error) {
	if !t.Enabled() {
		return nil, nil
	}
	r, err := certfile.New(t.CertFile, t.KeyFile, time.Second, logger)
	if err != nil {
		return nil, fmt.Errorf("gateway: listen_tls: %w", err)
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.GetCertificate}
	if t.MinVersion == "1.3" {
		c.MinVersion = tls.VersionTLS13
	}
	if t.ClientCAFile != "" {
		pem, err := os.ReadFile(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("gateway: listen_tls.client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("gateway: listen_tls.client_ca_file: %s holds no PEM certificate", t.ClientCAFile)
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.VerifyClientCertIfGiven
		if t.RequireClientCert {
			c.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return c, nil
}

// effective is cfg with every default filled in, each section's by the
// stage that owns it: what runs, what the admin endpoint shows, and what a
// reload compares against, so that writing out a default is no change.
func effective(cfg config.Config) config.Config {
	cfg.ApplyDefaults()
	cfg.Health = cfg.Health.WithDefaults()
	cfg.Outlier = cfg.Outlier.WithDefaults()
	cfg.Proxy = cfg.Proxy.WithDefaults()
	cfg.Consul = cfg.Consul.WithDefaults()
	return cfg
}

// plan is what the stages are configured with, derived from a config.
type plan struct {
	source   discovery.Source
	routes   map[string]healthcheck.RouteConfig
	balancer balancer.Config
	// policies are the proxy's per-route policies, by route name.
	policies map[string]*proxy.RoutePolicy
}

func (g *Gateway) plan(cfg config.Config) (plan, error) {
	p := plan{routes: map[string]healthcheck.RouteConfig{}, policies: map[string]*proxy.RoutePolicy{}}
	p.balancer = balancer.Config{Policies: map[string]balancer.Policy{}, OnRebuild: g.metrics.PickerRebuilt,
		Routing: map[string]balancer.Routing{}, Limits: map[string]balancer.Limits{}, OnRefused: g.routeRefused}
	for _, r := range cfg.Routes {
		p.balancer.Policies[r.Service] = r.Policy
		if r.Routing.Enabled() {
			p.balancer.Routing[r.Service] = r.Routing
		}
		if r.Limits != (balancer.Limits{}) {
			p.balancer.Limits[r.Service] = r.Limits
		}
		p.routes[r.Service] = r.Health
		p.policies[r.Service] = &r.Traffic
	}
	src, err := sources(cfg, g.log, g.metrics)
	if err != nil {
		return plan{}, err
	}
	p.source = src
	return p, nil
}

// routeRefused is the balancer's OnRefused: the metric.
func (g *Gateway) routeRefused(route string, why balancer.Refusal) {
	g.metrics.RouteRefused(route, string(why))
}

// picker adapts the balancer to the proxy's interface; the proxy declares
// what it needs and imports nothing of the stages before it.
type picker struct {
	b *balancer.Balancer
	// policies are the routes' traffic policies by route name, swapped
	// whole on reload; a route not listed has none of its own.
	policies *atomic.Pointer[map[string]*proxy.RoutePolicy]
}

func (p picker) Route(fullMethod string, h proxy.Headers) (proxy.Route, error) {
	r, err := p.b.Route(fullMethod, h)
	if err != nil {
		return proxy.Route{}, err
	}
	name := r.Name()
	return proxy.Route{Name: name, Policy: (*p.policies.Load())[name], Backends: backends{r}}, nil
}

// backends are a balancer route as the proxy sees it. A struct of one
// pointer, so making it an interface value allocates nothing.
type backends struct{ r *balancer.Route }

func (b backends) Pick(tried []proxy.Upstream) (proxy.Upstream, error) {
	var hs []*healthcheck.Handle
	if len(tried) > 0 {
		hs = make([]*healthcheck.Handle, 0, len(tried))
		for _, u := range tried {
			if u, ok := u.(upstream); ok {
				hs = append(hs, u.Handle)
			}
		}
	}
	h, err := b.r.Pick(hs)
	if err != nil {
		return nil, err
	}
	return upstream{h}, nil
}

// upstream is a backend as the proxy sees it: the Handle's Addr and
// NewStream, and its Done in the proxy's words. A struct of one pointer, so
// making it an interface value allocates nothing.
type upstream struct{ *healthcheck.Handle }

func (u upstream) Done(o proxy.Outcome) {
	origin := healthcheck.FromBackend
	switch o.Origin {
	case proxy.FromClient:
		origin = healthcheck.FromClient
	case proxy.Local:
		origin = healthcheck.Local
	}
	u.Handle.Done(healthcheck.Outcome{Code: o.Code, Origin: origin})
}

func serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		// Twice grpc's 32 KiB: fewer read and write syscalls under load
		// (make bench: about 10% less CPU per call). A write buffer shared
		// between connections cost more than it saved.
		grpc.ReadBufferSize(64 << 10),
		grpc.WriteBufferSize(64 << 10),
		// Static flow-control windows turn off grpc's BDP estimation, whose
		// PING round trips on every busy connection cost more than they
		// bought here (make bench: bidi msg/s 0.7x -> 0.87x HAProxy's, less
		// CPU per call); 1 MiB per stream and 4 MiB per connection keep a
		// 1 MiB message in one window.
		grpc.InitialWindowSize(1 << 20),
		grpc.InitialConnWindowSize(4 << 20),
	}
}

// BackendDialOptions are the options of every backend connection; exported
// so that what measures health checking at scale (internal/scale) pays
// what the gateway pays per backend.
func BackendDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUserAgent("healthgate/" + Version),
		grpc.WithReadBufferSize(64 << 10),
		grpc.WithWriteBufferSize(64 << 10),
		// Each backend connection reaches one backend: a transparent retry
		// would only go back to the backend that just refused, and keeping
		// every message for it costs a buffer per call.
		grpc.WithDisableRetry(),
		grpc.WithInitialWindowSize(1 << 20),
		grpc.WithInitialConnWindowSize(4 << 20),
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

func sources(cfg config.Config, logger *slog.Logger, m *metrics.Metrics) (discovery.Source, error) {
	var srcs []discovery.Source
	static := discovery.StaticEndpoints{}
	var consulRoutes []discovery.ConsulRoute
	var configured []string
	for _, r := range cfg.Routes {
		configured = append(configured, r.Service)
		for _, addr := range r.Backends {
			o := r.BackendOptions[addr]
			static[r.Service] = append(static[r.Service], discovery.Endpoint{Addr: addr, Tags: o.Tags, Weight: o.Weight})
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
			ConsulSettings: cfg.Consul, Routes: consulRoutes, Authoritative: configured, OnQuery: m.ConsulQuery,
			// An emptied Consul keeps the last known backends for as long
			// as a deregistered backend keeps its calls.
			ResetGrace: cfg.Health.WithDefaults().DrainGrace,
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

// Engine is the forwarding engine serving clients: proxycfg.EngineRelay
// or proxycfg.EngineGRPC.
func (g *Gateway) Engine() string {
	if g.relay != nil {
		return proxycfg.EngineRelay
	}
	return proxycfg.EngineGRPC
}

// ConnectStatus is the gateway's Consul Connect identity in hand.
func (g *Gateway) ConnectStatus() discovery.ConnectStatus { return g.connect.Status() }

// State is the latest routing table; nil before the first.
func (g *Gateway) State() *healthcheck.State { return g.state.Load() }

// Synced is closed once discovery has been heard from and its state is
// routed.
func (g *Gateway) Synced() <-chan struct{} { return g.synced }

// Draining is true once the gateway has begun to shut down.
func (g *Gateway) Draining() bool { return g.state.Load().Draining }

// Listening is true while the listener accepts calls.
func (g *Gateway) Listening() bool { return g.listening.Load() }

func (g *Gateway) ready() (bool, string) { return admin.Ready(g) }

// AdminHandler serves the admin endpoint for this gateway.
func (g *Gateway) AdminHandler() http.Handler {
	g.mu.Lock()
	pprof := g.cfg.Pprof
	g.mu.Unlock()
	return admin.Handler(admin.Config{Pprof: pprof}, g, g.metrics.Registry)
}

// Reload applies a new config to the running gateway: routes, discovery
// filters, health-service names, minimums and policies change at once,
// and calls in flight are not touched. Fields that only a restart can
// change are reported in the returned list and keep their running values.
// An invalid config is rejected whole, and the running one stays.
func (g *Gateway) Reload(cfg config.Config) (needRestart []string, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("gateway: reload: %w", err)
	}
	cfg = effective(cfg)
	p, err := g.plan(cfg)
	if err != nil {
		return nil, fmt.Errorf("gateway: reload: %w", err)
	}
	if err := g.bal.SetConfig(p.balancer); err != nil {
		return nil, fmt.Errorf("gateway: reload: %w", err)
	}
	g.policies.Store(&p.policies)
	g.mu.Lock()
	kept, needRestart := splitReload(g.cfg, cfg)
	g.cfg = kept
	g.mu.Unlock()

	if err := g.checker.SetOutlier(cfg.Outlier); err != nil {
		return nil, fmt.Errorf("gateway: reload: %w", err)
	}
	if err := g.checker.SetRoutes(p.routes); err != nil {
		return nil, fmt.Errorf("gateway: reload: %w", err)
	}
	g.connect.Set(cfg.Consul)
	g.source.Set(p.source)
	g.log.Info("configuration reloaded", "routes", len(cfg.Routes), "needs_restart", needRestart)
	return needRestart, nil
}

// Config is the configuration in force: what the gateway was started with,
// and each reload's reloadable sections.
func (g *Gateway) Config() config.Config {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cfg
}

// Reloadable names the top-level config sections (by their YAML key) that
// Reload applies to the running gateway; every other section is read once
// at start and needs a restart. One list: Reload follows it, the README
// documents it, and a test checks that every field of config.Config is on
// one side.
func Reloadable() []string { return []string{"consul", "routes", "outlier_detection"} }

// splitReload is the config in force after a reload from running to next:
// next's reloadable sections and running's others, and the YAML keys of the
// sections that changed but need a restart.
func splitReload(running, next config.Config) (config.Config, []string) {
	kept := next
	var needRestart []string
	rt := reflect.TypeOf(running)
	rv, nv, kv := reflect.ValueOf(running), reflect.ValueOf(next), reflect.ValueOf(&kept).Elem()
	for i := range rt.NumField() {
		key, _, _ := strings.Cut(rt.Field(i).Tag.Get("yaml"), ",")
		if slices.Contains(Reloadable(), key) {
			continue
		}
		if !reflect.DeepEqual(rv.Field(i).Interface(), nv.Field(i).Interface()) {
			needRestart = append(needRestart, key)
		}
		// What runs is what the admin endpoint and a later reload compare
		// against.
		kv.Field(i).Set(rv.Field(i))
	}
	return kept, needRestart
}

// Run serves on lis until ctx ends, then drains: the gateway leaves Consul
// if it registered itself, every health status turns NOT_SERVING at once,
// the listener keeps accepting for the drain delay so that clients notice,
// then it closes and calls in flight get the grace period to finish. Run
// returns when everything it started has stopped.
func (g *Gateway) Run(ctx context.Context, lis net.Listener) error {
	g.mu.Lock()
	cfg := g.cfg
	g.mu.Unlock()
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	// The relay's way to the gateway's own health service comes first:
	// the listener opens only once it is up, so that no health call finds
	// it missing, and nothing else waits for it.
	localDone := make(chan struct{})
	if g.relay != nil {
		go func() {
			defer close(localDone)
			var wg sync.WaitGroup
			wg.Go(func() { _ = g.srv.Serve(g.local.lis) })
			g.local.run(runCtx)
			wg.Wait()
		}()
		select {
		case <-g.local.up:
		case <-time.After(5 * time.Second):
			g.log.Error("the relay's in-memory connection to the gateway's own health service is not up after 5s")
		}
	} else {
		close(localDone)
	}
	if g.web != nil {
		g.web.start(runCtx, g.log)
	}
	if g.tracer != nil {
		if err := g.tracer.Start(runCtx); err != nil {
			// Not fatal: the gateway serves its clients either way.
			g.log.Error("tracing is off: the exporter did not start", "err", err)
		}
	}
	checkDone := make(chan error, 1)
	go func() {
		checkDone <- g.checker.Run(runCtx, g.source, g.publish)
	}()
	connectDone := make(chan struct{})
	go func() {
		defer close(connectDone)
		g.connect.Run(runCtx)
	}()
	serveDone := make(chan error, 1)
	lis = g.proxy.Listener(lis)
	go func() { serveDone <- g.front.Serve(lis) }()
	g.listening.Store(true)
	g.log.Info("healthgate serving", "listen", lis.Addr().String(), "engine", g.Engine())

	var reg *register.Registration
	if cfg.Register.Enabled {
		addr := lis.Addr().String()
		if cfg.Register.Address != "" {
			_, port, _ := net.SplitHostPort(addr)
			addr = net.JoinHostPort(cfg.Register.Address, port)
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var err error
		reg, err = register.Register(rctx, register.Config{
			Consul: discovery.APIConfig(cfg.Consul),
			Name:   cfg.Register.Name, ID: cfg.Register.ID, Tags: cfg.Register.Tags,
			Addr: addr, Interval: cfg.Register.Interval,
		})
		cancel()
		if err != nil {
			// Not fatal: the gateway serves its clients either way.
			g.log.Error("self-registration in Consul failed", "err", err)
		} else {
			g.log.Info("registered in Consul", "id", reg.ID())
		}
	}

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

	drained := g.checker.Drain()
	if reg != nil {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if derr := reg.Deregister(dctx); derr != nil {
			g.log.Warn("deregistration from Consul failed", "err", derr)
		}
		cancel()
	}
	g.log.Info("draining: reporting NOT_SERVING", "drain_delay", cfg.Shutdown.DrainDelay, "grace", cfg.Shutdown.Grace)
	// Every status turns NOT_SERVING before anything else happens; the
	// checker is still running unless it failed.
	if err == nil {
		select {
		case <-drained:
		case <-time.After(time.Second):
			g.log.Warn("draining: the routing table did not turn NOT_SERVING within 1s")
		}
	}
	if err == nil {
		t := time.NewTimer(cfg.Shutdown.DrainDelay)
		<-t.C
	}
	g.log.Info("draining: closing the listener, waiting for calls in flight")
	// Watch streams on the gateway's own health service would hold the
	// graceful stop for the whole grace period.
	g.health.Close()
	g.listening.Store(false)
	stopped := make(chan struct{})
	go func() { g.front.GracefulStop(); close(stopped) }()
	t := time.NewTimer(cfg.Shutdown.Grace)
	select {
	case <-stopped:
		t.Stop()
	case <-t.C:
		g.log.Warn("grace period over, cancelling the calls still in flight")
		g.front.Stop()
		<-stopped
	}
	stop()
	if g.relay != nil {
		g.srv.Stop()
		g.local.lis.Close()
	}
	<-localDone
	if g.web != nil {
		g.web.close()
	}
	<-connectDone
	if g.tracer != nil {
		// Every call has ended: their spans are sent before Run returns.
		tctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if terr := g.tracer.Shutdown(tctx); terr != nil {
			g.log.Warn("tracing: spans not exported at shutdown", "err", terr)
		}
		cancel()
	}
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

// front is what serves the gateway's clients.
type front interface {
	Serve(net.Listener) error
	GracefulStop()
	Stop()
}

// localUpstream is the relay's way to the gateway's own grpc.Server: an
// HTTP/2 connection in memory, kept up until the gateway stops.
type localUpstream struct {
	lis *h2.PipeListener
	// up is closed once the first connection is ready: the listener
	// opens only then, so that no health call finds it missing.
	up     chan struct{}
	upOnce sync.Once
	mu     sync.Mutex
	conn   *h2.Conn
}

func (l *localUpstream) Addr() string       { return "in-process" }
func (l *localUpstream) Done(proxy.Outcome) {}

func (l *localUpstream) RelayConn() *h2.Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil || !l.conn.CanOpen() {
		return nil
	}
	return l.conn
}

func (l *localUpstream) run(ctx context.Context) {
	for first := true; ctx.Err() == nil; first = false {
		if !first {
			// Never expected: a connection in memory to our own server
			// ends only when the gateway stops. Should it, a pause keeps
			// a failing one from spinning.
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		nc, err := l.lis.Dial()
		if err != nil {
			return
		}
		c := h2.NewConn(nc, h2.Client, h2.Config{ConnCreditOnReceipt: true})
		c.SetOnReady(func() {
			l.mu.Lock()
			l.conn = c
			l.mu.Unlock()
			l.upOnce.Do(func() { close(l.up) })
		})
		stop := context.AfterFunc(ctx, c.Close)
		_ = c.Serve(time.Time{})
		stop()
		l.mu.Lock()
		l.conn = nil
		l.mu.Unlock()
	}
}
