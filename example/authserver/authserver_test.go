package authserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/healthgate/healthgate/example/authpb"
	"github.com/healthgate/healthgate/example/authserver"
)

// testTimeout bounds every wait; it only matters when a test is failing.
const testTimeout = 10 * time.Second

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startServer runs a backend on free local ports until the test ends and
// fails the test if Run does not return cleanly.
func startServer(t *testing.T, cfg authserver.Config) *authserver.Server {
	t.Helper()
	if cfg.GRPCAddr == "" {
		cfg.GRPCAddr = "127.0.0.1:0"
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	cfg.Logger = testLogger(t)
	srv, err := authserver.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(testTimeout):
			t.Errorf("Run did not return within %s of cancel", testTimeout)
		}
	})
	return srv
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// tWriter routes server logs into the test log so they show only on failure
// or with -v.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient(%s): %v", addr, err)
	}
	// Registered after startServer's cleanup, so it runs first: an open
	// Watch stream would otherwise hold GracefulStop until its bound.
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: testTimeout}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

func TestLogin(t *testing.T) {
	tests := []struct {
		name        string
		req         *authpb.LoginRequest
		wantMessage string
		wantUser    *authpb.User
		wantServing bool
	}{
		{
			name:        "empty password",
			req:         &authpb.LoginRequest{Email: "admin@admin.com"},
			wantMessage: "email and password must not be empty",
			wantServing: true,
		},
		{
			name:        "empty email",
			req:         &authpb.LoginRequest{Password: "123456"},
			wantMessage: "email and password must not be empty",
			wantServing: true,
		},
		{
			name:        "success",
			req:         &authpb.LoginRequest{Email: "admin@admin.com", Password: "123456"},
			wantMessage: "success",
			wantUser: &authpb.User{
				Id:       1,
				Email:    "admin@admin.com",
				Username: "admin",
				Avatar:   "https://github.com/identicons/meshell.png",
			},
			wantServing: true,
		},
		{
			name:        "wrong password",
			req:         &authpb.LoginRequest{Email: "admin@admin.com", Password: "nope"},
			wantMessage: "wrong email or password",
			wantServing: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, authserver.Config{})
			client := authpb.NewAuthorizationClient(dial(t, srv.GRPCAddr()))
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()

			var header metadata.MD
			resp, err := client.Login(ctx, tt.req, grpc.Header(&header))
			if err != nil {
				t.Fatalf("Login: %v", err)
			}
			if resp.GetMessage() != tt.wantMessage {
				t.Errorf("message = %q, want %q", resp.GetMessage(), tt.wantMessage)
			}
			if !proto.Equal(resp.GetUser(), tt.wantUser) {
				t.Errorf("user = %v, want %v", resp.GetUser(), tt.wantUser)
			}
			if got := header.Get(authserver.BackendHeader); len(got) != 1 || got[0] != srv.GRPCAddr() {
				t.Errorf("%s header = %q, want [%q]", authserver.BackendHeader, got, srv.GRPCAddr())
			}
			if got := srv.Serving(); got != tt.wantServing {
				t.Errorf("Serving() = %v, want %v", got, tt.wantServing)
			}
		})
	}
}

// watcher delivers a Watch stream's statuses on a channel so tests can wait
// for a status with a deadline instead of sleeping.
type watcher struct {
	statuses <-chan healthpb.HealthCheckResponse_ServingStatus
	cancel   context.CancelFunc
	done     <-chan struct{}
}

func watch(t *testing.T, conn *grpc.ClientConn, service string) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		cancel()
		t.Fatalf("Watch(%q): %v", service, err)
	}
	statuses := make(chan healthpb.HealthCheckResponse_ServingStatus)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(statuses)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case statuses <- resp.GetStatus():
			case <-ctx.Done():
				return
			}
		}
	}()
	w := &watcher{statuses: statuses, cancel: cancel, done: done}
	t.Cleanup(w.stop)
	return w
}

func (w *watcher) stop() {
	w.cancel()
	<-w.done
}

// waitFor consumes statuses until want arrives. Intermediate statuses are
// skipped because the health server may coalesce or repeat updates.
func (w *watcher) waitFor(t *testing.T, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	for {
		select {
		case got, ok := <-w.statuses:
			if !ok {
				t.Fatalf("watch stream ended while waiting for %v", want)
			}
			if got == want {
				return
			}
		case <-ctx.Done():
			t.Fatalf("no %v within %s", want, testTimeout)
		}
	}
}

func checkStatus(t *testing.T, conn *grpc.ClientConn, service string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatalf("Check(%q): %v", service, err)
	}
	return resp.GetStatus()
}

func TestWrongPasswordFlipsHealthAndUpdateRestores(t *testing.T) {
	srv := startServer(t, authserver.Config{})
	conn := dial(t, srv.GRPCAddr())
	w := watch(t, conn, authserver.HealthService)
	w.waitFor(t, healthpb.HealthCheckResponse_SERVING)

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	resp, err := authpb.NewAuthorizationClient(conn).Login(ctx, &authpb.LoginRequest{Email: "x@y.z", Password: "bad"})
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	if resp.GetMessage() != "wrong email or password" {
		t.Fatalf("message = %q", resp.GetMessage())
	}
	w.waitFor(t, healthpb.HealthCheckResponse_NOT_SERVING)

	// Liveness must not follow the service status, or Consul would drop a
	// backend that only refuses logins.
	if got := checkStatus(t, conn, ""); got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf(`Check("") = %v, want SERVING`, got)
	}
	if code, body := httpGet(t, "http://"+srv.HTTPAddr()+"/status"); code != http.StatusOK || body != "NOT_SERVING\n" {
		t.Errorf("/status = %d %q, want 200 %q", code, body, "NOT_SERVING\n")
	}

	code, body := httpGet(t, "http://"+srv.HTTPAddr()+"/update")
	if code != http.StatusOK || body != "update success\n" {
		t.Fatalf("/update = %d %q, want 200 %q", code, body, "update success\n")
	}
	w.waitFor(t, healthpb.HealthCheckResponse_SERVING)
	if !srv.Serving() {
		t.Error("Serving() = false after /update")
	}
	if code, body := httpGet(t, "http://"+srv.HTTPAddr()+"/status"); code != http.StatusOK || body != "SERVING\n" {
		t.Errorf("/status = %d %q, want 200 %q", code, body, "SERVING\n")
	}
}

func TestUpdateMethods(t *testing.T) {
	srv := startServer(t, authserver.Config{})
	srv.SetServing(false)
	url := "http://" + srv.HTTPAddr() + "/update"

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: testTimeout}

	req, err := http.NewRequest(http.MethodDelete, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("DELETE /update: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("DELETE /update = %d, want 405", resp.StatusCode)
	}
	if srv.Serving() {
		t.Error("DELETE /update flipped the status")
	}

	resp, err = client.Post(url, "text/plain", nil)
	if err != nil {
		t.Fatalf("POST /update: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !srv.Serving() {
		t.Errorf("POST /update = %d, serving %v; want 200, true", resp.StatusCode, srv.Serving())
	}
}

func TestRunStopReportsNotServing(t *testing.T) {
	srv, err := authserver.New(authserver.Config{GRPCAddr: "127.0.0.1:0", Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if srv.HTTPAddr() != "" {
		t.Errorf("HTTPAddr() = %q without HTTPAddr config", srv.HTTPAddr())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	conn := dial(t, srv.GRPCAddr())
	w := watch(t, conn, "")
	w.waitFor(t, healthpb.HealthCheckResponse_SERVING)

	cancel()
	// A gateway watching liveness must learn about the stop before the
	// connection goes away.
	w.waitFor(t, healthpb.HealthCheckResponse_NOT_SERVING)
	// Ending the watch is what lets GracefulStop finish before its bound.
	w.stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Run did not return after cancel")
	}
	if srv.Serving() {
		t.Error("Serving() = true after Run returned")
	}
	srv.SetServing(true)
	if srv.Serving() {
		t.Error("SetServing(true) took effect after Run returned")
	}
	if err := srv.Run(context.Background()); err == nil {
		t.Error("second Run returned nil, want error")
	}
}

func TestCloseReleasesListeners(t *testing.T) {
	srv, err := authserver.New(authserver.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, addr := range []string{srv.GRPCAddr(), srv.HTTPAddr()} {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("listen on %s after Close: %v", addr, err)
			continue
		}
		lis.Close()
	}
	if err := srv.Run(context.Background()); err == nil {
		t.Error("Run after Close returned nil, want error")
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     authserver.Config
		wantErr string
	}{
		{name: "minimal", cfg: authserver.Config{GRPCAddr: "127.0.0.1:0"}},
		{name: "wildcard without consul", cfg: authserver.Config{GRPCAddr: ":8080"}},
		{name: "full", cfg: authserver.Config{GRPCAddr: "10.0.0.1:8080", HTTPAddr: "127.0.0.1:8082", ConsulAddr: "127.0.0.1:8500", ServiceID: "auth-1", CheckInterval: time.Second}},
		{name: "missing grpc", cfg: authserver.Config{}, wantErr: "grpc address is required"},
		{name: "bad grpc", cfg: authserver.Config{GRPCAddr: "localhost"}, wantErr: `grpc address "localhost"`},
		{name: "bad http", cfg: authserver.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "8082"}, wantErr: `http address "8082"`},
		{name: "wildcard with consul", cfg: authserver.Config{GRPCAddr: ":8080", ConsulAddr: "127.0.0.1:8500"}, wantErr: "concrete address"},
		{name: "unspecified with consul", cfg: authserver.Config{GRPCAddr: "0.0.0.0:8080", ConsulAddr: "127.0.0.1:8500"}, wantErr: "concrete address"},
		{name: "negative interval", cfg: authserver.Config{GRPCAddr: "127.0.0.1:0", CheckInterval: -time.Second}, wantErr: "must not be negative"},
		{name: "slash in id", cfg: authserver.Config{GRPCAddr: "127.0.0.1:0", ServiceID: "a/b"}, wantErr: "must not contain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

// fakeConsul records the agent API calls Run makes. The real agent is not
// needed to check what is registered and when it is deregistered.
type fakeConsul struct {
	*httptest.Server
	registerStatus int

	mu         sync.Mutex
	registered *consul.AgentServiceRegistration
	// servingAtDeregister is the backend's status when deregistration
	// arrived, to check that discovery goes before NOT_SERVING.
	servingAtDeregister *bool
	deregisteredID      string
	registeredCh        chan struct{}
	deregistered        chan struct{}
}

func newFakeConsul(t *testing.T, registerStatus int, serving func() bool) *fakeConsul {
	f := &fakeConsul{
		registerStatus: registerStatus,
		registeredCh:   make(chan struct{}),
		deregistered:   make(chan struct{}),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/agent/service/register", func(w http.ResponseWriter, r *http.Request) {
		var reg consul.AgentServiceRegistration
		if err := json.NewDecoder(r.Body).Decode(&reg); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		first := f.registered == nil
		f.registered = &reg
		f.mu.Unlock()
		w.WriteHeader(f.registerStatus)
		if first {
			close(f.registeredCh)
		}
	})
	mux.HandleFunc("PUT /v1/agent/service/deregister/{id}", func(w http.ResponseWriter, r *http.Request) {
		s := serving()
		f.mu.Lock()
		f.deregisteredID = r.PathValue("id")
		f.servingAtDeregister = &s
		f.mu.Unlock()
		close(f.deregistered)
	})
	f.Server = httptest.NewServer(mux)
	t.Cleanup(f.Close)
	return f
}

func TestConsulRegistration(t *testing.T) {
	var srv *authserver.Server
	var srvMu sync.Mutex
	fake := newFakeConsul(t, http.StatusOK, func() bool {
		srvMu.Lock()
		defer srvMu.Unlock()
		return srv.Serving()
	})

	s, err := authserver.New(authserver.Config{
		GRPCAddr:      "127.0.0.1:0",
		ConsulAddr:    fake.URL,
		CheckInterval: 2 * time.Second,
		Logger:        testLogger(t),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srvMu.Lock()
	srv = s
	srvMu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	var reg *consul.AgentServiceRegistration
	select {
	case <-fake.registeredCh:
		fake.mu.Lock()
		reg = fake.registered
		fake.mu.Unlock()
	case <-time.After(testTimeout):
		t.Fatal("no registration within deadline")
	}

	_, port, _ := net.SplitHostPort(s.GRPCAddr())
	wantID := "auth-127.0.0.1-" + port
	if reg.Name != "auth" || reg.ID != wantID || s.ServiceID() != wantID {
		t.Errorf("name, id = %q, %q (ServiceID %q); want auth, %q", reg.Name, reg.ID, s.ServiceID(), wantID)
	}
	if reg.Address != "127.0.0.1" || net.JoinHostPort(reg.Address, strconv.Itoa(reg.Port)) != s.GRPCAddr() {
		t.Errorf("address = %s:%d, want %s", reg.Address, reg.Port, s.GRPCAddr())
	}
	if len(reg.Tags) != 1 || reg.Tags[0] != "healthgate.route=example.auth.v1.Authorization" {
		t.Errorf("tags = %q", reg.Tags)
	}
	c := reg.Check
	if c == nil {
		t.Fatal("no check registered")
	}
	if c.GRPC != s.GRPCAddr() || c.Interval != "2s" || c.Timeout != "1s" || c.DeregisterCriticalServiceAfter != "1m" {
		t.Errorf("check = grpc %q interval %q timeout %q deregister %q", c.GRPC, c.Interval, c.Timeout, c.DeregisterCriticalServiceAfter)
	}
	if _, ok := reg.Meta[authserver.MetaTLS]; ok || c.GRPCUseTLS {
		t.Errorf("plaintext backend registered meta %v, check TLS %v; want neither", reg.Meta, c.GRPCUseTLS)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Run did not return after cancel")
	}
	select {
	case <-fake.deregistered:
	default:
		t.Fatal("Run returned without deregistering")
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if fake.deregisteredID != wantID {
		t.Errorf("deregistered %q, want %q", fake.deregisteredID, wantID)
	}
	if !*fake.servingAtDeregister {
		t.Error("backend was NOT_SERVING before it left Consul; deregistration must come first")
	}
}

func TestConsulRegistrationErrorIsReturned(t *testing.T) {
	fake := newFakeConsul(t, http.StatusForbidden, func() bool { return true })
	srv, err := authserver.New(authserver.Config{
		GRPCAddr:   "127.0.0.1:0",
		HTTPAddr:   "127.0.0.1:0",
		ConsulAddr: fake.URL,
		Logger:     testLogger(t),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	err = srv.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "register service") {
		t.Fatalf("Run = %v, want a register error", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Run waited for the context instead of failing fast")
	}
	var statusErr consul.StatusError
	if !errors.As(err, &statusErr) || statusErr.Code != http.StatusForbidden {
		t.Errorf("Run error %v does not wrap the 403 from consul", err)
	}
}
