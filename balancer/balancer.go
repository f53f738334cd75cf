// Package balancer chooses the backend of each call among the routable
// backends of its route.
//
// Pickers are immutable and swapped whole behind an atomic pointer when the
// routable set of a route changes, so Pick never takes a lock: the hot path
// is a map lookup, an atomic add and an index.
package balancer

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck"
)

// Policy chooses among a route's routable backends.
type Policy string

const (
	// RoundRobin spreads calls in turn, each backend as often as its
	// weight says, starting at a random backend so that many gateways do
	// not all hit the same one first.
	RoundRobin Policy = "round_robin"
	// LeastRequest picks the less busy of two backends chosen at random
	// (power of two choices): it follows load without a global scan.
	LeastRequest Policy = "least_request"
)

// Validate reports whether p is a known policy; "" means RoundRobin.
func (p Policy) Validate() error {
	switch p {
	case "", RoundRobin, LeastRequest:
		return nil
	}
	return fmt.Errorf("unknown policy %q (want %q or %q)", string(p), RoundRobin, LeastRequest)
}

// Config chooses a policy per route.
type Config struct {
	// Policies by route name; a route not listed uses Default.
	Policies map[string]Policy
	// Default is the policy of unlisted routes; "" means RoundRobin.
	Default Policy
	// OnRebuild, if set, is told each time a route's picker is rebuilt.
	OnRebuild func(route string, routable int)
	// OnEject, if set, is told each time a backend is ejected.
	OnEject func(addr string)
	// Outlier is passive failure detection; the zero value turns it off.
	Outlier Outlier
}

// Outlier ejects a backend that keeps failing calls although its health
// check says SERVING: after ConsecutiveUnavailable calls in a row that end
// UNAVAILABLE (connection refused or reset, the backend shedding load), it
// gets no new calls for Ejection, longer each time it is ejected again
// before a call succeeds (up to 10 times). When every backend of a route is
// ejected, calls go to them anyway: a guess beats a certain failure.
type Outlier struct {
	// ConsecutiveUnavailable is the failures in a row that eject; 0 turns
	// detection off.
	ConsecutiveUnavailable int
	Ejection               time.Duration
}

// Validate reports the first policy that is not known.
func (c Config) Validate() error {
	if err := c.Default.Validate(); err != nil {
		return fmt.Errorf("default policy: %w", err)
	}
	for r, p := range c.Policies {
		if err := p.Validate(); err != nil {
			return fmt.Errorf("route %q: %w", r, err)
		}
	}
	return nil
}

// Endpoint is a picked backend. It is the proxy's upstream for one call:
// calls go over the backend's shared connection, and Done must be called when
// the call ends.
type Endpoint struct {
	*grpc.ClientConn
	addr     string
	bal      *Balancer
	inflight atomic.Int64
	// failures counts the calls in a row that ended UNAVAILABLE.
	failures atomic.Int32
	// ejections counts the ejections since the last successful call.
	ejections atomic.Int32
	// ejectedUntil is the end of the current ejection in Unix nanoseconds;
	// 0 when never ejected.
	ejectedUntil atomic.Int64
}

// EjectedUntil is when the endpoint's ejection ends; zero if it is not
// ejected now.
func (e *Endpoint) EjectedUntil() time.Time {
	if u := e.ejectedUntil.Load(); u != 0 && time.Now().UnixNano() < u {
		return time.Unix(0, u)
	}
	return time.Time{}
}

func (e *Endpoint) ejected() bool {
	u := e.ejectedUntil.Load()
	return u != 0 && time.Now().UnixNano() < u
}

// Addr is the backend's address.
func (e *Endpoint) Addr() string { return e.addr }

// InFlight is the number of calls picked for the endpoint and not yet done.
func (e *Endpoint) InFlight() int64 { return e.inflight.Load() }

// EjectedUntil is when the ejection of the backend behind conn ends; zero
// when it is not ejected.
func (b *Balancer) EjectedUntil(conn *grpc.ClientConn) time.Time {
	if t := b.table.Load(); t != nil {
		if ep := t.eps[conn]; ep != nil {
			return ep.EjectedUntil()
		}
	}
	return time.Time{}
}

// InFlight is the number of calls in flight on the backend behind conn,
// routable or not: a backend out of rotation still finishes its calls.
func (b *Balancer) InFlight(conn *grpc.ClientConn) int64 {
	if t := b.table.Load(); t != nil {
		if ep := t.eps[conn]; ep != nil {
			return ep.InFlight()
		}
	}
	return 0
}

// Done ends a call picked for the endpoint, and counts it for passive
// failure detection.
func (e *Endpoint) Done(err error) {
	e.inflight.Add(-1)
	o := e.bal.outlier.Load()
	if o.ConsecutiveUnavailable <= 0 {
		return
	}
	if err == nil {
		if e.failures.Load() != 0 || e.ejections.Load() != 0 {
			e.failures.Store(0)
			e.ejections.Store(0)
		}
		return
	}
	if status.Code(err) != codes.Unavailable {
		if e.failures.Load() != 0 {
			e.failures.Store(0)
		}
		return
	}
	if e.failures.Add(1) < int32(o.ConsecutiveUnavailable) {
		return
	}
	e.failures.Store(0)
	n := min(e.ejections.Add(1), 10)
	d := o.Ejection * time.Duration(n)
	e.ejectedUntil.Store(time.Now().Add(d).UnixNano())
	e.bal.log.Warn("backend ejected: calls keep ending UNAVAILABLE", "addr", e.addr,
		"consecutive", o.ConsecutiveUnavailable, "for", d)
	if o.onEject != nil {
		o.onEject(e.addr)
	}
}

// NoRouteError: no route covers the called service.
type NoRouteError struct{ Service string }

func (e *NoRouteError) Error() string { return fmt.Sprintf("unknown service %s", e.Service) }

// GRPCStatus makes the error UNIMPLEMENTED at the RPC boundary, as a server
// that does not serve the service would answer.
func (e *NoRouteError) GRPCStatus() *status.Status {
	return status.New(codes.Unimplemented, "healthgate: "+e.Error())
}

// NoUpstreamError: the route has no routable backend.
type NoUpstreamError struct{ Route string }

func (e *NoUpstreamError) Error() string {
	return fmt.Sprintf("no healthy upstream for route %q", e.Route)
}

// GRPCStatus makes the error UNAVAILABLE: the client may retry, elsewhere or
// later.
func (e *NoUpstreamError) GRPCStatus() *status.Status {
	return status.New(codes.Unavailable, "healthgate: "+e.Error())
}

// picker chooses among one route's routable endpoints. It never changes after
// it is built.
type picker struct {
	route  string
	policy Policy
	// ring holds each endpoint as many times as its weight, for round robin.
	ring []*Endpoint
	// eps holds each endpoint once, for least request.
	eps  []*Endpoint
	next atomic.Uint32
	// noUpstream is the error of an empty route, built once.
	noUpstream error
}

type table struct {
	routes map[string]*picker
	dflt   *picker // nil without a default route
	// eps has the endpoint of every backend in the state, routable or not,
	// so that InFlight finds the calls of one that left the rotation.
	eps map[*grpc.ClientConn]*Endpoint
}

// Balancer picks a backend per call.
type Balancer struct {
	log   *slog.Logger
	table atomic.Pointer[table]

	// mu serialises Update and SetConfig; Pick never takes it.
	mu  sync.Mutex
	cfg Config
	// last is the last state given to Update, to rebuild from on SetConfig.
	last *healthcheck.State
	// outlier is cfg's passive failure detection, read by Done without
	// the lock.
	outlier atomic.Pointer[outlierCfg]
	// endpoints outlive pickers so that in-flight counts survive rebuilds
	// and spells out of rotation; a backend's is forgotten when it leaves
	// the state.
	endpoints map[*grpc.ClientConn]*Endpoint
	// routable is each route's routable set as last built, to rebuild only
	// the routes whose set changed.
	routable map[string][]routableKey
}

type outlierCfg struct {
	Outlier
	onEject func(addr string)
}

type routableKey struct {
	conn   *grpc.ClientConn
	weight int
}

// New returns a balancer with no routes: every call is UNIMPLEMENTED until
// the first Update.
func New(cfg Config, logger *slog.Logger) (*Balancer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("balancer: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	b := &Balancer{
		cfg: cfg, log: logger.With("component", "balancer"),
		endpoints: map[*grpc.ClientConn]*Endpoint{},
		routable:  map[string][]routableKey{},
	}
	b.table.Store(&table{routes: map[string]*picker{}})
	b.outlier.Store(&outlierCfg{cfg.Outlier, cfg.OnEject})
	return b, nil
}

// SetConfig changes the policies; every picker is rebuilt at once.
func (b *Balancer) SetConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("balancer: %w", err)
	}
	b.mu.Lock()
	b.cfg = cfg
	b.outlier.Store(&outlierCfg{cfg.Outlier, cfg.OnEject})
	b.routable = map[string][]routableKey{}
	var rebuilt []rebuild
	if b.last != nil {
		rebuilt = b.updateLocked(b.last, true)
	}
	b.mu.Unlock()
	if cfg.OnRebuild != nil {
		for _, r := range rebuilt {
			cfg.OnRebuild(r.route, r.routable)
		}
	}
	return nil
}

// Update rebuilds the pickers of routes whose routable backends changed.
func (b *Balancer) Update(st *healthcheck.State) {
	b.mu.Lock()
	b.last = st
	rebuilt := b.updateLocked(st, false)
	onRebuild := b.cfg.OnRebuild
	b.mu.Unlock()
	if onRebuild != nil {
		for _, r := range rebuilt {
			onRebuild(r.route, r.routable)
		}
	}
}

type rebuild struct {
	route    string
	routable int
}

// updateLocked swaps in a table for st and returns the routes it rebuilt.
func (b *Balancer) updateLocked(st *healthcheck.State, all bool) []rebuild {
	var rebuilt []rebuild
	old := b.table.Load()
	t := &table{routes: make(map[string]*picker, len(st.Routes))}
	live := map[*grpc.ClientConn]bool{}
	for name, r := range st.Routes {
		var keys []routableKey
		for _, be := range r.Backends {
			if be.Conn == nil {
				continue
			}
			live[be.Conn] = true
			if _, ok := b.endpoints[be.Conn]; !ok {
				b.endpoints[be.Conn] = &Endpoint{ClientConn: be.Conn, addr: be.Addr, bal: b}
			}
			if be.Routable {
				keys = append(keys, routableKey{be.Conn, be.Weight})
			}
		}
		p, ok := old.routes[name]
		if !ok || all || !slices.Equal(keys, b.routable[name]) {
			p = b.build(name, keys)
			b.log.Debug("picker rebuilt", "route", name, "routable", len(keys))
			rebuilt = append(rebuilt, rebuild{name, len(keys)})
		}
		b.routable[name] = keys
		t.routes[name] = p
	}
	for name := range b.routable {
		if _, ok := st.Routes[name]; !ok {
			delete(b.routable, name)
		}
	}
	for conn := range b.endpoints {
		if !live[conn] {
			// Calls still in flight hold their *Endpoint; only the map
			// forgets it.
			delete(b.endpoints, conn)
		}
	}
	t.dflt = t.routes[discovery.DefaultRoute]
	t.eps = maps.Clone(b.endpoints)
	b.table.Store(t)
	return rebuilt
}

func (b *Balancer) build(route string, keys []routableKey) *picker {
	policy := b.cfg.Default
	if p, ok := b.cfg.Policies[route]; ok {
		policy = p
	}
	if policy == "" {
		policy = RoundRobin
	}
	p := &picker{route: route, policy: policy, noUpstream: &NoUpstreamError{Route: route}}
	g := 0
	for _, k := range keys {
		g = gcd(g, k.weight)
	}
	for _, k := range keys {
		ep := b.endpoints[k.conn]
		p.eps = append(p.eps, ep)
		for range min(k.weight/max(g, 1), maxWeight) {
			p.ring = append(p.ring, ep)
		}
	}
	// Interleave by shuffling once: a weight-3 backend should not take
	// three calls in a row.
	rand.Shuffle(len(p.ring), func(i, j int) { p.ring[i], p.ring[j] = p.ring[j], p.ring[i] })
	if len(p.ring) > 0 {
		p.next.Store(rand.Uint32N(uint32(len(p.ring))))
	}
	return p
}

// maxWeight bounds a backend's copies in the ring.
const maxWeight = 100

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// Pick chooses the backend for a call to fullMethod ("/pkg.Service/Method").
// It never blocks. Errors carry their gRPC status: UNIMPLEMENTED when no
// route covers the service, UNAVAILABLE when the route has no routable
// backend.
func (b *Balancer) Pick(_ context.Context, fullMethod string) (*Endpoint, error) {
	t := b.table.Load()
	svc := serviceOf(fullMethod)
	p, ok := t.routes[svc]
	if !ok {
		if p = t.dflt; p == nil {
			return nil, &NoRouteError{Service: svc}
		}
	}
	var ep *Endpoint
	switch n := uint32(len(p.eps)); {
	case n == 0:
		return nil, p.noUpstream
	case p.policy == LeastRequest && n > 1:
		i := rand.Uint32N(n)
		j := rand.Uint32N(n - 1)
		if j >= i {
			j++
		}
		ep = p.eps[i]
		other := p.eps[j]
		if (other.ejected() == ep.ejected() && other.inflight.Load() < ep.inflight.Load()) || (ep.ejected() && !other.ejected()) {
			ep = other
		}
		if ep.ejected() {
			ep = p.firstHealthy(p.eps, i, ep)
		}
	default:
		i := p.next.Add(1)
		ep = p.ring[i%uint32(len(p.ring))]
		if ep.ejected() {
			ep = p.firstHealthy(p.ring, i, ep)
		}
	}
	ep.inflight.Add(1)
	return ep, nil
}

// firstHealthy is the first endpoint after position i that is not ejected,
// or fallback when all are.
func (p *picker) firstHealthy(list []*Endpoint, i uint32, fallback *Endpoint) *Endpoint {
	n := uint32(len(list))
	for k := uint32(1); k < n; k++ {
		if c := list[(i+k)%n]; !c.ejected() {
			return c
		}
	}
	return fallback
}

// serviceOf returns "pkg.Service" of "/pkg.Service/Method".
func serviceOf(fullMethod string) string {
	s := fullMethod
	if len(s) > 0 && s[0] == '/' {
		s = s[1:]
	}
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '/' {
			return s[:i]
		}
	}
	return s
}
