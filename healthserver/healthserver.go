// Package healthserver is the gateway's own grpc.health.v1 service, served on
// the listener clients call: per routed gRPC service, whether the gateway
// can reach it now, and under "" whether the gateway as a whole can route.
//
// Policy: a route is SERVING while at least its minimum of backends is
// routable (default 1). "" is SERVING while the gateway is not draining,
// discovery has been heard from, and at least one route is SERVING. The
// default route ("*") counts for "" but is not a service of its own. On
// drain every status turns NOT_SERVING at once.
package healthserver

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck"
)

// Config sets each route's minimum of routable backends; a route not listed
// needs 1.
type Config struct {
	MinHealthy map[string]int
}

// Server implements grpc.health.v1.Health.
type Server struct {
	healthpb.UnimplementedHealthServer
	log *slog.Logger

	mu sync.Mutex // guards the fields below
	// minHealthy is cfg.MinHealthy as last set.
	minHealthy map[string]int
	// last is the last state, to recompute from when minHealthy changes.
	last *healthcheck.State
	// statuses has every known service, "" included.
	statuses map[string]healthpb.HealthCheckResponse_ServingStatus
	draining bool
	// changed is closed and replaced whenever a status flips; watchers
	// wait on it and then read the latest status: updates merge, a slow
	// watcher never queues.
	changed chan struct{}
	// closed ends every Watch stream (when the listener stops).
	closed chan struct{}
}

// New returns a server that reports "" NOT_SERVING until the first Update.
func New(cfg Config, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Server{
		log: logger.With("component", "healthserver"), minHealthy: maps.Clone(cfg.MinHealthy),
		statuses: map[string]healthpb.HealthCheckResponse_ServingStatus{"": healthpb.HealthCheckResponse_NOT_SERVING},
		changed:  make(chan struct{}),
		closed:   make(chan struct{}),
	}
}

func (s *Server) minHealthyLocked(route string) int {
	if n, ok := s.minHealthy[route]; ok && n > 0 {
		return n
	}
	return 1
}

// SetMinHealthy replaces Config.MinHealthy and recomputes the statuses.
func (s *Server) SetMinHealthy(m map[string]int) {
	s.mu.Lock()
	s.minHealthy = maps.Clone(m)
	last := s.last
	s.mu.Unlock()
	if last != nil {
		s.Update(last)
	}
}

// Update recomputes the statuses from a new state; watchers hear only of
// the ones that flipped.
func (s *Server) Update(st *healthcheck.State) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last = st
	next := make(map[string]healthpb.HealthCheckResponse_ServingStatus, len(st.Routes)+1)
	anyServing := false
	for name, r := range st.Routes {
		v := healthpb.HealthCheckResponse_NOT_SERVING
		if r.Routable() >= s.minHealthyLocked(name) {
			v = healthpb.HealthCheckResponse_SERVING
			anyServing = true
		}
		if name != discovery.DefaultRoute {
			next[name] = v
		}
	}
	next[""] = healthpb.HealthCheckResponse_NOT_SERVING
	if st.Synced && anyServing {
		next[""] = healthpb.HealthCheckResponse_SERVING
	}
	if s.draining {
		for k := range next {
			next[k] = healthpb.HealthCheckResponse_NOT_SERVING
		}
	}
	s.setLocked(next)
}

func (s *Server) setLocked(next map[string]healthpb.HealthCheckResponse_ServingStatus) {
	if maps.Equal(next, s.statuses) {
		return
	}
	for k, v := range next {
		if old, ok := s.statuses[k]; !ok || old != v {
			s.log.Info("gateway health changed", "service", k, "status", v.String())
		}
	}
	for k := range s.statuses {
		if _, ok := next[k]; !ok {
			s.log.Info("gateway health changed", "service", k, "status", "SERVICE_UNKNOWN")
		}
	}
	s.statuses = next
	close(s.changed)
	s.changed = make(chan struct{})
}

// Shutdown turns every status NOT_SERVING for good: the gateway is draining.
func (s *Server) Shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining = true
	next := maps.Clone(s.statuses)
	for k := range next {
		next[k] = healthpb.HealthCheckResponse_NOT_SERVING
	}
	s.setLocked(next)
}

// Close ends every Watch stream, so that a graceful stop of the server does
// not wait on them; call it after Shutdown, when the listener stops.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closed:
	default:
		close(s.closed)
	}
}

func (s *Server) get(svc string) (healthpb.HealthCheckResponse_ServingStatus, bool, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.statuses[svc]
	return v, ok, s.changed
}

// Check answers NOT_FOUND for a service the gateway does not route.
func (s *Server) Check(_ context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	v, ok, _ := s.get(req.GetService())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "healthgate: unknown service %q", req.GetService())
	}
	return &healthpb.HealthCheckResponse{Status: v}, nil
}

// List returns every routed service and "".
func (s *Server) List(context.Context, *healthpb.HealthListRequest) (*healthpb.HealthListResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := &healthpb.HealthListResponse{Statuses: make(map[string]*healthpb.HealthCheckResponse, len(s.statuses))}
	for _, k := range slices.Sorted(maps.Keys(s.statuses)) {
		out.Statuses[k] = &healthpb.HealthCheckResponse{Status: s.statuses[k]}
	}
	return out, nil
}

// Watch sends the service's status now and each time it changes; a service
// the gateway does not route is SERVICE_UNKNOWN until it appears.
func (s *Server) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	svc := req.GetService()
	last := healthpb.HealthCheckResponse_ServingStatus(-1)
	for {
		v, ok, changed := s.get(svc)
		if !ok {
			v = healthpb.HealthCheckResponse_SERVICE_UNKNOWN
		}
		if v != last {
			if err := stream.Send(&healthpb.HealthCheckResponse{Status: v}); err != nil {
				return err
			}
			last = v
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		case <-s.closed:
			return status.Error(codes.Unavailable, "healthgate: shutting down")
		}
	}
}
