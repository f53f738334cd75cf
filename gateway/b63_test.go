package gateway_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/example/authpb"
	"github.com/healthgate/healthgate/example/authserver"
	"github.com/healthgate/healthgate/healthcheck/healthcheckcfg"
	"github.com/healthgate/healthgate/internal/testutil"
)

// connectBackend runs the example Login backend as a Connect-native
// service named "login", registered in consul.
func connectBackend(t *testing.T, consul *testutil.Consul, id string) *authserver.Server {
	t.Helper()
	srv, err := authserver.New(authserver.Config{
		GRPCAddr: "127.0.0.1:0", ConsulAddr: consul.Addr, ServiceName: "login", ServiceID: id,
		ConnectNative: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("connect backend %s: %v", id, err)
		}
	})
	return srv
}

// setIntention makes Consul's intention from the gateway's Connect
// identity to "login" action (allow or deny).
func setIntention(t *testing.T, consul *testutil.Consul, action api.IntentionAction) {
	t.Helper()
	entry := &api.ServiceIntentionsConfigEntry{
		Kind: api.ServiceIntentions, Name: "login",
		Sources: []*api.SourceIntention{{Name: "healthgate", Action: action}},
	}
	if _, _, err := consul.Client(t, "").ConfigEntries().Set(entry, nil); err != nil {
		t.Fatalf("intention healthgate -> login %s: %v", action, err)
	}
}

func loginAs(ctx context.Context, cc *grpc.ClientConn) (string, error) {
	var hdr metadata.MD
	_, err := authpb.NewAuthorizationClient(cc).Login(ctx, &authpb.LoginRequest{Email: "admin@admin.com", Password: "123456"}, grpc.Header(&hdr))
	if b := hdr.Get(authserver.BackendHeader); len(b) > 0 {
		return b[0], err
	}
	return "", err
}

// TestB63_ConnectNativeBackendAndIntentions: a backend registered in a real
// Consul agent as Connect-native takes only Connect mTLS and asks the
// agent for each call whether the intentions let the caller in. The
// gateway dials it with its own Connect leaf certificate, without any
// TLS setting: calls go through while no intention denies them, fail
// PERMISSION_DENIED (naming the intention's verdict) once Consul denies
// healthgate -> login, and go through again once it allows it: all on the
// gateway's one open connection, changed live.
func TestB63_ConnectNativeBackendAndIntentions(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		consul := testutil.StartConsul(t)
		backend := connectBackend(t, consul, "login-1")

		// The backend refuses a caller without a Connect certificate.
		plainTLS, err := grpc.NewClient(backend.GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})))
		if err != nil {
			t.Fatal(err)
		}
		defer plainTLS.Close()
		testutil.WaitFor(t, 20*time.Second, "the backend to refuse a caller without a Connect certificate", func() bool {
			_, err := loginAs(t.Context(), plainTLS)
			return status.Code(err) == codes.Unauthenticated
		})

		h := e.start(t, consulCfg(consul.Addr))
		h.routable(t, authserver.HealthService, 1)
		b, _ := h.g.State().Backend(authserver.HealthService, backend.GRPCAddr())
		if !b.Routable {
			t.Fatalf("the Connect backend is not routable: %s", b.Reason)
		}
		if got, want := b.Handle.Transport(), `connect (service "login")`; got != want {
			t.Errorf("transport of the Connect-native instance: %q, want %q", got, want)
		}
		cc := testutil.Dial(t, h.addr)
		if _, err := loginAs(t.Context(), cc); err != nil {
			t.Fatalf("a call to a Connect-native backend with no intention set (the dev agent allows by default): %v", err)
		}

		setIntention(t, consul, api.IntentionActionDeny)
		var denied error
		testutil.WaitFor(t, 20*time.Second, "calls to be denied by the intention", func() bool {
			_, denied = loginAs(t.Context(), cc)
			return status.Code(denied) == codes.PermissionDenied
		})
		if msg := status.Convert(denied).Message(); !strings.Contains(msg, "/svc/healthgate may not call login") {
			t.Errorf("denied call's message %q does not say who may not call what", msg)
		}
		// A denial is the application's answer: the backend stays routable
		// and is not ejected by the failures.
		for range 10 {
			if _, err := loginAs(t.Context(), cc); status.Code(err) != codes.PermissionDenied {
				t.Fatalf("call under a deny intention: %v, want PERMISSION_DENIED", err)
			}
		}
		if b, _ := h.g.State().Backend(authserver.HealthService, backend.GRPCAddr()); !b.Routable {
			t.Fatalf("the backend left the rotation over denied calls: %s", b.Reason)
		}

		setIntention(t, consul, api.IntentionActionAllow)
		testutil.WaitFor(t, 20*time.Second, "calls to be allowed again", func() bool {
			_, err := loginAs(t.Context(), cc)
			return err == nil
		})
	})
}

// TestB63_CARotationIsUsedLive: the Connect CA is rotated in Consul while
// the gateway runs. The gateway picks up the new roots and a leaf signed
// by the new CA through its blocking queries, its open connection keeps
// working, and a backend that starts after the rotation, with a leaf of
// the new CA, is dialled and routed without a restart.
func TestB63_CARotationIsUsedLive(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		consul := testutil.StartConsul(t)
		first := connectBackend(t, consul, "login-1")
		h := e.start(t, consulCfg(consul.Addr))
		h.routable(t, authserver.HealthService, 1)
		cc := testutil.Dial(t, h.addr)
		if _, err := loginAs(t.Context(), cc); err != nil {
			t.Fatal(err)
		}
		before := h.g.ConnectStatus()
		if before.Serial == "" || len(before.Roots) != 1 {
			t.Fatalf("the gateway's Connect identity before the rotation: %+v", before)
		}

		// A new key type makes the built-in CA generate a new root and
		// cross-sign it: a rotation.
		client := consul.Client(t, "")
		if _, err := client.Connect().CASetConfig(&api.CAConfig{Provider: "consul", Config: map[string]any{"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}}, nil); err != nil {
			t.Fatalf("rotate the Connect CA: %v", err)
		}
		var after discovery.ConnectStatus
		testutil.WaitFor(t, 90*time.Second, "the gateway to hold the new roots and a new leaf", func() bool {
			after = h.g.ConnectStatus()
			return len(after.Roots) == 2 && after.Serial != before.Serial
		})
		if _, err := loginAs(t.Context(), cc); err != nil {
			t.Fatalf("a call on the connection opened before the rotation: %v", err)
		}

		second := connectBackend(t, consul, "login-2")
		h.routable(t, authserver.HealthService, 2)
		seen := map[string]bool{}
		testutil.WaitFor(t, 20*time.Second, "both backends to answer through the gateway", func() bool {
			name, err := loginAs(t.Context(), cc)
			if err != nil {
				t.Fatalf("call after the rotation: %v", err)
			}
			seen[name] = true
			return len(seen) == 2
		})
		for _, b := range []*authserver.Server{first, second} {
			if !seen[b.GRPCAddr()] {
				t.Errorf("backend %s took no call after the rotation (answers came from %v)", b.GRPCAddr(), seen)
			}
		}
	})
}

// TestB63_WrongIdentityIsNotRouted: a route that says its backends are
// Connect service "billing" does not route to one that proves to be
// "login", though its certificate is from the same CA.
func TestB63_WrongIdentityIsNotRouted(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		consul := testutil.StartConsul(t)
		backend := connectBackend(t, consul, "login-1")
		cfg := consulCfg(consul.Addr)
		cfg.Consul.DisableAutoRoutes = true
		cfg.Routes = []config.Route{{
			Service: authserver.HealthService, Backends: []string{backend.GRPCAddr()},
			Health: healthcheckcfg.RouteConfig{Connect: true, ConnectService: "billing"},
		}}
		h := e.start(t, cfg)
		testutil.WaitFor(t, 20*time.Second, "the backend to be refused for its identity", func() bool {
			b, ok := h.g.State().Backend(authserver.HealthService, backend.GRPCAddr())
			return ok && !b.Routable && strings.Contains(b.Reason, `not service "billing"`)
		})
		cc := testutil.Dial(t, h.addr)
		if _, err := loginAs(t.Context(), cc); status.Code(err) != codes.Unavailable {
			t.Fatalf("a call to a route whose only backend has the wrong identity: %v, want UNAVAILABLE", err)
		}
	})
}

// TestB63_ConnectConfigErrors: a connect route needs Consul, and static
// backends on one need the identity they present.
func TestB63_ConnectConfigErrors(t *testing.T) {
	for name, c := range map[string]struct {
		cfg  config.Config
		want string
	}{
		"no consul":              {config.Config{Routes: []config.Route{{Service: "a.B", Backends: []string{"127.0.0.1:1"}, Health: healthcheckcfg.RouteConfig{Connect: true, ConnectService: "b"}}}}, "routes[0].connect"},
		"static without service": {config.Config{Consul: consulCfg("127.0.0.1:8500").Consul, Routes: []config.Route{{Service: "a.B", Backends: []string{"127.0.0.1:1"}, Health: healthcheckcfg.RouteConfig{Connect: true}}}}, "routes[0].connect_service"},
		"with backend_tls":       {config.Config{Consul: consulCfg("127.0.0.1:8500").Consul, Routes: []config.Route{{Service: "a.B", ConsulService: "b", Health: healthcheckcfg.RouteConfig{Connect: true, BackendTLS: &healthcheckcfg.BackendTLS{}}}}}, "routes[0].connect"},
	} {
		err := c.cfg.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error naming %s", name, err, c.want)
		}
	}
}
