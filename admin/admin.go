// Package admin is the gateway's HTTP admin endpoint: liveness, readiness,
// Prometheus metrics, the backends as JSON, a live status page and,
// when enabled, pprof.
//
// The admin endpoint decides nothing: /readyz, /backends and the status page
// show the routing table (healthcheck.State), the same one the balancer and
// the gateway's own gRPC health read. Readiness (/readyz) is the table's:
// discovery has been heard from, the gateway is not draining, and its
// listener is up. A route without healthy backends is NOT_SERVING in
// /backends and the gRPC health service, and does not make the gateway
// unready: an orchestrator that pulled every replica for one broken route
// would take every route down.
package admin

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/pprof"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/healthgate/healthgate/healthcheck"
)

// Gateway is what the admin endpoint reads. The gateway implements it.
type Gateway interface {
	// State is the latest routing table; nil before the first.
	State() *healthcheck.State
	// Listening is true while the gateway's listener accepts calls.
	Listening() bool
}

// Reflector is a gateway that serves gRPC reflection of its own: /backends
// then shows, per route, what the gateway holds of its backends'
// descriptors.
type Reflector interface {
	// Reflection is, per route whose descriptors were fetched, what the
	// gateway holds.
	Reflection() map[string]ReflectionView
}

// ReflectionView is what the gateway's reflection holds for one route.
type ReflectionView struct {
	// Files is how many file descriptors the route's backends served.
	Files int `json:"files"`
	// Conflicts name each file served with two contents, and which one is
	// kept.
	Conflicts []string `json:"conflicts,omitempty"`
	// WithoutReflection are backends that do not serve reflection: the
	// route is listed without their descriptors.
	WithoutReflection []string `json:"without_reflection,omitempty"`
	// Errors are backends whose reflection failed, and why.
	Errors []string `json:"errors,omitempty"`
}

// Config of the admin handler.
type Config struct {
	// Pprof serves /debug/pprof/. Off by default: profiles are for when
	// someone asks for them.
	Pprof bool
}

//go:embed status.html
var statusPage []byte

// Handler returns the admin endpoint's handler.
func Handler(cfg Config, g Gateway, reg prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := Ready(g)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %s\n", why)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /backends", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(Snapshot(g)) //nolint:errcheck // the client went away
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(statusPage) //nolint:errcheck // the client went away
	})
	if cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// Ready is the gateway's readiness and why not.
func Ready(g Gateway) (bool, string) {
	if !g.Listening() {
		return false, "listener is not serving"
	}
	return g.State().Ready()
}

// View is the /backends document.
type View struct {
	Version  uint64      `json:"version"`
	Synced   bool        `json:"synced"`
	Draining bool        `json:"draining"`
	Ready    bool        `json:"ready"`
	Why      string      `json:"not_ready_reason,omitempty"`
	Routes   []RouteView `json:"routes"`
}

// RouteView is one route.
type RouteView struct {
	Route         string `json:"route"`
	HealthService string `json:"health_service"`
	Serving       bool   `json:"serving"`
	Routable      int    `json:"routable"`
	MinHealthy    int    `json:"min_healthy"`
	// Gone is set while a route that discovery no longer lists is kept
	// (its calls get UNAVAILABLE) for the drain grace.
	Gone     bool          `json:"gone,omitempty"`
	Backends []BackendView `json:"backends"`
	// Reflection is set once a reflection request made the gateway fetch
	// the route's descriptors (Reflector).
	Reflection *ReflectionView `json:"reflection,omitempty"`
}

// BackendView is one backend of one route.
type BackendView struct {
	Addr string `json:"addr"`
	// Discovery is the instance's status at its source: "passing",
	// "warning" or "critical" for Consul, "static" for the config file.
	Discovery string `json:"discovery"`
	Weight    int    `json:"weight"`
	// Tags are the backend's Consul tags, or its tags in the config file:
	// the subsets (match, split) it is in.
	Tags []string `json:"tags,omitempty"`
	// HealthService is the grpc.health.v1 name asked of this backend.
	HealthService string `json:"health_service"`
	// Health is the latest grpc.health.v1 status for that name.
	Health   string    `json:"health"`
	Routable bool      `json:"routable"`
	Reason   string    `json:"reason,omitempty"`
	Since    time.Time `json:"since"`
	InFlight int64     `json:"in_flight"`
	// MaxInFlight is the instance's own limit of calls at once (Consul
	// meta healthgate_max_in_flight); absent without one.
	MaxInFlight int `json:"max_in_flight,omitempty"`
	// EjectedUntil is set while passive failure detection keeps the
	// backend out.
	EjectedUntil *time.Time `json:"ejected_until,omitempty"`
	// Leaving is set while the backend drains out of the route.
	Leaving bool `json:"leaving,omitempty"`
	// Transport is how the gateway dials the backend: plaintext, tls
	// (with its server name and whether a client certificate is sent) or
	// connect (with the Consul service it must prove to be).
	Transport string `json:"transport,omitempty"`
}

// Snapshot builds the /backends document.
func Snapshot(g Gateway) View {
	v := View{Routes: []RouteView{}}
	v.Ready, v.Why = Ready(g)
	st := g.State()
	if st == nil {
		return v
	}
	v.Version, v.Synced, v.Draining = st.Version, st.Synced, st.Draining
	var refl map[string]ReflectionView
	if r, ok := g.(Reflector); ok {
		refl = r.Reflection()
	}
	for _, name := range slices.Sorted(maps.Keys(st.Routes)) {
		r := st.Routes[name]
		rv := RouteView{
			Route: name, HealthService: r.HealthService, Serving: r.Serving, Routable: r.Routable,
			MinHealthy: r.MinHealthy, Gone: r.Gone, Backends: make([]BackendView, 0, len(r.Backends)),
		}
		if rf, ok := refl[name]; ok {
			rv.Reflection = &rf
		}
		for _, b := range r.Backends {
			bv := BackendView{
				Addr: b.Addr, Discovery: b.Discovery, Weight: b.Weight, Tags: b.Tags, HealthService: b.HealthService,
				Health: b.Status.String(), Routable: b.Routable, Reason: b.Reason, Since: b.Since, Leaving: b.Leaving,
				MaxInFlight: b.MaxInFlight,
			}
			if b.Handle != nil {
				bv.InFlight = b.Handle.InFlight()
				bv.Transport = b.Handle.Transport()
			}
			if !b.EjectedUntil.IsZero() {
				until := b.EjectedUntil
				bv.EjectedUntil = &until
			}
			rv.Backends = append(rv.Backends, bv)
		}
		v.Routes = append(v.Routes, rv)
	}
	return v
}
