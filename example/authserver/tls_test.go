package authserver_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/example/authpb"
	"github.com/healthgate/healthgate/example/authserver"
	"github.com/healthgate/healthgate/example/democa"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/internal/testutil"
)

// pki is one demo CA's files in a test's temp dir: the backend's
// certificate, a client certificate it signed, and one from another CA.
type pki struct {
	ca                         *democa.CA
	caFile                     string
	serverCert, serverKey      string
	clientCert, clientKey      string
	strangerCert, strangerKey  string
	consulAgentCert, consulKey string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	ca, err := democa.New("authserver test CA")
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{ca: ca}
	if p.caFile, err = ca.WriteCA(dir); err != nil {
		t.Fatal(err)
	}
	leaf := func(ca *democa.CA, name string, l democa.Leaf) (string, string) {
		c, k, err := ca.WriteLeaf(dir, name, l)
		if err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	p.serverCert, p.serverKey = leaf(ca, "backend", democa.Leaf{CommonName: "backend", Hosts: []string{"127.0.0.1", "auth.test"}, Server: true})
	p.clientCert, p.clientKey = leaf(ca, "gateway", democa.Leaf{CommonName: "test-gateway", Client: true})
	p.consulAgentCert, p.consulKey = leaf(ca, "consul", democa.Leaf{CommonName: "consul-agent", Hosts: []string{"127.0.0.1"}, Server: true, Client: true})
	other, err := democa.New("another CA")
	if err != nil {
		t.Fatal(err)
	}
	p.strangerCert, p.strangerKey = leaf(other, "stranger", democa.Leaf{CommonName: "stranger", Client: true})
	return p
}

func (p *pki) serverTLS() *authserver.TLS {
	return &authserver.TLS{CertFile: p.serverCert, KeyFile: p.serverKey, ClientCAFile: p.caFile}
}

// creds trusts the CA and presents certFile as the client certificate
// ("" presents none).
func (p *pki) creds(t *testing.T, certFile, keyFile string) grpc.DialOption {
	t.Helper()
	c := &tls.Config{RootCAs: p.ca.Pool(), MinVersion: tls.VersionTLS12}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(c))
}

func dialWith(t *testing.T, addr string, opt grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, opt)
	if err != nil {
		t.Fatalf("grpc.NewClient(%s): %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// TestTLSRefusesClientsWithoutCertificate: with a client CA, only a client
// presenting a certificate that CA signed gets a call through.
func TestTLSRefusesClientsWithoutCertificate(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, authserver.Config{TLS: p.serverTLS()})
	tests := []struct {
		name string
		opt  grpc.DialOption
	}{
		{"plaintext", grpc.WithTransportCredentials(insecure.NewCredentials())},
		{"tls without a client certificate", p.creds(t, "", "")},
		{"client certificate of another CA", p.creds(t, p.strangerCert, p.strangerKey)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := authpb.NewAuthorizationClient(dialWith(t, srv.GRPCAddr(), tt.opt))
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			_, err := client.Login(ctx, &authpb.LoginRequest{Email: "admin@admin.com", Password: "123456"})
			if status.Code(err) != codes.Unavailable {
				t.Errorf("Login = %v, want UNAVAILABLE (refused at the handshake)", err)
			}
		})
	}
	if !srv.Serving() {
		t.Error("a refused client changed the backend's status")
	}
}

// TestTLSWithClientCertificate: a client with a certificate from the CA
// logs in, is told how it reached the backend, and the health service
// (what the gateway watches) answers and flips over the same mTLS
// connection.
func TestTLSWithClientCertificate(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, authserver.Config{TLS: p.serverTLS()})
	conn := dialWith(t, srv.GRPCAddr(), p.creds(t, p.clientCert, p.clientKey))
	w := watch(t, conn, authserver.HealthService)
	w.waitFor(t, healthpb.HealthCheckResponse_SERVING)
	if got := checkStatus(t, conn, ""); got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf(`Check("") over mTLS = %v, want SERVING`, got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	client := authpb.NewAuthorizationClient(conn)
	var hdr metadata.MD
	resp, err := client.Login(ctx, &authpb.LoginRequest{Email: "admin@admin.com", Password: "123456"}, grpc.Header(&hdr))
	if err != nil {
		t.Fatalf("Login over mTLS: %v", err)
	}
	if resp.GetMessage() != "success" {
		t.Errorf("message = %q, want success", resp.GetMessage())
	}
	got := strings.Join(hdr.Get(authserver.BackendTLSHeader), ",")
	if !strings.HasPrefix(got, "TLS 1.") || !strings.HasSuffix(got, "client certificate CN=test-gateway") {
		t.Errorf("%s = %q, want the TLS version and CN=test-gateway", authserver.BackendTLSHeader, got)
	}

	if _, err := client.Login(ctx, &authpb.LoginRequest{Email: "admin@admin.com", Password: "wrong"}); err != nil {
		t.Fatalf("Login: %v", err)
	}
	w.waitFor(t, healthpb.HealthCheckResponse_NOT_SERVING)
	srv.SetServing(true)
	w.waitFor(t, healthpb.HealthCheckResponse_SERVING)
}

// TestPlaintextHasNoTLSHeader: the header is only there to describe TLS.
func TestPlaintextHasNoTLSHeader(t *testing.T) {
	srv := startServer(t, authserver.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var hdr metadata.MD
	if _, err := authpb.NewAuthorizationClient(dial(t, srv.GRPCAddr())).Login(ctx, &authpb.LoginRequest{Email: "a", Password: "b"}, grpc.Header(&hdr)); err != nil {
		t.Fatalf("Login: %v", err)
	}
	if got := hdr.Get(authserver.BackendTLSHeader); len(got) != 0 {
		t.Errorf("%s = %q on a plaintext connection, want none", authserver.BackendTLSHeader, got)
	}
}

func TestTLSConfigErrors(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name    string
		tls     authserver.TLS
		wantErr string
	}{
		{"no key", authserver.TLS{CertFile: p.serverCert}, "both required"},
		{"no cert", authserver.TLS{KeyFile: p.serverKey, ClientCAFile: p.caFile}, "both required"},
		{"missing cert file", authserver.TLS{CertFile: p.serverCert + ".nope", KeyFile: p.serverKey}, "load"},
		{"key of another cert", authserver.TLS{CertFile: p.serverCert, KeyFile: p.clientKey}, "load"},
		{"missing client ca", authserver.TLS{CertFile: p.serverCert, KeyFile: p.serverKey, ClientCAFile: p.caFile + ".nope"}, "client ca"},
		{"client ca not pem", authserver.TLS{CertFile: p.serverCert, KeyFile: p.serverKey, ClientCAFile: p.serverKey}, "no PEM certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := authserver.New(authserver.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", TLS: &tt.tls})
			if err == nil {
				srv.Close()
				t.Fatal("New succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("New = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestTLSMetaIsTheGateways: the example writes out the gateway's meta
// keys rather than import it; they must not drift apart.
func TestTLSMetaIsTheGateways(t *testing.T) {
	if authserver.MetaTLS != healthcheck.MetaTLS || authserver.MetaTLSServerName != healthcheck.MetaTLSServerName {
		t.Errorf("meta keys %q, %q; the gateway reads %q, %q",
			authserver.MetaTLS, authserver.MetaTLSServerName, healthcheck.MetaTLS, healthcheck.MetaTLSServerName)
	}
}

func TestTLSRegistration(t *testing.T) {
	p := newPKI(t)
	fake := newFakeConsul(t, 200, func() bool { return true })
	tlsCfg := p.serverTLS()
	tlsCfg.ServerName = "auth.test"
	startServer(t, authserver.Config{ConsulAddr: fake.URL, TLS: tlsCfg})
	select {
	case <-fake.registeredCh:
	case <-time.After(testTimeout):
		t.Fatal("no registration within deadline")
	}
	fake.mu.Lock()
	reg := fake.registered
	fake.mu.Unlock()
	if reg.Meta[authserver.MetaTLS] != "true" || reg.Meta[authserver.MetaTLSServerName] != "auth.test" {
		t.Errorf("meta = %v, want %s=true and %s=auth.test", reg.Meta, authserver.MetaTLS, authserver.MetaTLSServerName)
	}
	if c := reg.Check; c == nil || !c.GRPCUseTLS || c.TLSServerName != "auth.test" || c.TLSSkipVerify {
		t.Errorf("check = %+v, want gRPC over TLS verifying auth.test", c)
	}
}

// TestConsulCheckOverMTLS: a real Consul agent given a certificate from
// the backend's client CA (enable_agent_tls_for_checks) checks an mTLS
// backend over TLS, and the check passes by running, not by the status
// it was registered with.
func TestConsulCheckOverMTLS(t *testing.T) {
	p := newPKI(t)
	agent := testutil.StartConsul(t,
		"-hcl", "enable_agent_tls_for_checks = true",
		"-hcl", `tls { internal_rpc { ca_file = "`+p.caFile+`" cert_file = "`+p.consulAgentCert+`" key_file = "`+p.consulKey+`" } }`,
	)
	srv := startServer(t, authserver.Config{ConsulAddr: agent.Addr, TLS: p.serverTLS(), CheckInterval: 200 * time.Millisecond})

	ccfg := consul.DefaultNonPooledConfig()
	ccfg.Address = agent.Addr
	client, err := consul.NewClient(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	want := "gRPC check " + srv.GRPCAddr() + ": success"
	waitCheckOutput(t, client, srv.ServiceID(), want)
	svcs, _, err := client.Catalog().Service("auth", "", nil)
	if err != nil || len(svcs) != 1 || svcs[0].ServiceMeta[authserver.MetaTLS] != "true" {
		t.Errorf("catalog = %v, %v; want one instance with meta %s=true", svcs, err, authserver.MetaTLS)
	}
}

// waitCheckOutput waits until the agent's check of serviceID passes with
// output want. It asks the agent, not the catalog: with the status
// unchanged, the catalog takes a new output only after
// check_update_interval (5 minutes).
func waitCheckOutput(t *testing.T, client *consul.Client, serviceID, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	last := "no check"
	for {
		checks, err := client.Agent().ChecksWithFilterOpts("", (&consul.QueryOptions{}).WithContext(ctx))
		if err != nil {
			last = err.Error()
		}
		for _, c := range checks {
			if c.ServiceID != serviceID {
				continue
			}
			if c.Status == consul.HealthPassing && c.Output == want {
				return
			}
			last = c.Status + " " + c.Output
		}
		select {
		case <-ctx.Done():
			t.Fatalf("consul's check of %s never passed with %q; last: %s", serviceID, want, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
