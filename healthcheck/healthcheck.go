// Package healthcheck turns the endpoints that discovery reports into the
// gateway's routing table.
//
// It owns the backends: one connection per address (a *grpc.ClientConn
// with the grpc engine, the relay's own HTTP/2 connection with the relay
// engine), shared by every route that lists the address and carrying both
// the proxied calls and the health checks, and on it one grpc.health.v1.Health/Watch stream per
// health-service name, started only while the connection is READY (the
// client-side health checking of gRPC proposal A17, done once for all the
// gateway's clients). One step folds everything that decides routability
// (discovery, the connection, the Watch answers, passive ejection, drain
// and each route's minimum) into an immutable, versioned State; the rest of
// the gateway only reads it.
package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck/healthcheckcfg"
	"github.com/healthgate/healthgate/internal/h2"
)

// MetaHealthService is the discovery metadata key (Consul service meta)
// with which an instance names the grpc.health.v1 service the gateway asks
// it about; "" is allowed and asks for the server's overall health. Consul
// accepts only letters, digits, '_' and '-' in meta keys: a dotted key is
// refused at registration ("Key contains invalid characters").
const MetaHealthService = "healthgate_health_service"

// TagHealthService is the tag prefix that does the same as
// MetaHealthService, in the spelling of the route tag: a tag
// "healthgate.health_service=<name>" ("healthgate.health_service=" for "").
// Tags take dots, so this is the form to use where a dotted name is wanted;
// the meta wins when an instance has both.
const TagHealthService = "healthgate.health_service="

// Settings is the health: section of the config file; see healthcheckcfg
// for why it is defined there.
type Settings = healthcheckcfg.Settings

// RouteConfig is one route's settings, the health keys of a routes: item.
type RouteConfig = healthcheckcfg.RouteConfig

// Config tunes health checking. DialOptions is required; the other zero
// values are documented defaults.
type Config struct {
	// Settings is what the config file sets.
	Settings
	// Routes holds per-route settings; a route not listed has the zero
	// RouteConfig.
	Routes map[string]RouteConfig
	// Outlier is passive failure detection.
	Outlier OutlierConfig
	// DialOptions are used for every backend connection. They must carry
	// transport credentials.
	DialOptions []grpc.DialOption
	// Events, if set, is told of what the checker sees happen.
	Events Events
	// Connect, if set, is the gateway's Connect identity, for backends
	// that are Connect-native or on a connect route.
	Connect ConnectIdentity
	// RelayConns makes each backend's connection one of the relay
	// engine's (Handle.RelayConn), carrying the Watches and the liveness
	// probe too; DialOptions are then not used. Off, it is a grpc-go
	// connection.
	RelayConns bool
	// UserAgent is the user-agent of the health checks on relay
	// connections; empty sends none. A grpc-go connection's comes from
	// DialOptions.
	UserAgent string
}

func minHealthy(rc RouteConfig) int { return rc.WithDefaults().MinHealthy }

// healthService is the name watched for ep on route.
func healthService(rc RouteConfig, route string, ep discovery.Endpoint) string {
	if rc.HealthService != nil {
		return *rc.HealthService
	}
	if s, ok := ep.Meta[MetaHealthService]; ok {
		return s
	}
	for _, t := range ep.Tags {
		if s, ok := strings.CutPrefix(t, TagHealthService); ok {
			return s
		}
	}
	return defaultHealthService(rc, route)
}

// MetaMaxInFlight is the discovery metadata key (Consul service meta) with
// which an instance says how many calls it takes at once, all routes
// together: a positive integer. Its routes' pickers skip it while it has
// that many, as they do at a route's max_in_flight; the lower of the two
// applies.
const MetaMaxInFlight = "healthgate_max_in_flight"

// maxInFlight is ep's MetaMaxInFlight; zero when it has none. A value that
// is not a positive integer is ignored, as no limit: the instance stays in
// rotation rather than being shut out by a typo.
func maxInFlight(ep discovery.Endpoint) int {
	v, ok := ep.Meta[MetaMaxInFlight]
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

func defaultHealthService(rc RouteConfig, route string) string {
	if rc.HealthService != nil {
		return *rc.HealthService
	}
	if route == discovery.DefaultRoute {
		return ""
	}
	return route
}

// Events receives what the checker sees happen, for metrics. Methods are
// called from the checker's goroutines and must not block.
type Events interface {
	// HealthChanged: the latest Watch answer of addr for svc changed.
	HealthChanged(addr, svc string, from, to healthpb.HealthCheckResponse_ServingStatus)
	// WatchStarted: a Watch stream was opened (first time or again).
	WatchStarted(addr, svc string)
	// BackendEjected: passive failure detection took addr out.
	BackendEjected(addr string)
	// BackendRemoved: addr's connection is closed and the gateway forgets
	// it; anything kept per backend can go.
	BackendRemoved(addr string)
}

// Validate reports the first field that cannot be used.
func (c Config) Validate() error {
	if len(c.DialOptions) == 0 {
		return errors.New("dial options: none given (transport credentials are required)")
	}
	if err := c.Settings.Validate(); err != nil {
		return err
	}
	if err := validateRoutes(c.Routes); err != nil {
		return err
	}
	if err := c.Outlier.Validate(); err != nil {
		return fmt.Errorf("outlier_detection.%w", err)
	}
	return nil
}

func validateRoutes(m map[string]RouteConfig) error {
	for name, rc := range m {
		if err := rc.Validate(); err != nil {
			return fmt.Errorf("route %q: %w", name, err)
		}
	}
	return nil
}

func (c Config) withDefaults() Config {
	c.Settings = c.Settings.WithDefaults()
	c.Outlier = c.Outlier.WithDefaults()
	return c
}

// Checker runs the health checks and builds the routing table.
type Checker struct {
	cfg   Config
	log   *slog.Logger
	wake  chan struct{}
	alive atomic.Bool // Run is running; guards against a second Run
	// pool holds the buffers the relay's backend connections read DATA
	// into, shared by all of them.
	pool *h2.Pool

	// outlier is the passive detection in force, read by every call's Done.
	outlier atomic.Pointer[outlierPolicy]
	// latest is the last published State, for ejection decisions.
	latest atomic.Pointer[State]
	// ejectMu guards the ejection fields of every Handle and ejected: a
	// decision to eject looks at all the backends of a route at once.
	ejectMu sync.Mutex
	// ejected has the backends ejected now, so that finding the next
	// ejection to end does not look at every backend.
	ejected map[*Handle]struct{}

	mu sync.Mutex // guards the fields below
	// routes is cfg.Routes as last set; a reload may change it.
	routes map[string]RouteConfig
	// reconfigured asks the Run loop to reconcile without a new snapshot.
	reconfigured bool
	// dirty has the addresses whose facts changed since the last build.
	dirty map[string]struct{}
	// draining is set by Drain; drained is closed once a State with
	// Draining set is published.
	draining bool
	drained  chan struct{}
}

// New returns a checker; Run starts it.
func New(cfg Config, logger *slog.Logger) (*Checker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("healthcheck: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	c := &Checker{
		cfg:     cfg,
		log:     logger.With("component", "healthcheck"),
		wake:    make(chan struct{}, 1),
		routes:  maps.Clone(cfg.Routes),
		dirty:   map[string]struct{}{},
		ejected: map[*Handle]struct{}{},
		drained: make(chan struct{}),
	}
	if cfg.RelayConns {
		c.pool = h2.NewPool(h2.DefaultMaxFrameSize)
	}
	c.outlier.Store(newOutlierPolicy(cfg.Outlier))
	return c, nil
}

// SetRoutes replaces Config.Routes; Watches and the table follow at once.
func (c *Checker) SetRoutes(m map[string]RouteConfig) error {
	if err := validateRoutes(m); err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	c.mu.Lock()
	c.routes = maps.Clone(m)
	c.reconfigured = true
	c.mu.Unlock()
	c.poke()
	return nil
}

// SetOutlier replaces Config.Outlier. Backends ejected now stay ejected
// until their time is up.
func (c *Checker) SetOutlier(o OutlierConfig) error {
	if err := o.Validate(); err != nil {
		return fmt.Errorf("healthcheck: outlier_detection.%w", err)
	}
	c.outlier.Store(newOutlierPolicy(o.WithDefaults()))
	return nil
}

// Drain marks the gateway as shutting down: the next State has Draining
// set, and every route reports NOT_SERVING. The returned channel is closed
// once that State is published.
func (c *Checker) Drain() <-chan struct{} {
	c.mu.Lock()
	c.draining = true
	ch := c.drained
	c.mu.Unlock()
	c.poke()
	return ch
}

// poke asks the Run loop to look again. Pokes merge: however many arrive, one
// pass sees the latest of everything.
func (c *Checker) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// markDirty says addr's facts changed: the routes that list it are built
// again.
func (c *Checker) markDirty(addr string) {
	c.mu.Lock()
	c.dirty[addr] = struct{}{}
	c.mu.Unlock()
	c.poke()
}

// leaving is a backend that discovery no longer lists: it keeps its
// connection until until, and is shown in the routes it was in.
type leaving struct {
	until  time.Time
	routes map[string]discovery.Endpoint
}

// goneRoute is a route that discovery no longer lists, kept until until.
type goneRoute struct {
	until time.Time
	eps   []discovery.Endpoint
}

// run is the state of one Run, owned by its goroutine.
type run struct {
	c       *Checker
	handles map[string]*Handle
	leaving map[string]*leaving
	gone    map[string]*goneRoute
	snap    discovery.Snapshot
	synced  bool
	routes  map[string]RouteConfig
	// byAddr lists the routes each address appears in, in the last build.
	byAddr map[string][]string
}

// Run runs src, health-checks the backends it reports and calls publish with
// each new State, until ctx ends. publish is called from Run's goroutine
// only and must not block. When Run returns, every connection it opened is
// closed and every goroutine it started has ended.
func (c *Checker) Run(ctx context.Context, src discovery.Source, publish func(*State)) error {
	if !c.alive.CompareAndSwap(false, true) {
		return errors.New("healthcheck: Run called twice")
	}
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

	r := &run{c: c, handles: map[string]*Handle{}, leaving: map[string]*leaving{}, gone: map[string]*goneRoute{}, byAddr: map[string][]string{}}
	defer func() {
		stopSrc()
		for _, h := range r.handles {
			h.close()
		}
		<-srcDone
	}()

	var (
		prev      *State
		version   uint64
		wasDrain  bool
		timer     = time.NewTimer(time.Hour)
		timerFire bool
	)
	defer timer.Stop()
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
		case <-c.wake:
		case <-timer.C:
			timerFire = true
		}

		snapMu.Lock()
		fresh := latest != nil
		if fresh {
			r.snap, latest = *latest, nil
		}
		snapMu.Unlock()
		c.mu.Lock()
		reconf := c.reconfigured
		c.reconfigured = false
		r.routes = c.routes
		dirty := c.dirty
		c.dirty = map[string]struct{}{}
		draining := c.draining
		drained := c.drained
		c.mu.Unlock()

		now := time.Now()
		if fresh || reconf {
			r.reconcile(ctx, now, fresh)
		}
		r.expire(now)
		full := fresh || reconf || timerFire || draining != wasDrain || prev == nil
		timerFire, wasDrain = false, draining

		st := r.build(now, prev, full, dirty, draining)
		if prev == nil || !st.sameAs(prev) {
			version++
			st.Version = version
			prev = st
			c.latest.Store(st)
			publish(st)
		}
		if draining {
			select {
			case <-drained:
			default:
				close(drained)
			}
		}
		if next := r.nextDeadline(now); !next.IsZero() {
			timer.Reset(next.Sub(now))
		}
	}
}

// reconcile makes the backends match the snapshot: new addresses get a
// connection, listed ones watch the health services of their routes,
// addresses no longer listed start leaving, and routes no longer listed are
// kept for the grace.
func (r *run) reconcile(ctx context.Context, now time.Time, fresh bool) {
	c := r.c
	r.synced = r.synced || r.snap.Synced
	want := map[string]map[string]bool{} // address -> health services
	dials := map[string][]transport{}    // address -> how its routes dial it
	for route, eps := range r.snap.Routes {
		rc := r.routes[route]
		for _, ep := range eps {
			if want[ep.Addr] == nil {
				want[ep.Addr] = map[string]bool{}
			}
			want[ep.Addr][healthService(rc, route, ep)] = true
			dials[ep.Addr] = append(dials[ep.Addr], transportFor(rc, ep))
		}
	}
	until := now.Add(c.cfg.DrainGrace)
	// Where each address was, to show a leaving backend in its routes.
	if fresh {
		for addr, routes := range r.byAddr {
			if _, listed := want[addr]; listed {
				continue
			}
			if _, ok := r.handles[addr]; !ok {
				continue
			}
			if _, ok := r.leaving[addr]; ok {
				continue
			}
			l := &leaving{until: until, routes: map[string]discovery.Endpoint{}}
			for _, route := range routes {
				l.routes[route] = discovery.Endpoint{Addr: addr}
			}
			r.leaving[addr] = l
			c.log.Info("backend removed by discovery, draining", "addr", addr, "grace", c.cfg.DrainGrace)
		}
	}
	for addr, svcs := range want {
		t := pick(dials[addr])
		h, ok := r.handles[addr]
		if ok && h.transport != t {
			// A connection cannot change how it was dialled: the backend
			// gets a new one, and the calls on the old one end.
			c.log.Info("backend transport changed, reconnecting", "addr", addr, "from", h.transport.String(), "to", t.String())
			h.close()
			delete(r.handles, addr)
			c.ejectMu.Lock()
			delete(c.ejected, h)
			c.ejectMu.Unlock()
			ok = false
		}
		if !ok {
			var err error
			h, err = c.newHandle(ctx, addr, t)
			if err != nil {
				c.log.Error("cannot create backend connection", "addr", addr, "err", err)
				continue
			}
			r.handles[addr] = h
			c.log.Info("backend added", "addr", addr)
		}
		if _, ok := r.leaving[addr]; ok {
			delete(r.leaving, addr)
			c.log.Info("backend listed again, no longer draining", "addr", addr)
		}
		h.setServices(svcs)
	}
	// A handle that no build has seen yet (listed and unlisted between two
	// builds) leaves at once with the others.
	for addr := range r.handles {
		if _, listed := want[addr]; !listed {
			if _, ok := r.leaving[addr]; !ok {
				r.leaving[addr] = &leaving{until: until, routes: map[string]discovery.Endpoint{}}
			}
		}
	}
	for route := range r.gone {
		if _, back := r.snap.Routes[route]; back {
			delete(r.gone, route)
			c.log.Info("route listed again", "route", route)
		}
	}
}

// expire closes the connections of backends whose drain is over and
// forgets routes whose grace is over.
func (r *run) expire(now time.Time) {
	for addr, l := range r.leaving {
		if now.Before(l.until) {
			continue
		}
		r.c.log.Info("backend drained, closing its connection", "addr", addr)
		if h, ok := r.handles[addr]; ok {
			h.close()
			delete(r.handles, addr)
			r.c.ejectMu.Lock()
			delete(r.c.ejected, h)
			r.c.ejectMu.Unlock()
		}
		delete(r.leaving, addr)
		if ev := r.c.cfg.Events; ev != nil {
			ev.BackendRemoved(addr)
		}
	}
	for route, g := range r.gone {
		if !now.Before(g.until) {
			delete(r.gone, route)
			r.c.log.Info("route forgotten: discovery has not listed it for the drain grace", "route", route)
		}
	}
}

// nextDeadline is the earliest time at which the table changes by itself:
// a drain or a route's grace ends, or an ejection expires.
func (r *run) nextDeadline(now time.Time) time.Time {
	var next time.Time
	earlier := func(t time.Time) {
		if t.After(now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for _, l := range r.leaving {
		earlier(l.until)
	}
	for _, g := range r.gone {
		earlier(g.until)
	}
	r.c.ejectMu.Lock()
	for h := range r.c.ejected {
		earlier(h.ejectedUntil)
	}
	r.c.ejectMu.Unlock()
	return next
}

// build makes the table. A full build makes every route; otherwise only the
// routes that list a dirty address are made again, and the others are the
// previous State's, shared: a health flip costs the size of its routes,
// not of the whole gateway.
func (r *run) build(now time.Time, prev *State, full bool, dirty map[string]struct{}, draining bool) *State {
	st := &State{Synced: r.synced, Draining: draining, Routes: make(map[string]*Route, len(r.snap.Routes)+len(r.gone))}
	var todo map[string]bool
	if !full {
		todo = map[string]bool{}
		for addr := range dirty {
			for _, route := range r.byAddr[addr] {
				todo[route] = true
			}
		}
	}
	// Leaving backends by route, to show them where they were.
	var leavingIn map[string][]discovery.Endpoint
	for addr, l := range r.leaving {
		for route, ep := range l.routes {
			if leavingIn == nil {
				leavingIn = map[string][]discovery.Endpoint{}
			}
			ep.Addr = addr
			leavingIn[route] = append(leavingIn[route], ep)
		}
	}
	r.c.ejectMu.Lock()
	defer r.c.ejectMu.Unlock()
	// reuse is the previous version of a route that a partial build may
	// keep, patched where its backends changed.
	reuse := func(name string) (*Route, bool) {
		if full {
			return nil, false
		}
		p, ok := prev.Routes[name]
		if ok && todo[name] {
			p = r.patchRoute(now, p, dirty, draining)
		}
		return p, ok
	}
	for name, eps := range r.snap.Routes {
		if p, ok := reuse(name); ok {
			st.Routes[name] = p
			continue
		}
		st.Routes[name] = r.buildRoute(now, name, eps, leavingIn[name], false, draining)
	}
	for name, g := range r.gone {
		if _, ok := st.Routes[name]; ok {
			continue
		}
		if p, ok := reuse(name); ok {
			st.Routes[name] = p
			continue
		}
		st.Routes[name] = r.buildRoute(now, name, nil, g.eps, true, draining)
	}
	if full {
		clear(r.byAddr)
		for name, rt := range st.Routes {
			for _, b := range rt.Backends {
				r.byAddr[b.Addr] = append(r.byAddr[b.Addr], name)
			}
		}
	}
	// Routes that left the snapshot since the last build are kept for the
	// grace: their calls get UNAVAILABLE, not UNIMPLEMENTED, while a
	// catalog refills or a deploy moves them.
	if prev != nil && full {
		for name, p := range prev.Routes {
			if _, ok := st.Routes[name]; ok || p.Gone {
				continue
			}
			eps := make([]discovery.Endpoint, 0, len(p.Backends))
			for _, b := range p.Backends {
				eps = append(eps, discovery.Endpoint{Addr: b.Addr, Weight: b.Weight, Tags: b.Tags, Status: b.Discovery})
			}
			r.gone[name] = &goneRoute{until: now.Add(r.c.cfg.DrainGrace), eps: eps}
			r.c.log.Info("route no longer listed by discovery; its calls get UNAVAILABLE for the drain grace", "route", name, "grace", r.c.cfg.DrainGrace)
			st.Routes[name] = r.buildRoute(now, name, nil, eps, true, draining)
			for _, b := range st.Routes[name].Backends {
				r.byAddr[b.Addr] = append(r.byAddr[b.Addr], name)
			}
		}
	}
	return st
}

// buildRoute makes one route of the table. ejectMu is held.
func (r *run) buildRoute(now time.Time, name string, eps, leavingEps []discovery.Endpoint, gone, draining bool) *Route {
	rc := r.routes[name]
	rt := &Route{
		Name: name, HealthService: defaultHealthService(rc, name), MinHealthy: minHealthy(rc),
		Gone: gone, Backends: make([]*Backend, 0, len(eps)+len(leavingEps)),
	}
	add := func(ep discovery.Endpoint, leavingWhy string) {
		h, ok := r.handles[ep.Addr]
		if !ok {
			return
		}
		b := r.refresh(now, Backend{
			Handle: h, Addr: ep.Addr, Weight: max(ep.Weight, 1), Tags: ep.Tags, Discovery: ep.Status, MaxInFlight: maxInFlight(ep),
			HealthService: healthService(rc, name, ep), Reason: leavingWhy, Leaving: leavingWhy != "",
		})
		if b.Routable {
			rt.Routable++
		}
		rt.Backends = append(rt.Backends, &b)
	}
	for _, ep := range eps {
		add(ep, "")
	}
	why := "draining: no longer listed by discovery for this route"
	if gone {
		why = "the route is no longer listed by discovery"
	}
	for _, ep := range leavingEps {
		if !slices.ContainsFunc(eps, func(e discovery.Endpoint) bool { return e.Addr == ep.Addr }) {
			add(ep, why)
		}
	}
	slices.SortFunc(rt.Backends, func(a, b *Backend) int {
		switch {
		case a.Addr < b.Addr:
			return -1
		case a.Addr > b.Addr:
			return 1
		}
		return 0
	})
	rt.Serving = serving(draining, gone, rt.Routable, rt.MinHealthy)
	return rt
}

// refresh decides b's routability from what its handle knows now; the
// fields that come from discovery stay as they are. ejectMu is held.
func (r *run) refresh(now time.Time, b Backend) Backend {
	h := b.Handle
	f := h.facts(b.HealthService)
	if b.Leaving {
		// A leaving backend's reason is why it leaves.
		f.leaving = b.Reason
	}
	if !h.ejectedUntil.IsZero() {
		switch {
		case !now.Before(h.ejectedUntil):
			h.ejectedAt, h.ejectedUntil, h.ejectReason = time.Time{}, time.Time{}, ""
			delete(r.c.ejected, h)
		case f.conn && f.health.routable && h.readyAt().After(h.ejectedAt):
			// The backend reconnected since it was ejected and says
			// SERVING: whatever failed was the old connection.
			h.log.Info("ejection ends early: the backend reconnected and reports SERVING")
			h.ejectedAt, h.ejectedUntil, h.ejectReason = time.Time{}, time.Time{}, ""
			delete(r.c.ejected, h)
		default:
			f.ejected, f.ejectReason = h.ejectedUntil, h.ejectReason
		}
	}
	ok, reason := routable(f)
	b.Routable, b.Status, b.Reason, b.Since, b.EjectedUntil = ok, f.health.status, reason, f.health.since, f.ejected
	return b
}

// patchRoute is p with the backends whose facts changed (dirty) decided
// again, and the rest shared: a health flip costs a copy of its route's
// slice of pointers and one backend's facts, however many backends the
// route has.
// ejectMu is held.
func (r *run) patchRoute(now time.Time, p *Route, dirty map[string]struct{}, draining bool) *Route {
	rt := *p
	rt.Backends = slices.Clone(p.Backends)
	for addr := range dirty {
		i, found := slices.BinarySearchFunc(rt.Backends, addr, func(b *Backend, a string) int { return strings.Compare(b.Addr, a) })
		if !found {
			continue
		}
		was := rt.Backends[i].Routable
		b := r.refresh(now, *rt.Backends[i])
		rt.Backends[i] = &b
		switch now := rt.Backends[i].Routable; {
		case now && !was:
			rt.Routable++
		case !now && was:
			rt.Routable--
		}
	}
	rt.Serving = serving(draining, rt.Gone, rt.Routable, rt.MinHealthy)
	return &rt
}

func (s *State) sameAs(o *State) bool {
	return s.Synced == o.Synced && s.Draining == o.Draining && maps.EqualFunc(s.Routes, o.Routes, (*Route).same)
}
