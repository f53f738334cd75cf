// Package authserver runs one example backend for healthgate: the login
// service from the well-known gRPC health checking article. A failed login
// flips the backend to NOT_SERVING and an HTTP /update flips it back, which
// gives the gateway's health watch something to react to. It is a library so
// that tests can run backends in-process and cmd/example-backend can wrap it.
package authserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	consul "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"

	"github.com/healthgate/healthgate/example/authpb"
)

const (
	// HealthService is the grpc.health.v1 service name whose status flips.
	// The overall "" status is left SERVING while the process runs because
	// it is the liveness that Consul checks: a backend that merely refuses
	// logins must stay registered so the gateway can see it come back.
	HealthService = "example.auth.v1.Authorization"

	// BackendHeader is the response header naming the backend that answered,
	// so a client behind the gateway can tell the backends apart.
	BackendHeader = "x-backend"

	// RouteTag is the Consul tag that tells healthgate which gRPC service
	// this backend serves.
	RouteTag = "healthgate.route=" + HealthService
)

// The article's hard-coded account.
const (
	adminEmail    = "admin@admin.com"
	adminPassword = "123456"
)

// Shutdown bounds: long enough for in-flight logins, short enough that a
// client still holding a health Watch stream (which never ends on its own)
// does not keep the process alive.
const (
	gracefulStopTimeout = 5 * time.Second
	httpShutdownTimeout = 5 * time.Second
	consulTimeout       = 5 * time.Second
)

type runState int

const (
	stateNew runState = iota
	stateRunning
	stateDone
)

// Server is one example backend. Create it with New, then call Run once.
type Server struct {
	cfg      Config
	log      *slog.Logger
	grpcAddr string
	httpAddr string
	// host and port are what Consul advertises and checks.
	host string
	port int

	grpcLis net.Listener
	httpLis net.Listener // nil without HTTPAddr
	grpcSrv *grpc.Server
	httpSrv *http.Server // nil without HTTPAddr
	health  *health.Server

	consul  *consul.Client // nil without ConsulAddr
	connect *connectNative // nil unless ConnectNative

	mu      sync.Mutex
	serving bool
	state   runState
}

// New validates cfg and binds the listeners, so the addresses are known
// (and port 0 resolved) before Run. Call Run or Close to release them.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()

	var lc net.ListenConfig
	grpcLis, err := lc.Listen(context.Background(), "tcp", cfg.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("listen grpc on %s: %w", cfg.GRPCAddr, err)
	}
	s := &Server{
		cfg:      cfg,
		grpcLis:  grpcLis,
		grpcAddr: grpcLis.Addr().String(),
		health:   health.NewServer(),
		serving:  true,
	}
	fail := func(err error) (*Server, error) {
		s.closeListeners()
		return nil, err
	}

	// Advertise the configured host (it may be a name) with the bound port.
	host, _, _ := net.SplitHostPort(cfg.GRPCAddr)
	_, portStr, err := net.SplitHostPort(s.grpcAddr)
	if err != nil {
		return fail(fmt.Errorf("parse bound grpc address %s: %w", s.grpcAddr, err))
	}
	if s.port, err = strconv.Atoi(portStr); err != nil {
		return fail(fmt.Errorf("parse bound grpc port %s: %w", portStr, err))
	}
	s.host = host
	if s.cfg.ServiceID == "" {
		s.cfg.ServiceID = fmt.Sprintf("%s-%s-%d", cfg.ServiceName, host, s.port)
	}
	s.log = cfg.Logger.With("grpc_addr", s.grpcAddr)

	if cfg.HTTPAddr != "" {
		s.httpLis, err = lc.Listen(context.Background(), "tcp", cfg.HTTPAddr)
		if err != nil {
			return fail(fmt.Errorf("listen http on %s: %w", cfg.HTTPAddr, err))
		}
		s.httpAddr = s.httpLis.Addr().String()
		s.httpSrv = &http.Server{
			Handler:           s.httpHandler(),
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		}
	}

	if cfg.ConsulAddr != "" {
		// Non-pooled: two requests per lifetime do not need keep-alive, and
		// no idle-connection goroutines outlive Run.
		ccfg := consul.DefaultNonPooledConfig()
		ccfg.Address = cfg.ConsulAddr
		if cfg.ConsulToken != "" {
			ccfg.Token = cfg.ConsulToken
		}
		if s.consul, err = consul.NewClient(ccfg); err != nil {
			return fail(fmt.Errorf("create consul client for %s: %w", cfg.ConsulAddr, err))
		}
	}

	var opts []grpc.ServerOption
	if cfg.ConnectNative {
		s.connect = newConnectNative(cfg, s.consul)
		opts = s.connect.serverOptions()
	}
	if cfg.TLS != nil {
		opt, err := cfg.TLS.serverOption()
		if err != nil {
			return fail(err)
		}
		opts = append(opts, opt)
	}
	s.grpcSrv = grpc.NewServer(opts...)
	authpb.RegisterAuthorizationServer(s.grpcSrv, &authService{s: s})
	healthpb.RegisterHealthServer(s.grpcSrv, s.health)
	// So that grpcurl can list, describe and call it by name, directly
	// or through the gateway, which merges its routes' reflection.
	reflection.Register(s.grpcSrv)
	s.health.SetServingStatus(HealthService, healthpb.HealthCheckResponse_SERVING)
	return s, nil
}

// GRPCAddr returns the bound gRPC address (port 0 resolved).
func (s *Server) GRPCAddr() string { return s.grpcAddr }

// HTTPAddr returns the bound HTTP address, or "" without an HTTP server.
func (s *Server) HTTPAddr() string { return s.httpAddr }

// ServiceID returns the Consul service ID, defaulted if Config left it empty.
func (s *Server) ServiceID() string { return s.cfg.ServiceID }

// SetServing sets the HealthService status. It is ignored once Run has begun
// shutting down, so a late call cannot advertise a stopping backend.
func (s *Server) SetServing(serving bool) { s.setServing(serving, "api") }

// Serving reports the current HealthService status.
func (s *Server) Serving() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.serving
}

func (s *Server) setServing(serving bool, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == stateDone || s.serving == serving {
		return
	}
	s.serving = serving
	// Under mu so that concurrent flips reach the health server in the same
	// order as they update s.serving.
	s.health.SetServingStatus(HealthService, servingStatus(serving))
	s.log.Info("status changed", "serving", serving, "reason", reason)
}

func servingStatus(serving bool) healthpb.HealthCheckResponse_ServingStatus {
	if serving {
		return healthpb.HealthCheckResponse_SERVING
	}
	return healthpb.HealthCheckResponse_NOT_SERVING
}

// Close releases the listeners of a Server whose Run was never called. It is
// a no-op once Run has been called, since Run owns them then.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != stateNew {
		return nil
	}
	s.state = stateDone
	s.serving = false
	s.health.Shutdown()
	return s.closeListeners()
}

func (s *Server) closeListeners() error {
	var errs []error
	if s.grpcLis != nil {
		if err := s.grpcLis.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close grpc listener: %w", err))
		}
	}
	if s.httpLis != nil {
		if err := s.httpLis.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close http listener: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Run serves gRPC and HTTP, registers in Consul if configured, and blocks
// until ctx is cancelled or a server fails. It then deregisters, reports
// NOT_SERVING, stops the servers within a bound and returns once every
// goroutine it started has finished. A cancelled ctx is a clean stop and
// returns nil. Run may be called only once.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.state != stateNew {
		s.mu.Unlock()
		return errors.New("authserver: run called on a server that was already run or closed")
	}
	s.state = stateRunning
	s.mu.Unlock()

	// Buffered so that a server failing after we stopped listening for
	// failures never blocks its goroutine.
	serveErr := make(chan error, 2)
	var wg sync.WaitGroup
	connectCtx, stopConnect := context.WithCancel(context.WithoutCancel(ctx))
	if s.connect != nil {
		// Until the servers have stopped: a handshake may wait for the
		// first certificate.
		wg.Go(func() { s.connect.ca.Run(connectCtx) })
	}
	wg.Go(func() {
		// ErrServerStopped means shutdown won the race with Serve, which is
		// not a failure.
		if err := s.grpcSrv.Serve(s.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			serveErr <- fmt.Errorf("serve grpc on %s: %w", s.grpcAddr, err)
		}
	})
	if s.httpSrv != nil {
		wg.Go(func() {
			if err := s.httpSrv.Serve(s.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				serveErr <- fmt.Errorf("serve http on %s: %w", s.httpAddr, err)
			}
		})
	}
	s.log.Info("backend started", "http_addr", s.httpAddr)

	var runErr error
	registered := false
	if s.consul != nil {
		// Registered after Serve started so Consul's first check finds a
		// live server instead of marking the backend critical.
		if err := s.register(ctx); err != nil {
			if ctx.Err() == nil {
				runErr = err
			} else {
				// Cancelled mid-request: the agent may have applied it.
				registered = true
			}
		} else {
			registered = true
		}
	}
	if runErr == nil {
		select {
		case <-ctx.Done():
		case runErr = <-serveErr:
		}
	}

	s.shutdown(ctx, registered)
	stopConnect()
	wg.Wait()
	close(serveErr)
	for err := range serveErr {
		runErr = errors.Join(runErr, err)
	}
	s.log.Info("backend stopped")
	return runErr
}

// shutdown runs the stop sequence in the order a load balancer needs:
// disappear from discovery, report NOT_SERVING to open health watches, let
// in-flight RPCs finish, then stop HTTP.
func (s *Server) shutdown(ctx context.Context, registered bool) {
	// ctx is usually already cancelled here; keep its values, not its end.
	base := context.WithoutCancel(ctx)

	if registered {
		dctx, cancel := context.WithTimeout(base, consulTimeout)
		err := s.consul.Agent().ServiceDeregisterOpts(s.cfg.ServiceID, (&consul.QueryOptions{}).WithContext(dctx))
		cancel()
		if err != nil {
			// Not fatal: the check goes critical once we stop and
			// DeregisterCriticalServiceAfter removes the entry.
			s.log.Warn("deregister from consul failed", "service_id", s.cfg.ServiceID, "err", err)
		} else {
			s.log.Info("deregistered from consul", "service_id", s.cfg.ServiceID)
		}
	}

	s.mu.Lock()
	s.state = stateDone
	if s.serving {
		s.serving = false
		s.log.Info("status changed", "serving", false, "reason", "shutdown")
	}
	// Shutdown also turns "" NOT_SERVING and ignores later updates, so a
	// login racing with the stop cannot mark the backend SERVING again.
	s.health.Shutdown()
	s.mu.Unlock()

	if d := s.cfg.DrainDelay; d > 0 {
		// Calls picked for this backend before the NOT_SERVING reached the
		// balancer are still on their way; GracefulStop would refuse them.
		s.log.Info("draining", "delay", d)
		t := time.NewTimer(d)
		<-t.C
	}

	stopped := make(chan struct{})
	go func() {
		s.grpcSrv.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(gracefulStopTimeout)
	select {
	case <-stopped:
		timer.Stop()
	case <-timer.C:
		// Health Watch streams never end on their own, so a watching client
		// always lands here; Stop cancels them and unblocks GracefulStop.
		s.log.Info("graceful stop timed out, forcing", "timeout", gracefulStopTimeout)
		s.grpcSrv.Stop()
		<-stopped
	}

	if s.httpSrv != nil {
		hctx, cancel := context.WithTimeout(base, httpShutdownTimeout)
		err := s.httpSrv.Shutdown(hctx)
		cancel()
		if err != nil {
			s.log.Warn("http shutdown timed out, closing", "err", err)
			_ = s.httpSrv.Close()
		}
	}
}

func (s *Server) register(ctx context.Context) error {
	reg := &consul.AgentServiceRegistration{
		ID:      s.cfg.ServiceID,
		Name:    s.cfg.ServiceName,
		Address: s.host,
		Port:    s.port,
		Tags:    []string{RouteTag},
		Check: &consul.AgentServiceCheck{
			// No "/service" suffix: the check probes "", the liveness
			// status, not HealthService which flips on failed logins.
			GRPC:                           net.JoinHostPort(s.host, strconv.Itoa(s.port)),
			Interval:                       s.cfg.CheckInterval.String(),
			Timeout:                        "1s",
			DeregisterCriticalServiceAfter: "1m",
			// The server is already serving when it registers: starting
			// critical would only keep it out of rotation until the first
			// check, up to an interval later.
			Status: consul.HealthPassing,
		},
	}
	if s.connect != nil {
		reg.Connect = &consul.AgentServiceConnect{Native: true}
		// A Connect certificate names no host: the check asks only
		// whether the backend answers, over TLS.
		reg.Check.GRPCUseTLS = true
		reg.Check.TLSSkipVerify = true
	}
	if s.cfg.TLS != nil {
		s.cfg.TLS.register(reg)
	}
	rctx, cancel := context.WithTimeout(ctx, consulTimeout)
	defer cancel()
	if err := s.consul.Agent().ServiceRegisterOpts(reg, consul.ServiceRegisterOpts{}.WithContext(rctx)); err != nil {
		return fmt.Errorf("register service %s in consul at %s: %w", s.cfg.ServiceID, s.cfg.ConsulAddr, err)
	}
	s.log.Info("registered in consul", "service", s.cfg.ServiceName, "service_id", s.cfg.ServiceID)
	return nil
}

func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	update := func(w http.ResponseWriter, r *http.Request) {
		s.setServing(true, "http update")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = fmt.Fprint(w, "update success\n")
	}
	mux.HandleFunc("GET /update", update)
	mux.HandleFunc("POST /update", update)
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = fmt.Fprintln(w, servingStatus(s.Serving()).String())
	})
	return mux
}

type authService struct {
	authpb.UnimplementedAuthorizationServer
	s *Server
}

// Login keeps the article's semantics: bad input is a message, not an error,
// and a wrong password flips this backend to NOT_SERVING.
func (a *authService) Login(ctx context.Context, req *authpb.LoginRequest) (*authpb.LoginResponse, error) {
	md := metadata.Pairs(BackendHeader, a.s.grpcAddr)
	if t := peerTLS(ctx); t != "" {
		md.Append(BackendTLSHeader, t)
	}
	if err := grpc.SetHeader(ctx, md); err != nil {
		return nil, fmt.Errorf("set %s header: %w", BackendHeader, err)
	}
	switch {
	case req.GetEmail() == "" || req.GetPassword() == "":
		return &authpb.LoginResponse{Message: "email and password must not be empty"}, nil
	case req.GetEmail() == adminEmail && req.GetPassword() == adminPassword:
		return &authpb.LoginResponse{
			Message: "success",
			User: &authpb.User{
				Id:       1,
				Email:    adminEmail,
				Username: "admin",
				Avatar:   "https://github.com/identicons/meshell.png",
			},
		}, nil
	default:
		a.s.setServing(false, "wrong email or password")
		return &authpb.LoginResponse{Message: "wrong email or password"}, nil
	}
}
