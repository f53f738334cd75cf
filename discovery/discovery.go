// Package discovery tells the gateway which backend addresses serve each
// route. It knows nothing of gRPC health: a Source reports what its origin
// (a config file, Consul) says, and healthcheck decides what is routable.
package discovery

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/healthgate/healthgate/discovery/discoverycfg"
)

// DefaultRoute names the route that takes calls for gRPC services that no
// other route covers.
const DefaultRoute = discoverycfg.DefaultRoute

// Endpoint is one backend instance as a source knows it.
type Endpoint struct {
	// Addr is host:port.
	Addr string
	// Weight is the share of calls relative to the route's other endpoints;
	// at least 1.
	Weight int
	Tags   []string
	Meta   map[string]string
	// Status is what the source says of the instance: "passing",
	// "warning" or "critical" for Consul (only passing ones unless
	// configured), "static" for the config file.
	Status string
	// Service and Datacenter are the Consul service the instance belongs
	// to and its datacenter; empty for static backends.
	Service, Datacenter string
	// ConnectNative: the instance is a Consul Connect-native service. It
	// takes only mTLS with a certificate of the Connect CA, and presents
	// one naming Service in Datacenter.
	ConnectNative bool
}

// Snapshot is everything a source knows at one moment.
type Snapshot struct {
	// Routes maps a route, a full gRPC service name ("pkg.Service") or
	// DefaultRoute, to its endpoints sorted by address. A route with no
	// endpoints is still known: its calls fail UNAVAILABLE rather than
	// UNIMPLEMENTED.
	Routes map[string][]Endpoint
	// Synced is true once the source has heard from its origin at least
	// once. It stays true while the origin is unreachable afterwards: the
	// last good snapshot is still the best knowledge there is.
	Synced bool
}

// Equal reports whether two snapshots describe the same routes.
func (s Snapshot) Equal(o Snapshot) bool {
	return s.Synced == o.Synced && maps.EqualFunc(s.Routes, o.Routes, func(a, b []Endpoint) bool {
		return slices.EqualFunc(a, b, Endpoint.equal)
	})
}

func (e Endpoint) equal(o Endpoint) bool {
	return e.Addr == o.Addr && e.Weight == o.Weight && e.Status == o.Status && slices.Equal(e.Tags, o.Tags) && maps.Equal(e.Meta, o.Meta) &&
		e.Service == o.Service && e.Datacenter == o.Datacenter && e.ConnectNative == o.ConnectNative
}

// Source reports the endpoints of routes.
type Source interface {
	// Run calls publish with a new snapshot each time what the source knows
	// changes, until ctx is done; each snapshot replaces the previous one
	// whole. publish is never called concurrently and must not block for
	// long. Run returns nil when ctx ends, or an error if the source cannot
	// work at all (a transient failure of its origin is not such an error).
	Run(ctx context.Context, publish func(Snapshot)) error
}

// Static is a Source whose routes never change: the addresses listed in the
// gateway's config file.
type Static map[string][]string

// Run publishes the routes once and waits for ctx.
func (s Static) Run(ctx context.Context, publish func(Snapshot)) error {
	eps := make(StaticEndpoints, len(s))
	for route, addrs := range s {
		for _, a := range addrs {
			eps[route] = append(eps[route], Endpoint{Addr: a})
		}
	}
	return eps.Run(ctx, publish)
}

// StaticEndpoints is a Source whose routes never change, with what the
// config file says of each backend besides its address (tags, weight).
// Status is always "static", and a Weight below 1 is 1.
type StaticEndpoints map[string][]Endpoint

// Run publishes the routes once and waits for ctx.
func (s StaticEndpoints) Run(ctx context.Context, publish func(Snapshot)) error {
	snap := Snapshot{Routes: make(map[string][]Endpoint, len(s)), Synced: true}
	for route, in := range s {
		eps := make([]Endpoint, 0, len(in))
		for _, e := range in {
			e.Weight = max(e.Weight, 1)
			e.Status = "static"
			eps = append(eps, e)
		}
		snap.Routes[route] = sortEndpoints(eps)
	}
	publish(snap)
	<-ctx.Done()
	return nil
}

func sortEndpoints(eps []Endpoint) []Endpoint {
	slices.SortFunc(eps, func(a, b Endpoint) int { return strings.Compare(a.Addr, b.Addr) })
	return slices.CompactFunc(eps, func(a, b Endpoint) bool { return a.Addr == b.Addr })
}

// Merge is a Source that runs several sources and publishes the union of
// their routes: an address listed for a route by any source serves it. The
// merged snapshot is synced once every source is.
func Merge(sources ...Source) Source {
	if len(sources) == 1 {
		return sources[0]
	}
	return merged(sources)
}

type merged []Source

func (m merged) Run(ctx context.Context, publish func(Snapshot)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu     sync.Mutex // serialises publish and guards latest
		latest = make([]*Snapshot, len(m))
		wg     sync.WaitGroup
		errs   = make(chan error, len(m))
	)
	for i, src := range m {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := src.Run(ctx, func(s Snapshot) {
				mu.Lock()
				defer mu.Unlock()
				latest[i] = &s
				publish(union(latest))
			})
			if err != nil {
				errs <- err
				cancel()
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func union(snaps []*Snapshot) Snapshot {
	out := Snapshot{Routes: map[string][]Endpoint{}, Synced: true}
	for _, s := range snaps {
		if s == nil {
			out.Synced = false
			continue
		}
		out.Synced = out.Synced && s.Synced
		for route, eps := range s.Routes {
			out.Routes[route] = append(out.Routes[route], eps...)
		}
	}
	for route, eps := range out.Routes {
		out.Routes[route] = sortEndpoints(eps)
	}
	return out
}
