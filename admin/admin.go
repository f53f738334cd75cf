// Package admin is the gateway's HTTP admin endpoint: liveness, readiness,
// Prometheus metrics, the backends as JSON, a live status page and,
// when enabled, pprof.
//
// Readiness policy (/readyz): ready while discovery has been heard from at
// least once, the gateway is not draining, and every route has at least its
// minimum of routable backends. A gateway with no route is not ready.
package admin

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/pprof"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/healthgate/healthgate/healthcheck"
)

// Gateway is what the admin endpoint reads. The gateway implements it.
type Gateway interface {
	// State is the latest published state; nil before the first.
	State() *healthcheck.State
	// Draining is true once the gateway has started to shut down.
	Draining() bool
	// MinHealthy is the routable backends a route needs to be SERVING.
	MinHealthy(route string) int
	// InFlight counts the calls in flight on a backend's connection.
	InFlight(conn *grpc.ClientConn) int64
	// EjectedUntil is when passive failure detection lets the backend
	// take calls again; zero when it is not ejected.
	EjectedUntil(conn *grpc.ClientConn) time.Time
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

// Ready applies the readiness policy and says why not.
func Ready(g Gateway) (bool, string) {
	if g.Draining() {
		return false, "draining"
	}
	st := g.State()
	if st == nil || !st.Synced {
		return false, "discovery has not synced yet"
	}
	if len(st.Routes) == 0 {
		return false, "no routes"
	}
	var short []string
	for _, name := range slices.Sorted(maps.Keys(st.Routes)) {
		r := st.Routes[name]
		if n, want := r.Routable(), g.MinHealthy(name); n < want {
			short = append(short, fmt.Sprintf("%s has %d of %d routable backends", name, n, want))
		}
	}
	if len(short) > 0 {
		return false, strings.Join(short, "; ")
	}
	return true, ""
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
	Route         string        `json:"route"`
	HealthService string        `json:"health_service"`
	Serving       bool          `json:"serving"`
	Routable      int           `json:"routable"`
	MinHealthy    int           `json:"min_healthy"`
	Backends      []BackendView `json:"backends"`
}

// BackendView is one backend of one route.
type BackendView struct {
	Addr string `json:"addr"`
	// Discovery is the instance's status at its source: "passing",
	// "warning" or "critical" for Consul, "static" for the config file.
	Discovery string `json:"discovery"`
	Weight    int    `json:"weight"`
	// Health is the latest grpc.health.v1 status for the route's health
	// service.
	Health   string    `json:"health"`
	Routable bool      `json:"routable"`
	Reason   string    `json:"reason,omitempty"`
	Since    time.Time `json:"since"`
	InFlight int64     `json:"in_flight"`
	// EjectedUntil is set while passive failure detection keeps the
	// backend out.
	EjectedUntil *time.Time `json:"ejected_until,omitempty"`
}

// Snapshot builds the /backends document.
func Snapshot(g Gateway) View {
	v := View{Draining: g.Draining(), Routes: []RouteView{}}
	v.Ready, v.Why = Ready(g)
	st := g.State()
	if st == nil {
		return v
	}
	v.Version, v.Synced = st.Version, st.Synced
	for _, name := range slices.Sorted(maps.Keys(st.Routes)) {
		r := st.Routes[name]
		rv := RouteView{Route: name, HealthService: r.HealthService, Routable: r.Routable(), MinHealthy: g.MinHealthy(name), Backends: []BackendView{}}
		rv.Serving = rv.Routable >= rv.MinHealthy && !v.Draining
		for _, b := range r.Backends {
			bv := BackendView{
				Addr: b.Addr, Discovery: b.Discovery, Weight: b.Weight, Health: b.Status.String(),
				Routable: b.Routable, Reason: b.Reason, Since: b.Since, InFlight: g.InFlight(b.Conn),
			}
			if until := g.EjectedUntil(b.Conn); !until.IsZero() {
				bv.EjectedUntil = &until
				if bv.Routable {
					bv.Routable = false
					bv.Reason = "ejected: calls kept ending UNAVAILABLE"
				}
			}
			rv.Backends = append(rv.Backends, bv)
		}
		v.Routes = append(v.Routes, rv)
	}
	return v
}
