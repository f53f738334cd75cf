package healthcheck

import (
	"fmt"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// State is the routing table: at one version, per route, every backend the
// gateway knows for it, whether it takes new calls and why not, and whether
// the route as a whole is SERVING. It is never modified after it is
// published. The balancer, the gateway's gRPC health service, the admin
// endpoint and the metrics only read it: none of them decides routability
// again.
type State struct {
	// Version grows with every published state.
	Version uint64
	// Synced is true once discovery has heard from its origin; it stays
	// true while the origin is unreachable afterwards.
	Synced bool
	// Draining is true once the gateway has begun to shut down: every route
	// reports NOT_SERVING, while calls are still forwarded.
	Draining bool
	// Routes by name, each with every backend discovery lists for it,
	// routable or not, and those that are leaving it.
	Routes map[string]*Route
}

// Ready is the gateway's readiness policy, the one /readyz and the
// gateway's own health service ("") report: discovery has been heard from
// once and the gateway is not draining. A route without healthy backends
// does not make the gateway unready: that route reports NOT_SERVING, and the
// other routes keep their traffic. A nil State is not ready.
func (s *State) Ready() (bool, string) {
	switch {
	case s == nil || !s.Synced:
		return false, "discovery has not synced"
	case s.Draining:
		return false, "draining"
	}
	return true, ""
}

// Backend finds addr among route's backends. A nil State has none.
func (s *State) Backend(route, addr string) (Backend, bool) {
	if s == nil {
		return Backend{}, false
	}
	if r, ok := s.Routes[route]; ok {
		for _, b := range r.Backends {
			if b.Addr == addr {
				return *b, true
			}
		}
	}
	return Backend{}, false
}

// Route is one route's backends and what they add up to.
type Route struct {
	Name string
	// HealthService is the health-service name watched for the route's
	// backends unless an instance names its own (Backend.HealthService).
	HealthService string
	// MinHealthy is how many routable backends make the route SERVING.
	MinHealthy int
	// Backends sorted by address. A Backend is shared by every version of
	// the table in which it did not change: never modify one.
	Backends []*Backend
	// Routable counts the backends that take new calls.
	Routable int
	// Serving: the gateway is not draining, the route is still listed by
	// discovery, and at least MinHealthy backends are routable.
	Serving bool
	// Gone is set while a route that discovery no longer lists is kept
	// for the drain grace, so that its calls fail UNAVAILABLE rather than
	// UNIMPLEMENTED while a catalog refills or a deploy moves it.
	Gone bool
}

// Backend is one backend of one route.
type Backend struct {
	// Handle is the backend itself, shared by every route that lists its
	// address: what calls are sent through.
	Handle *Handle
	Addr   string
	Weight int
	Tags   []string
	// MaxInFlight is the instance's own limit of calls at once
	// (MetaMaxInFlight); zero for none.
	MaxInFlight int
	// Discovery is the source's word on the instance (discovery.Endpoint's
	// Status).
	Discovery string
	// HealthService is the grpc.health.v1 name watched for this backend on
	// this route.
	HealthService string
	// Routable: the backend takes new calls for the route.
	Routable bool
	// Status is the latest health status; UNKNOWN until the first answer.
	Status healthpb.HealthCheckResponse_ServingStatus
	// Reason says why the backend is not routable, or why it is routable
	// without a SERVING answer; empty otherwise.
	Reason string
	// Since is when Status or Reason last changed.
	Since time.Time
	// EjectedUntil is set while passive failure detection keeps the
	// backend out.
	EjectedUntil time.Time
	// Leaving is set while the backend drains out of the route: discovery
	// no longer lists it there, and its calls in flight get the drain
	// grace to finish.
	Leaving bool
}

// facts is everything known about one backend of one route at one moment:
// the inputs of the routability rule.
type facts struct {
	leaving string // why the backend is leaving the route; "" if it is not
	// conn: the connection is READY; connReason says why not.
	conn       bool
	connReason string
	// alive is false when the backend stopped answering on a connection
	// that is still open; aliveReason says since when.
	alive       bool
	aliveReason string
	health      health
	ejected     time.Time // zero when not ejected
	ejectReason string
}

// routable is the rule of routability, the only place it is written: a
// backend takes new calls for a route while discovery lists it there, its
// connection is READY and answering, its latest Watch answer for the route's
// health-service name is SERVING (or the backend has no health service), and
// passive failure detection has not ejected it. The reason names the first
// cause that keeps it out.
func routable(f facts) (bool, string) {
	switch {
	case f.leaving != "":
		return false, f.leaving
	case !f.conn:
		return false, f.connReason
	case !f.alive:
		return false, f.aliveReason
	case !f.health.routable:
		return false, f.health.reason
	case !f.ejected.IsZero():
		return false, fmt.Sprintf("ejected until %s: %s", f.ejected.Format(time.RFC3339Nano), f.ejectReason)
	}
	// A routable backend may still carry a reason: UNIMPLEMENTED treated as
	// SERVING says so.
	return true, f.health.reason
}

// serving is the rule of a route's own health.
func serving(draining, gone bool, routable, minHealthy int) bool {
	return !draining && !gone && routable >= minHealthy
}

func (b Backend) same(o Backend) bool {
	return b.Handle == o.Handle && b.Addr == o.Addr && b.Weight == o.Weight && b.Discovery == o.Discovery &&
		b.HealthService == o.HealthService && b.Routable == o.Routable && b.Status == o.Status &&
		b.Reason == o.Reason && b.EjectedUntil.Equal(o.EjectedUntil) && b.Leaving == o.Leaving &&
		equalStrings(b.Tags, o.Tags) && b.MaxInFlight == o.MaxInFlight
}

func (r *Route) same(o *Route) bool {
	if r == o {
		return true
	}
	if r.Name != o.Name || r.HealthService != o.HealthService || r.MinHealthy != o.MinHealthy ||
		r.Routable != o.Routable || r.Serving != o.Serving || r.Gone != o.Gone || len(r.Backends) != len(o.Backends) {
		return false
	}
	for i, b := range r.Backends {
		if b != o.Backends[i] && !b.same(*o.Backends[i]) {
			return false
		}
	}
	return true
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
