// Package balancer chooses the backend of each call among the routable
// backends of its route, as the routing table says.
//
// Pickers are immutable and swapped whole behind an atomic pointer when the
// routable set of a route changes, so Pick never takes a lock: the hot path
// is a map lookup, an atomic add and an index. The balancer decides nothing
// about health: a backend is in a picker exactly while the table says it is
// routable.
package balancer

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/balancer/balancercfg"
	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck"
)

// Policy chooses among a route's routable backends; see balancercfg for
// why it is defined there.
type Policy = balancercfg.Policy

// The policies.
const (
	RoundRobin   = balancercfg.RoundRobin
	LeastRequest = balancercfg.LeastRequest
)

// Config chooses a policy per route.
type Config struct {
	// Policies by route name; a route not listed uses Default.
	Policies map[string]Policy
	// Default is the policy of unlisted routes; "" means RoundRobin.
	Default Policy
	// OnRebuild, if set, is told each time a route's picker is rebuilt.
	OnRebuild func(route string, routable int)
	// Routing by route name narrows calls to subsets of the route's
	// backends; a route not listed has none.
	Routing map[string]Routing
	// Limits by route name; a route not listed has none.
	Limits map[string]Limits
	// OnRefused, if set, is told of each call a route's limits refused,
	// and why (RefusedFull or RefusedRate). It runs on the call's
	// goroutine and must not block.
	OnRefused func(route string, why Refusal)
}

// Limits are a route's max_in_flight and rate; see balancercfg for why
// they are defined there.
type Limits = balancercfg.Limits

// Rate is a route's token bucket; see balancercfg.
type Rate = balancercfg.Rate

// Refusal is why a route's limits refused a call.
type Refusal string

// The refusals.
const (
	// RefusedFull: every backend of the route was at max_in_flight.
	RefusedFull Refusal = "max_in_flight"
	// RefusedRate: the route's rate was exceeded.
	RefusedRate Refusal = "rate_limit"
)

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
	for r, rt := range c.Routing {
		if err := rt.Validate(); err != nil {
			return fmt.Errorf("route %q: %w", r, err)
		}
	}
	for r, l := range c.Limits {
		if err := l.Validate(); err != nil {
			return fmt.Errorf("route %q: %w", r, err)
		}
	}
	return nil
}

// NoRouteError: no route covers the called service.
type NoRouteError struct{ Service string }

func (e *NoRouteError) Error() string { return fmt.Sprintf("unknown service %s", e.Service) }

// GRPCStatus makes the error UNIMPLEMENTED at the RPC boundary, as a server
// that does not serve the service would answer.
func (e *NoRouteError) GRPCStatus() *status.Status {
	return status.New(codes.Unimplemented, "healthgate: "+e.Error())
}

// NoUpstreamError: the route has no routable backend, or none that the call
// has not tried already.
type NoUpstreamError struct {
	Route string
	// Tried is how many backends the call was already sent to.
	Tried int
}

func (e *NoUpstreamError) Error() string {
	if e.Tried > 0 {
		return fmt.Sprintf("no healthy upstream left for route %q after %d attempts", e.Route, e.Tried)
	}
	return fmt.Sprintf("no healthy upstream for route %q", e.Route)
}

// GRPCStatus makes the error UNAVAILABLE: the client may retry, elsewhere or
// later.
func (e *NoUpstreamError) GRPCStatus() *status.Status {
	return status.New(codes.Unavailable, "healthgate: "+e.Error())
}

// FullError: every backend of the route the call has not tried is at the
// route's max_in_flight.
type FullError struct {
	Route string
	// Limit is the route's max_in_flight; zero when only the instances
	// set theirs.
	Limit int
}

func (e *FullError) Error() string {
	if e.Limit == 0 {
		return fmt.Sprintf("every backend of route %q is at its own max_in_flight (%s)", e.Route, healthcheck.MetaMaxInFlight)
	}
	return fmt.Sprintf("every backend of route %q is at max_in_flight (%d calls)", e.Route, e.Limit)
}

// GRPCStatus makes the error UNAVAILABLE, as gRPC's own circuit breaking
// (xDS max_requests) and Envoy's overflow do: the condition passes as soon
// as calls finish, and a client may retry, later or through another
// gateway. The call was never sent, so a retry cannot run it twice.
func (e *FullError) GRPCStatus() *status.Status {
	return status.New(codes.Unavailable, "healthgate: "+e.Error())
}

// RateLimitedError: the route's rate was exceeded.
type RateLimitedError struct{ Route string }

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("rate limit of route %s exceeded", e.Route)
}

// GRPCStatus makes the error RESOURCE_EXHAUSTED: a quota ran out, which
// retrying at once does not fix, and UNAVAILABLE would invite.
func (e *RateLimitedError) GRPCStatus() *status.Status {
	return status.New(codes.ResourceExhausted, "healthgate: "+e.Error())
}

// NotSyncedError: discovery has not been heard from yet, so the gateway
// cannot tell an unknown service from one it will route in a moment.
type NotSyncedError struct{ Service string }

func (e *NotSyncedError) Error() string {
	return fmt.Sprintf("no backend for %s yet: discovery has not synced", e.Service)
}

// GRPCStatus makes the error UNAVAILABLE: a moment later the answer may be
// different, which UNIMPLEMENTED would deny.
func (e *NotSyncedError) GRPCStatus() *status.Status {
	return status.New(codes.Unavailable, "healthgate: "+e.Error())
}

// Route chooses among one route's routable backends. It never changes
// after it is built.
type Route struct {
	route  string
	policy Policy
	// ring holds each backend as many times as its weight, interleaved, for
	// round robin.
	ring []*healthcheck.Handle
	// hs holds each backend once, for least request.
	hs   []*healthcheck.Handle
	next atomic.Uint32
	// noUpstream is the error of an empty route, built once.
	noUpstream error
	// sel chooses the subset of each call; nil when the route has no
	// subsets, which then cost one comparison per call.
	sel *selector
	// limited: some backend has a limit of calls at once (the route's
	// max_in_flight or the instance's own); ringLimit and hsLimit hold
	// each entry's, zero for none.
	limited            bool
	ringLimit, hsLimit []int64
	full               error
	// limiter is the route's token bucket, kept by the Balancer across
	// rebuilds; nil without a rate.
	limiter     *rate.Limiter
	rateLimited error
	onRefused   func(string, Refusal)
}

type table struct {
	routes map[string]*Route
	dflt   *Route // nil without a default route
	synced bool
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
	// built is each route's table entry as last built from, to rebuild
	// only the routes that changed.
	built map[string]builtFrom
	// limiters are the routes' token buckets, by route name: a picker
	// rebuilt, or a reload that leaves a route's rate as it was, keeps
	// the bucket and what it has let through; a new rate starts a new
	// one.
	limiters map[string]routeLimiter
}

// routeLimiter is a route's token bucket and the rate it was made for.
// golang.org/x/time/rate is the Go team's token bucket: Allow never
// blocks, takes one short lock and starts no goroutine, which is what a
// pick may afford; a bucket of our own would only be more to get wrong.
type routeLimiter struct {
	rate balancercfg.Rate
	l    *rate.Limiter
}

type builtFrom struct {
	route *healthcheck.Route
	keys  []key
}

type key struct {
	h      *healthcheck.Handle
	weight int
	// tags choose the backend's subsets: a change of tags moves traffic
	// as a change of weight does.
	tags []string
	// limit is the instance's own max_in_flight.
	limit int
}

func (k key) equal(o key) bool {
	return k.h == o.h && k.weight == o.weight && k.limit == o.limit && slices.Equal(k.tags, o.tags)
}

// New returns a balancer with no routes: every call is UNAVAILABLE (not
// synced) until the first Update.
func New(cfg Config, logger *slog.Logger) (*Balancer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("balancer: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	b := &Balancer{cfg: cfg, log: logger.With("component", "balancer"), built: map[string]builtFrom{}, limiters: map[string]routeLimiter{}}
	b.table.Store(&table{routes: map[string]*Route{}})
	return b, nil
}

// SetConfig changes the policies; every picker is rebuilt at once.
func (b *Balancer) SetConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("balancer: %w", err)
	}
	b.mu.Lock()
	b.cfg = cfg
	clear(b.built)
	for name, l := range b.limiters {
		if cfg.Limits[name].Rate != l.rate {
			delete(b.limiters, name)
		}
	}
	var rebuilt []rebuild
	if b.last != nil {
		rebuilt = b.updateLocked(b.last)
	}
	b.mu.Unlock()
	if cfg.OnRebuild != nil {
		for _, r := range rebuilt {
			cfg.OnRebuild(r.route, r.routable)
		}
	}
	return nil
}

// Update follows a new routing table: the pickers of routes whose routable
// backends changed are rebuilt, the others kept.
func (b *Balancer) Update(st *healthcheck.State) {
	b.mu.Lock()
	b.last = st
	rebuilt := b.updateLocked(st)
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

func (b *Balancer) updateLocked(st *healthcheck.State) []rebuild {
	var rebuilt []rebuild
	old := b.table.Load()
	t := &table{routes: make(map[string]*Route, len(st.Routes)), synced: st.Synced}
	for name, r := range st.Routes {
		prev, seen := b.built[name]
		p, havePicker := old.routes[name]
		if seen && havePicker && prev.route == r {
			// The table shares routes that did not change.
			t.routes[name] = p
			continue
		}
		keys := make([]key, 0, r.Routable)
		for _, be := range r.Backends {
			if be.Routable {
				keys = append(keys, key{h: be.Handle, weight: be.Weight, tags: be.Tags, limit: be.MaxInFlight})
			}
		}
		if !seen || !havePicker || !slices.EqualFunc(keys, prev.keys, key.equal) {
			p = b.build(name, keys)
			b.log.Debug("picker rebuilt", "route", name, "routable", len(keys))
			rebuilt = append(rebuilt, rebuild{name, len(keys)})
		}
		b.built[name] = builtFrom{route: r, keys: keys}
		t.routes[name] = p
	}
	for name := range b.built {
		if _, ok := st.Routes[name]; !ok {
			delete(b.built, name)
		}
	}
	t.dflt = t.routes[discovery.DefaultRoute]
	b.table.Store(t)
	return rebuilt
}

func (b *Balancer) build(route string, keys []key) *Route {
	policy := b.cfg.Default
	if p, ok := b.cfg.Policies[route]; ok {
		policy = p
	}
	if policy == "" {
		policy = RoundRobin
	}
	// mk makes the route and each of its subsets alike: a setting of the
	// route belongs here, or its subsets would go without it.
	lim := b.cfg.Limits[route]
	mk := func(keys []key) *Route {
		r := newRoute(route, policy, lim.MaxInFlight, keys)
		r.onRefused = b.cfg.OnRefused
		return r
	}
	p := mk(keys)
	// The rate is the route's, whatever subset a call goes to: Route
	// takes its token before choosing one.
	if lim.Rate.Enabled() {
		p.limiter = b.limiterLocked(route, lim.Rate)
		p.rateLimited = &RateLimitedError{Route: route}
	}
	if rc := b.cfg.Routing[route]; rc.Enabled() {
		p.sel = newSelector(p, keys, rc, mk)
	}
	return p
}

// newRoute is a route, or a subset of one, made of keys.
func newRoute(route string, policy Policy, maxInFlight int, keys []key) *Route {
	p := &Route{route: route, policy: policy, noUpstream: &NoUpstreamError{Route: route}}
	g := 0
	for _, k := range keys {
		g = gcd(g, k.weight)
	}
	for _, k := range keys {
		p.hs = append(p.hs, k.h)
		for range min(k.weight/max(g, 1), maxWeight) {
			p.ring = append(p.ring, k.h)
		}
	}
	// Interleave by shuffling once: a weight-3 backend should not take
	// three calls in a row.
	rand.Shuffle(len(p.ring), func(i, j int) { p.ring[i], p.ring[j] = p.ring[j], p.ring[i] })
	p.limitInFlight(maxInFlight, keys)
	if len(p.ring) > 0 {
		p.next.Store(rand.Uint32N(uint32(len(p.ring))))
	}
	return p
}

// limitInFlight sets each backend's limit of calls at once: the lower of
// the route's max_in_flight and the instance's own, zero meaning none.
func (p *Route) limitInFlight(route int, keys []key) {
	if route == 0 && !slices.ContainsFunc(keys, func(k key) bool { return k.limit > 0 }) {
		return
	}
	limits := make(map[*healthcheck.Handle]int64, len(keys))
	for _, k := range keys {
		l := k.limit
		if l == 0 || (route > 0 && route < l) {
			l = route
		}
		if l > 0 {
			limits[k.h] = int64(l)
		}
	}
	if len(limits) == 0 {
		return
	}
	p.limited = true
	p.full = &FullError{Route: p.route, Limit: route}
	p.hsLimit = make([]int64, len(p.hs))
	for i, h := range p.hs {
		p.hsLimit[i] = limits[h]
	}
	p.ringLimit = make([]int64, len(p.ring))
	for i, h := range p.ring {
		p.ringLimit[i] = limits[h]
	}
}

// limiterLocked is the token bucket of route at r: the one it has while
// its rate stays r, else a new one, full.
func (b *Balancer) limiterLocked(route string, r balancercfg.Rate) *rate.Limiter {
	if l, ok := b.limiters[route]; ok && l.rate == r {
		return l.l
	}
	l := rate.NewLimiter(rate.Limit(r.PerSecond), r.BurstOrDefault())
	b.limiters[route] = routeLimiter{rate: r, l: l}
	return l
}

// maxWeight bounds a backend's copies in the ring.
const maxWeight = 100

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// Headers are a call's request headers as the balancer reads them.
type Headers interface {
	// Get returns the first value of the lowercase header name, or "".
	Get(name string) string
}

// Route returns the route of a call to fullMethod ("/pkg.Service/Method")
// whose request headers are h (nil: none): the backends it may go to, as
// they are now; for a route with subsets, those of the subset that the
// headers or the weighted split choose.
// It never blocks. A call it returns a route for counts against the
// route's rate: call it once per call, not per attempt. Errors carry their
// gRPC status: UNIMPLEMENTED when no route covers the service, UNAVAILABLE
// when discovery has not synced and the route has no backend yet,
// RESOURCE_EXHAUSTED when the route's rate is exceeded.
func (b *Balancer) Route(fullMethod string, h Headers) (*Route, error) {
	t := b.table.Load()
	svc := serviceOf(fullMethod)
	p, ok := t.routes[svc]
	if !ok {
		if p = t.dflt; p == nil {
			if !t.synced {
				return nil, &NotSyncedError{Service: svc}
			}
			return nil, &NoRouteError{Service: svc}
		}
	}
	if len(p.hs) == 0 && !t.synced {
		return nil, &NotSyncedError{Service: svc}
	}
	if p.limiter != nil && !p.limiter.Allow() {
		if p.onRefused != nil {
			p.onRefused(p.route, RefusedRate)
		}
		return nil, p.rateLimited
	}
	if p.sel != nil {
		return p.sel.choose(h), nil
	}
	return p, nil
}

// Pick chooses the backend for a call to fullMethod: Route, then the
// route's Pick.
func (b *Balancer) Pick(_ context.Context, fullMethod string, tried []*healthcheck.Handle) (*healthcheck.Handle, error) {
	r, err := b.Route(fullMethod, nil)
	if err != nil {
		return nil, err
	}
	return r.Pick(tried)
}

// Name is the route's name: its service, or "*".
func (p *Route) Name() string { return p.route }

// Pick chooses the backend of an attempt among the route's routable
// backends, other than those in tried (the backends the call was already
// sent to without being accepted). It never blocks. The backend is counted
// in flight (Handle.Begin); the caller calls its Done when the call ends.
// The error, UNAVAILABLE, says that the route has no routable backend
// left, or that every one it has is at max_in_flight.
func (p *Route) Pick(tried []*healthcheck.Handle) (*healthcheck.Handle, error) {
	if p.limited {
		return p.pickLimited(tried)
	}
	var h *healthcheck.Handle
	switch n := uint32(len(p.hs)); {
	case n == 0:
		return nil, p.noUpstream
	case p.policy == LeastRequest && n > 1:
		i := rand.Uint32N(n)
		j := rand.Uint32N(n - 1)
		if j >= i {
			j++
		}
		h = p.hs[i]
		if other := p.hs[j]; slices.Contains(tried, h) || (!slices.Contains(tried, other) && other.InFlight() < h.InFlight()) {
			h = other
		}
		if len(tried) > 0 && slices.Contains(tried, h) {
			h = p.untried(p.hs, i, tried)
		}
	default:
		i := p.next.Add(1)
		h = p.ring[i%uint32(len(p.ring))]
		if len(tried) > 0 && slices.Contains(tried, h) {
			h = p.untried(p.ring, i, tried)
		}
	}
	if h == nil {
		return nil, &NoUpstreamError{Route: p.route, Tried: len(tried)}
	}
	h.Begin()
	return h, nil
}

// pickLimited is Pick on a route with max_in_flight: the policy's choice
// if it has room, else the first backend with room after it, counted in
// flight in the same step as the check (TryBegin). All full: FullError at
// once; a call is never queued.
func (p *Route) pickLimited(tried []*healthcheck.Handle) (*healthcheck.Handle, error) {
	n := uint32(len(p.hs))
	if n == 0 {
		return nil, p.noUpstream
	}
	var h *healthcheck.Handle
	var i uint32
	var limit int64
	if p.policy == LeastRequest && n > 1 {
		i = rand.Uint32N(n)
		j := rand.Uint32N(n - 1)
		if j >= i {
			j++
		}
		h, limit = p.hs[i], p.hsLimit[i]
		if other := p.hs[j]; other.InFlight() < h.InFlight() {
			h, limit = other, p.hsLimit[j]
		}
	} else {
		i = p.next.Add(1)
		k := i % uint32(len(p.ring))
		h, limit = p.ring[k], p.ringLimit[k]
	}
	if (len(tried) == 0 || !slices.Contains(tried, h)) && begin(h, limit) {
		return h, nil
	}
	untried := false
	for k := range n {
		c := (i + k) % n
		if len(tried) > 0 && slices.Contains(tried, p.hs[c]) {
			continue
		}
		untried = true
		if begin(p.hs[c], p.hsLimit[c]) {
			return p.hs[c], nil
		}
	}
	if !untried {
		return nil, &NoUpstreamError{Route: p.route, Tried: len(tried)}
	}
	if p.onRefused != nil {
		p.onRefused(p.route, RefusedFull)
	}
	return nil, p.full
}

// begin counts a call on h if it has room under limit (zero: no limit).
func begin(h *healthcheck.Handle, limit int64) bool {
	if limit == 0 {
		h.Begin()
		return true
	}
	return h.TryBegin(limit)
}

// untried is the first backend after position i that the call has not been
// sent to, or nil.
func (p *Route) untried(list []*healthcheck.Handle, i uint32, tried []*healthcheck.Handle) *healthcheck.Handle {
	n := uint32(len(list))
	for k := uint32(1); k <= n; k++ {
		if c := list[(i+k)%n]; !slices.Contains(tried, c) {
			return c
		}
	}
	return nil
}

// serviceOf returns "pkg.Service" of "/pkg.Service/Method": the route key of
// a call. Any bytes are accepted; what is not a gRPC path is a service no
// route covers.
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
