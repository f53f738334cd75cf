package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/healthgate/healthgate/discovery/discoverycfg"
	"github.com/healthgate/healthgate/internal/backoff"
)

// ConsulSettings is the consul: section of the config file; see
// discoverycfg for why it is defined there.
type ConsulSettings = discoverycfg.Consul

// ConsulTLS is TLS to the Consul agent; zero means plain HTTP.
type ConsulTLS = discoverycfg.TLS

// ConsulConfig says how to reach Consul and what to take from it.
type ConsulConfig struct {
	// ConsulSettings is what the config file sets.
	ConsulSettings
	// Routes are the config file's routes that name a Consul service.
	Routes []ConsulRoute
	// Authoritative are the routes the config file defines, whatever their
	// backends' source: route tags never add backends to them, so that a
	// service anyone can register does not join a route the operator
	// wrote down.
	Authoritative []string
	// WaitTime bounds one blocking query. Zero means 5m.
	WaitTime time.Duration
	// RetryBase and RetryMax bound the backoff while Consul is unreachable.
	// Zero means 250ms and 10s.
	RetryBase, RetryMax time.Duration
	// ResetGrace is how long the instances known before an outage of
	// Consul or before its index went backwards (a restarted agent that lost
	// its state, a new cluster) are kept beside what the first answers say,
	// while the instances register again. Zero means 10s.
	ResetGrace time.Duration
	// OnQuery, if set, is told of every query's outcome, for metrics:
	// kind is "catalog" or "health"; a blocking query's duration includes
	// its wait.
	OnQuery func(kind string, took time.Duration, err error)
}

// ConsulRoute routes calls for Route to the instances of Consul service
// Service that carry all of Tags.
type ConsulRoute struct {
	Route   string
	Service string
	Tags    []string
}

// Consul is a Source fed by Consul blocking queries: one on the catalog to
// learn which services carry route tags, one per watched service on its
// health endpoint. There is no polling: each query returns when Consul's
// data changes, or after WaitTime.
type Consul struct {
	cfg    ConsulConfig
	client *api.Client
	log    *slog.Logger
}

// NewConsul returns a Consul source; nothing is contacted before Run.
func NewConsul(cfg ConsulConfig, logger *slog.Logger) (*Consul, error) {
	if cfg.Address == "" {
		return nil, errors.New("discovery: consul: address is empty")
	}
	if err := cfg.ConsulSettings.Validate(); err != nil {
		return nil, fmt.Errorf("discovery: consul: %w", err)
	}
	cfg.ConsulSettings = cfg.ConsulSettings.WithDefaults()
	if cfg.WaitTime == 0 {
		cfg.WaitTime = 5 * time.Minute
	}
	if cfg.RetryBase == 0 {
		cfg.RetryBase = 250 * time.Millisecond
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = 10 * time.Second
	}
	if cfg.ResetGrace == 0 {
		cfg.ResetGrace = 10 * time.Second
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ac := APIConfig(cfg.ConsulSettings)
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("discovery: consul %s: %w", cfg.Address, err)
	}
	c := &Consul{cfg: cfg, client: client, log: logger.With("component", "discovery", "consul", cfg.Address)}
	if cfg.TLS.InsecureSkipVerify {
		c.log.Warn("consul.tls.insecure_skip_verify is set: the Consul agent's certificate is not verified, and anyone on the path can answer as Consul and choose the gateway's backends")
	}
	return c, nil
}

// APIConfig is the Consul API client configuration for cfg: address (with
// its scheme), token, datacenter and TLS. Everything in healthgate that talks
// to Consul builds its client from it.
func APIConfig(cfg ConsulSettings) *api.Config {
	ac := &api.Config{
		Address:    cfg.Address,
		Token:      cfg.Token,
		Datacenter: cfg.Datacenter,
		TLSConfig: api.TLSConfig{
			Address: cfg.TLS.ServerName, CAFile: cfg.TLS.CAFile,
			CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile,
			InsecureSkipVerify: cfg.TLS.InsecureSkipVerify,
		},
	}
	if strings.HasPrefix(cfg.Address, "https://") || cfg.TLS.CAFile != "" || cfg.TLS.CertFile != "" {
		ac.Scheme = "https"
	}
	if u, ok := strings.CutPrefix(ac.Address, "https://"); ok {
		ac.Address = u
	} else if u, ok := strings.CutPrefix(ac.Address, "http://"); ok {
		ac.Address = u
	}
	return ac
}

// watchKey is one health query: a service with a tag filter.
type watchKey struct {
	service string
	tags    string // the filter tags joined with "\x00"
	auto    bool   // read route tags from the results
}

// consulRun is the state of one Run: what each query last returned.
type consulRun struct {
	c    *Consul
	poke chan struct{}

	mu sync.Mutex // guards the fields below
	// catalog maps each service carrying route tags to the routes its tags
	// name; nil until the catalog query first answers.
	catalog map[string][]string
	// results holds each watch's latest instances; a key is present once
	// its query has answered.
	results map[watchKey][]*api.ServiceEntry
	// kept holds, for a while after Consul's index went backwards or it
	// came back from an outage, what a watch knew before: a restarted,
	// emptied Consul is not news that every backend is gone. Health
	// checking still decides who is routable. Each instance has its own
	// deadline, so that a second reset within the grace adds what the
	// watch knew then without forgetting, or prolonging, what the first
	// one kept.
	kept map[watchKey][]keptEntry
	// keptCatalog is the same for the catalog of route tags, per service.
	keptCatalog map[string]keptRoutes
}

type keptEntry struct {
	entry *api.ServiceEntry
	until time.Time
}

type keptRoutes struct {
	routes []string
	until  time.Time
}

func sameInstance(e *api.ServiceEntry) func(*api.ServiceEntry) bool {
	return func(o *api.ServiceEntry) bool { return o.Service.ID == e.Service.ID && o.Node.Node == e.Node.Node }
}

func (r *consulRun) wake() {
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

// Run watches Consul until ctx ends. While Consul is unreachable it keeps
// the last snapshot it published and retries with backoff.
func (c *Consul) Run(ctx context.Context, publish func(Snapshot)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &consulRun{c: c, poke: make(chan struct{}, 1), results: map[watchKey][]*api.ServiceEntry{}, kept: map[watchKey][]keptEntry{}}
	expiry := time.NewTimer(time.Hour)
	defer expiry.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	watches := map[watchKey]context.CancelFunc{}
	start := func(k watchKey) {
		wctx, stop := context.WithCancel(ctx)
		watches[k] = stop
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.watchService(wctx, k)
		}()
	}
	for _, rt := range c.cfg.Routes {
		k := watchKey{service: rt.Service, tags: strings.Join(rt.Tags, "\x00")}
		if _, ok := watches[k]; !ok {
			start(k)
		}
	}
	if !c.cfg.DisableAutoRoutes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.watchCatalog(ctx)
		}()
	}

	var last *Snapshot
	synced := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.poke:
		case <-expiry.C:
		}
		r.mu.Lock()
		if next := r.expireKeptLocked(time.Now()); !next.IsZero() {
			expiry.Reset(time.Until(next))
		}
		if r.catalog != nil {
			want := map[watchKey]bool{}
			for svc := range r.catalogLocked() {
				want[watchKey{service: svc, tags: strings.Join(c.cfg.Tags, "\x00"), auto: true}] = true
			}
			// The catalog and each health watch see a reset when each
			// first answers, which may be seconds apart: a service
			// whose watch still keeps instances from its reset stays
			// watched for its own grace, not the catalog's.
			for k, kept := range r.kept {
				if k.auto && len(kept) > 0 {
					want[k] = true
				}
			}
			for k := range want {
				if _, ok := watches[k]; !ok {
					start(k)
				}
			}
			for k, stop := range watches {
				if k.auto && !want[k] {
					stop()
					delete(watches, k)
					delete(r.results, k)
					delete(r.kept, k)
				}
			}
		}
		if !synced {
			synced = (c.cfg.DisableAutoRoutes || r.catalog != nil) && len(r.results) == len(watches)
		}
		snap := r.snapshotLocked()
		r.mu.Unlock()
		snap.Synced = synced
		if last == nil || !snap.Equal(*last) {
			var prev Snapshot
			if last != nil {
				prev = *last
			}
			c.logChanges(prev, snap)
			last = &snap
			publish(snap)
		}
	}
}

// logChanges says what changed and why, one line per instance that came or
// went, so that an operator can follow a backend through Consul.
func (c *Consul) logChanges(prev, next Snapshot) {
	why := "its checks pass and it carries the route"
	if c.cfg.AllowUnhealthy {
		why = "it is registered and carries the route"
	}
	for _, route := range slices.Sorted(maps.Keys(next.Routes)) {
		before := map[string]bool{}
		for _, e := range prev.Routes[route] {
			before[e.Addr] = true
		}
		if _, known := prev.Routes[route]; !known {
			c.log.Info("consul: route appeared", "route", route)
		}
		for _, e := range next.Routes[route] {
			if !before[e.Addr] {
				c.log.Info("consul: backend joined route", "route", route, "addr", e.Addr, "status", e.Status, "reason", why)
			}
			delete(before, e.Addr)
		}
		for addr := range before {
			c.log.Info("consul: backend left route", "route", route, "addr", addr,
				"reason", "deregistered, failing its Consul checks, or no longer matching the tags")
		}
	}
	for route, eps := range prev.Routes {
		if _, ok := next.Routes[route]; !ok {
			c.log.Info("consul: route disappeared", "route", route, "backends", len(eps))
		}
	}
	c.log.Debug("consul routes", "routes", describe(next), "synced", next.Synced)
}

func describe(s Snapshot) string {
	var b strings.Builder
	for _, route := range slices.Sorted(maps.Keys(s.Routes)) {
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s: %d", route, len(s.Routes[route]))
	}
	return b.String()
}

func (r *consulRun) snapshotLocked() Snapshot {
	snap := Snapshot{Routes: map[string][]Endpoint{}}
	for _, rt := range r.c.cfg.Routes {
		k := watchKey{service: rt.Service, tags: strings.Join(rt.Tags, "\x00")}
		eps := snap.Routes[rt.Route]
		for _, e := range r.entriesLocked(k) {
			eps = append(eps, endpointOf(e))
		}
		snap.Routes[rt.Route] = eps
	}
	// A route tagged in the catalog exists even while none of its instances
	// passes: its calls are UNAVAILABLE, not UNIMPLEMENTED.
	for _, routes := range r.catalogLocked() {
		for _, route := range routes {
			if slices.Contains(r.c.cfg.Authoritative, route) {
				continue
			}
			if _, ok := snap.Routes[route]; !ok {
				snap.Routes[route] = nil
			}
		}
	}
	prefix := r.c.cfg.RouteTag + "="
	for k := range r.results {
		if !k.auto {
			continue
		}
		for _, e := range r.entriesLocked(k) {
			for _, tag := range e.Service.Tags {
				if route, ok := strings.CutPrefix(tag, prefix); ok && route != "" && !slices.Contains(r.c.cfg.Authoritative, route) {
					snap.Routes[route] = append(snap.Routes[route], endpointOf(e))
				}
			}
		}
	}
	for route, eps := range snap.Routes {
		snap.Routes[route] = sortEndpoints(eps)
	}
	return snap
}

// entriesLocked is what watch k knows: its latest answer, and what it knew
// before Consul's index went backwards while that is kept.
func (r *consulRun) entriesLocked(k watchKey) []*api.ServiceEntry {
	kept, ok := r.kept[k]
	if !ok {
		return r.results[k]
	}
	out := slices.Clone(r.results[k])
	for _, ke := range kept {
		if !slices.ContainsFunc(out, sameInstance(ke.entry)) {
			out = append(out, ke.entry)
		}
	}
	return out
}

// catalogLocked is the catalog of route tags, with what it held before
// Consul's index went backwards while that is kept.
func (r *consulRun) catalogLocked() map[string][]string {
	if r.keptCatalog == nil {
		return r.catalog
	}
	out := maps.Clone(r.catalog)
	if out == nil {
		out = map[string][]string{}
	}
	for svc, kept := range r.keptCatalog {
		if _, ok := out[svc]; !ok {
			out[svc] = kept.routes
		}
	}
	return out
}

// keepEntriesLocked is watch k's side of a reset: the instances its latest
// answer listed are kept for the grace from now, beside what an earlier
// reset kept, which keeps its own deadline.
func (r *consulRun) keepEntriesLocked(k watchKey, now time.Time) {
	prev := r.results[k]
	if len(prev) == 0 {
		return
	}
	until := now.Add(r.c.cfg.ResetGrace)
	kept := slices.DeleteFunc(r.kept[k], func(ke keptEntry) bool { return slices.ContainsFunc(prev, sameInstance(ke.entry)) })
	for _, e := range prev {
		kept = append(kept, keptEntry{entry: e, until: until})
	}
	r.kept[k] = kept
	r.c.log.Info("consul: first answer after an outage or an index that went backwards; instances it no longer lists are kept while they register again",
		"query", k.service, "instances", len(kept), "grace", r.c.cfg.ResetGrace)
}

// keepCatalogLocked is the catalog's side of a reset, as keepEntriesLocked.
func (r *consulRun) keepCatalogLocked(now time.Time) {
	if len(r.catalog) == 0 {
		return
	}
	until := now.Add(r.c.cfg.ResetGrace)
	if r.keptCatalog == nil {
		r.keptCatalog = map[string]keptRoutes{}
	}
	for svc, routes := range r.catalog {
		r.keptCatalog[svc] = keptRoutes{routes: routes, until: until}
	}
	r.c.log.Info("consul: first catalog answer after an outage or an index that went backwards; routes it no longer lists are kept while services register again",
		"services", len(r.keptCatalog), "grace", r.c.cfg.ResetGrace)
}

// expireKeptLocked forgets what was kept across an index reset once its
// grace is over, and returns when the next kept answer expires.
func (r *consulRun) expireKeptLocked(now time.Time) time.Time {
	var next time.Time
	later := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	for k, kept := range r.kept {
		n := len(kept)
		kept = slices.DeleteFunc(kept, func(ke keptEntry) bool { return !now.Before(ke.until) })
		if len(kept) < n {
			r.c.log.Info("consul: instances known before the index reset and not registered again are dropped", "query", k.service, "instances", n-len(kept))
		}
		if len(kept) == 0 {
			delete(r.kept, k)
			continue
		}
		r.kept[k] = kept
		for _, ke := range kept {
			later(ke.until)
		}
	}
	for svc, kept := range r.keptCatalog {
		if !now.Before(kept.until) {
			delete(r.keptCatalog, svc)
			continue
		}
		later(kept.until)
	}
	if len(r.keptCatalog) == 0 {
		r.keptCatalog = nil
	}
	return next
}

func endpointOf(e *api.ServiceEntry) Endpoint {
	host := e.Service.Address
	if host == "" {
		host = e.Node.Address
	}
	status := e.Checks.AggregatedStatus()
	w := e.Service.Weights.Passing
	if status == api.HealthWarning {
		// Consul's own weighting: an instance with a warning gets its
		// Warning weight (it is used at all only with allow_unhealthy or
		// when warnings count as passing).
		w = e.Service.Weights.Warning
	}
	if w < 1 {
		w = 1
	}
	return Endpoint{
		Addr:   net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
		Weight: w,
		Tags:   e.Service.Tags,
		Meta:   e.Service.Meta,
		Status: status,

		Service:       e.Service.Service,
		Datacenter:    e.Node.Datacenter,
		ConnectNative: e.Service.Connect != nil && e.Service.Connect.Native,
	}
}

func (r *consulRun) watchCatalog(ctx context.Context) {
	prefix := r.c.cfg.RouteTag + "="
	blockingLoop(ctx, r.c, "catalog", "catalog services", func(q *api.QueryOptions) (map[string][]string, *api.QueryMeta, error) {
		return r.c.client.Catalog().Services(q)
	}, func(services map[string][]string, reset bool) {
		found := map[string][]string{}
		for svc, tags := range services {
			if !r.c.cfg.AutoRoutes(svc) {
				// Not a service allowed to join routes by its tags.
				continue
			}
			for _, t := range tags {
				if route, ok := strings.CutPrefix(t, prefix); ok && route != "" {
					found[svc] = append(found[svc], route)
				}
			}
		}
		r.mu.Lock()
		if reset {
			r.keepCatalogLocked(time.Now())
		}
		r.catalog = found
		r.mu.Unlock()
		r.wake()
	})
}

func (r *consulRun) watchService(ctx context.Context, k watchKey) {
	var tags []string
	if k.tags != "" {
		tags = strings.Split(k.tags, "\x00")
	}
	passing := !r.c.cfg.AllowUnhealthy
	blockingLoop(ctx, r.c, "health", "health of "+k.service, func(q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
		return r.c.client.Health().ServiceMultipleTags(k.service, tags, passing, q)
	}, func(entries []*api.ServiceEntry, reset bool) {
		r.mu.Lock()
		if ctx.Err() == nil {
			if reset {
				r.keepEntriesLocked(k, time.Now())
			}
			r.results[k] = entries
		}
		r.mu.Unlock()
		r.wake()
	})
}

// blockingLoop runs one Consul blocking query after another, the way
// consul-template does: the index resets when it goes backwards (Consul
// restarted or lost its state), an answer with an unchanged index is a
// timeout and is skipped, a short jittered pause separates queries so that
// a flapping service cannot make the gateway hammer the agent, and errors
// back off exponentially while the last good answer stays in use.
func blockingLoop[T any](ctx context.Context, c *Consul, kind, what string, query func(*api.QueryOptions) (T, *api.QueryMeta, error), report func(v T, reset bool)) {
	// index is what the next query waits on; known is the index of the
	// latest answer, kept across errors, to tell a Consul that lost its
	// state.
	var index, known uint64
	failures := 0
	for {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: c.cfg.WaitTime}).WithContext(ctx)
		start := time.Now()
		v, meta, err := query(q)
		if ctx.Err() != nil {
			return
		}
		if c.cfg.OnQuery != nil {
			c.cfg.OnQuery(kind, time.Since(start), err)
		}
		if err != nil {
			failures++
			// The agent may come back with a fresh state whose index is
			// below ours; a query waiting for our old index would then
			// block for the whole WaitTime. Start over with a plain read.
			index = 0
			d := retryDelay(c.cfg.RetryBase, c.cfg.RetryMax, failures)
			if failures == 1 {
				c.log.Warn("consul query failed; routing with the last known backends", "query", what, "err", err, "retry_in", d)
			} else {
				c.log.Debug("consul query failed again", "query", what, "err", err, "failures", failures, "retry_in", d)
			}
			if !backoff.Sleep(ctx, d) {
				return
			}
			continue
		}
		// The first answer after an outage may come from an agent that
		// restarted without its state, whose index need not have gone
		// backwards; like an index that did, it is not news that what
		// it no longer lists has left.
		recovered := failures > 0
		if recovered {
			c.log.Info("consul reachable again", "query", what, "after_failures", failures)
			failures = 0
		}
		switch {
		case recovered:
			// This answer is the reset; its index is the one later
			// answers go on from. Keeping the higher index of the agent
			// before the outage would make each answer of an agent that
			// restarted empty a reset again until its index caught up,
			// and each would take what that agent lists so far for what
			// was known before.
			index, known = meta.LastIndex, meta.LastIndex
			report(v, true)
		case meta.LastIndex < known:
			// Consul's index went backwards: its state is not the one we
			// knew. Start over with a fresh read.
			index, known = meta.LastIndex, meta.LastIndex
			report(v, true)
		case meta.LastIndex == index:
			// The wait timed out with nothing new.
		default:
			index, known = meta.LastIndex, meta.LastIndex
			report(v, false)
		}
		if index == 0 {
			// A zero index would make every next query return at once.
			index = 1
		}
		if !backoff.Sleep(ctx, time.Duration(5+rand.IntN(20))*time.Millisecond) {
			return
		}
	}
}

func retryDelay(base, max time.Duration, failures int) time.Duration {
	d := base
	for i := 1; i < failures && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}
