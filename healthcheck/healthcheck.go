// Package healthcheck turns the endpoints that discovery reports into
// backends the gateway may route to.
//
// It keeps one *grpc.ClientConn per backend address, shared by every route
// that lists the address and carrying both the proxied calls and the
// health checks, and on it one grpc.health.v1.Health/Watch stream per
// health-service name, started only while the connection is READY: the
// client-side health checking of gRPC proposal A17, done once for all the
// gateway's clients. What it learns it publishes as an immutable State.
package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/healthgate/healthgate/discovery"
)

// Config tunes health checking. DialOptions is required; the other zero
// values are documented defaults.
type Config struct {
	// HealthServices maps a route to the grpc.health.v1 service name that is
	// watched for its backends. A route not listed watches its own name
	// (the full gRPC service name); the default route watches "", the
	// backend's overall health.
	HealthServices map[string]string
	// DialOptions are used for every backend connection. They must carry
	// transport credentials.
	DialOptions []grpc.DialOption
	// BackoffBase and BackoffMax bound the jittered exponential backoff
	// between attempts of a failed Watch. Zero means 1s and 2m, the
	// connection backoff A17 reuses.
	BackoffBase, BackoffMax time.Duration
	// DrainGrace is how long a backend that discovery no longer lists keeps
	// its connection for the calls still in flight on it. It gets no new
	// calls meanwhile. Zero means 10s.
	DrainGrace time.Duration
	// Events, if set, is told of health transitions and Watch starts.
	Events Events
}

// Events receives what the checker sees happen, for metrics. Methods are
// called from the checker's goroutines and must not block.
type Events interface {
	// HealthChanged: the latest Watch answer of addr for svc changed.
	HealthChanged(addr, svc string, from, to healthpb.HealthCheckResponse_ServingStatus)
	// WatchStarted: a Watch stream was opened (first time or again).
	WatchStarted(addr, svc string)
}

// Validate reports the first field that cannot be used.
func (c Config) Validate() error {
	switch {
	case len(c.DialOptions) == 0:
		return errors.New("dial options: none given (transport credentials are required)")
	case c.BackoffBase < 0:
		return fmt.Errorf("backoff_base: must not be negative, got %s", c.BackoffBase)
	case c.BackoffMax < 0:
		return fmt.Errorf("backoff_max: must not be negative, got %s", c.BackoffMax)
	case c.DrainGrace < 0:
		return fmt.Errorf("drain_grace: must not be negative, got %s", c.DrainGrace)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.BackoffBase == 0 {
		c.BackoffBase = time.Second
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = 2 * time.Minute
	}
	if c.BackoffMax < c.BackoffBase {
		c.BackoffMax = c.BackoffBase
	}
	if c.DrainGrace == 0 {
		c.DrainGrace = 10 * time.Second
	}
	return c
}

// HealthService is the health-service name watched for route.
func (c Config) HealthService(route string) string {
	if s, ok := c.HealthServices[route]; ok {
		return s
	}
	if route == discovery.DefaultRoute {
		return ""
	}
	return route
}

// State is what the checker knows at one moment. It is never modified after
// it is published.
type State struct {
	// Version grows with every published state.
	Version uint64
	// Synced is the discovery snapshot's: false until the source has heard
	// from its origin once.
	Synced bool
	// Routes by name, each with every backend discovery lists for it,
	// routable or not.
	Routes map[string]*Route
}

// Backend finds addr among route's backends. A nil State has none.
func (s *State) Backend(route, addr string) (Backend, bool) {
	if s == nil {
		return Backend{}, false
	}
	if r, ok := s.Routes[route]; ok {
		for _, b := range r.Backends {
			if b.Addr == addr {
				return b, true
			}
		}
	}
	return Backend{}, false
}

// Route is one route's backends.
type Route struct {
	Name          string
	HealthService string
	// Backends sorted by address.
	Backends []Backend
}

// Routable counts the backends that may take calls.
func (r *Route) Routable() int {
	n := 0
	for _, b := range r.Backends {
		if b.Routable {
			n++
		}
	}
	return n
}

// Backend is one backend of one route.
type Backend struct {
	Addr   string
	Weight int
	// Discovery is the source's word on the instance (discovery.Endpoint's
	// Status).
	Discovery string
	// Conn is the backend's connection, shared by all its routes.
	Conn *grpc.ClientConn
	// Routable: connected, and the latest Watch answer for the route's
	// health service is SERVING (or the backend has no health service).
	Routable bool
	// Status is the latest health status; UNKNOWN until the first answer.
	Status healthpb.HealthCheckResponse_ServingStatus
	// Reason says why the backend is not routable, or why it is routable
	// without a SERVING answer; empty otherwise.
	Reason string
	// Since is when Status or routability last changed.
	Since time.Time
}

func (b Backend) same(o Backend) bool {
	return b.Addr == o.Addr && b.Weight == o.Weight && b.Conn == o.Conn && b.Discovery == o.Discovery &&
		b.Routable == o.Routable && b.Status == o.Status && b.Reason == o.Reason
}

// Checker runs the health checks.
type Checker struct {
	cfg   Config
	log   *slog.Logger
	dirty chan struct{}

	mu sync.Mutex // guards hsvc
	// hsvc is cfg.HealthServices as last set; a reload may change it.
	hsvc map[string]string
	// reconfigured asks the Run loop to reconcile without a new snapshot.
	reconfigured atomic.Bool
}

// SetHealthServices replaces Config.HealthServices; Watches follow at once.
func (c *Checker) SetHealthServices(m map[string]string) {
	c.mu.Lock()
	c.hsvc = maps.Clone(m)
	c.mu.Unlock()
	c.reconfigured.Store(true)
	c.poke()
}

// healthService is the health-service name watched for route.
func (c *Checker) healthService(route string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Config{HealthServices: c.hsvc}.HealthService(route)
}

// New returns a checker; Run starts it.
func New(cfg Config, logger *slog.Logger) (*Checker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("healthcheck: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Checker{
		cfg:   cfg.withDefaults(),
		log:   logger.With("component", "healthcheck"),
		dirty: make(chan struct{}, 1),
		hsvc:  maps.Clone(cfg.HealthServices),
	}, nil
}

// poke asks the Run loop to look again. Pokes merge: however many arrive, one
// pass sees the latest of everything.
func (c *Checker) poke() {
	select {
	case c.dirty <- struct{}{}:
	default:
	}
}

// Run runs src, health-checks the backends it reports and calls publish with
// each new State, until ctx ends. publish is called from Run's goroutine
// only and must not block. When Run returns, every connection it opened is
// closed and every goroutine it started has ended.
func (c *Checker) Run(ctx context.Context, src discovery.Source, publish func(*State)) error {
	var (
		snapMu sync.Mutex
		latest *discovery.Snapshot // guarded by snapMu
	)
	srcCtx, stopSrc := context.WithCancel(ctx)
	defer stopSrc()
	srcDone := make(chan error, 1)
	go func() {
		srcDone <- src.Run(srcCtx, func(s discovery.Snapshot) {
			snapMu.Lock()
			latest = &s
			snapMu.Unlock()
			c.poke()
		})
	}()

	backends := map[string]*backend{}
	draining := map[string]time.Time{} // address -> when its connection closes
	defer func() {
		stopSrc()
		for _, b := range backends {
			b.close()
		}
		<-srcDone
	}()

	var (
		snap    discovery.Snapshot
		prev    *State
		version uint64
		drainT  = time.NewTimer(time.Hour)
	)
	defer drainT.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-srcDone:
			srcDone <- err // for the deferred wait
			if err != nil {
				return fmt.Errorf("healthcheck: discovery: %w", err)
			}
			return nil
		case <-c.dirty:
		case <-drainT.C:
		}

		snapMu.Lock()
		fresh := latest != nil
		if fresh {
			snap, latest = *latest, nil
		}
		snapMu.Unlock()
		if c.reconfigured.Swap(false) || fresh {
			c.reconcile(ctx, snap, backends, draining)
		}

		now := time.Now()
		next := time.Duration(0)
		for addr, at := range draining {
			if !now.Before(at) {
				c.log.Info("backend drained, closing its connection", "addr", addr)
				backends[addr].close()
				delete(backends, addr)
				delete(draining, addr)
			} else if d := at.Sub(now); next == 0 || d < next {
				next = d
			}
		}
		if next > 0 {
			drainT.Reset(next)
		}

		st := c.state(snap, backends, prev)
		if prev == nil || !st.sameAs(prev) {
			version++
			st.Version = version
			prev = st
			publish(st)
		}
	}
}

// reconcile makes the backends match the snapshot: new addresses get a
// connection, listed ones watch the health services of their routes, and
// addresses no longer listed start draining.
func (c *Checker) reconcile(ctx context.Context, snap discovery.Snapshot, backends map[string]*backend, draining map[string]time.Time) {
	want := map[string]map[string]bool{} // address -> health services
	for route, eps := range snap.Routes {
		svc := c.healthService(route)
		for _, ep := range eps {
			if want[ep.Addr] == nil {
				want[ep.Addr] = map[string]bool{}
			}
			want[ep.Addr][svc] = true
		}
	}
	for addr, svcs := range want {
		b, ok := backends[addr]
		if !ok {
			var err error
			b, err = c.newBackend(ctx, addr)
			if err != nil {
				c.log.Error("cannot create backend connection", "addr", addr, "err", err)
				continue
			}
			backends[addr] = b
			c.log.Info("backend added", "addr", addr)
		}
		if _, ok := draining[addr]; ok {
			delete(draining, addr)
			c.log.Info("backend listed again, no longer draining", "addr", addr)
		}
		b.setServices(svcs)
	}
	deadline := time.Now().Add(c.cfg.DrainGrace)
	for addr := range backends {
		if _, ok := want[addr]; !ok {
			if _, ok := draining[addr]; !ok {
				draining[addr] = deadline
				c.log.Info("backend removed by discovery, draining", "addr", addr, "grace", c.cfg.DrainGrace)
			}
		}
	}
}

func (c *Checker) state(snap discovery.Snapshot, backends map[string]*backend, prev *State) *State {
	st := &State{Synced: snap.Synced, Routes: make(map[string]*Route, len(snap.Routes))}
	for name, eps := range snap.Routes {
		r := &Route{Name: name, HealthService: c.healthService(name), Backends: make([]Backend, 0, len(eps))}
		for _, ep := range eps {
			b, ok := backends[ep.Addr]
			if !ok {
				continue
			}
			h := b.health(r.HealthService)
			r.Backends = append(r.Backends, Backend{
				Addr: ep.Addr, Weight: max(ep.Weight, 1), Conn: b.cc, Discovery: ep.Status,
				Routable: h.routable, Status: h.status, Reason: h.reason, Since: h.since,
			})
		}
		st.Routes[name] = r
	}
	return st
}

func (s *State) sameAs(o *State) bool {
	return s.Synced == o.Synced && maps.EqualFunc(s.Routes, o.Routes, func(a, b *Route) bool {
		return a.HealthService == b.HealthService && slices.EqualFunc(a.Backends, b.Backends, Backend.same)
	})
}
