// Package healthserver is the gateway's own grpc.health.v1 service, served on
// the listener clients call: per routed gRPC service, whether the gateway
// can reach it now, and under "" whether the gateway as a whole can route.
//
// It reports the routing table (healthcheck.State) and decides nothing: a
// route is SERVING while the table says so (its minimum of backends is
// routable and the gateway is not draining), and "" is SERVING while the
// gateway is ready (discovery has been heard from, not draining), the same
// answer as the admin endpoint's /readyz. A route without healthy backends
// is NOT_SERVING on its own; it does not take "" down. The default route
// ("*") is not a service of its own.
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

// Server implements grpc.health.v1.Health.
type Server struct {
	healthpb.UnimplementedHealthServer
	log *slog.Logger

	mu sync.Mutex // guards the fields below
	// statuses has every known service, "" included.
	statuses map[string]healthpb.HealthCheckResponse_ServingStatus
	// changed is closed and replaced whenever a status flips; watchers
	// wait on it and then read the latest status: updates merge, a slow
	// watcher never queues.
	changed chan struct{}
	// closed ends every Watch stream (when the listener stops).
	closed chan struct{}
}

// New returns a server that reports "" NOT_SERVING until the first Update.
func New(logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Server{
		log:      logger.With("component", "healthserver"),
		statuses: map[string]healthpb.HealthCheckResponse_ServingStatus{"": healthpb.HealthCheckResponse_NOT_SERVING},
		changed:  make(chan struct{}),
		closed:   make(chan struct{}),
	}
}

// Update follows a new routing table; watchers hear only of the statuses
// that flipped. Nothing is decided here: a route is what the table says it
// is, and "" is the table's readiness.
func (s *Server) Update(st *healthcheck.State) {
	next := make(map[string]healthpb.HealthCheckResponse_ServingStatus, len(st.Routes)+1)
	for name, r := range st.Routes {
		if name == discovery.DefaultRoute {
			continue
		}
		next[name] = servingStatus(r.Serving)
	}
	ready, _ := st.Ready()
	next[""] = servingStatus(ready)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLocked(next)
}

func servingStatus(ok bool) healthpb.HealthCheckResponse_ServingStatus {
	if ok {
		return healthpb.HealthCheckResponse_SERVING
	}
	return healthpb.HealthCheckResponse_NOT_SERVING
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

// Close ends every Watch stream, so that a graceful stop of the server does
// not wait on them; call it when the listener stops.
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
