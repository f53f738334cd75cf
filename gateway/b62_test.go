package gateway_test

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/healthcheck/healthcheckcfg"
	"github.com/healthgate/healthgate/internal/testutil"
)

// mtlsBackend is a backend that accepts only TLS connections with a client
// certificate from ca.
func mtlsBackend(t *testing.T, ca *testCA) *testutil.Backend {
	t.Helper()
	certPEM, keyPEM := ca.issue(t, 300, false)
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})
	return testutil.StartBackend(t, grpc.Creds(creds))
}

// TestB62_TLSAndMTLSToBackends: a route's backend_tls dials its backends
// with TLS and a client certificate, so a backend that accepts only mTLS is
// health-checked (the Watch on the same connection) and routed; an
// instance in Consul can say it speaks plaintext (healthgate_tls=false)
// on the same route; a route without backend_tls cannot reach an mTLS
// backend.
func TestB62_TLSAndMTLSToBackends(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		ca := newTestCA(t)
		dir := t.TempDir()
		caFile, certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "gw.pem"), filepath.Join(dir, "gw.key")
		c, k := ca.issue(t, 400, true)
		writeFile(t, caFile, ca.pem)
		writeFile(t, certFile, c)
		writeFile(t, keyFile, k)

		secure := mtlsBackend(t, ca)
		plain := testutil.StartBackend(t)
		go drainCalls(t, secure)
		go drainCalls(t, plain)

		consul := testutil.StartConsul(t)
		cfg := consulCfg(consul.Addr)
		cfg.Consul.DisableAutoRoutes = true
		cfg.Routes = []config.Route{{
			Service: testutil.TestService, ConsulService: "svc",
			Health: healthcheckcfg.RouteConfig{BackendTLS: &healthcheckcfg.BackendTLS{CAFile: caFile, CertFile: certFile, KeyFile: keyFile, ServerName: "localhost"}},
		}}
		h := e.start(t, cfg)
		consul.Register(t, "", testutil.RouteReg("secure", "svc", secure.Addr, testutil.TestService))
		plainReg := testutil.RouteReg("plain", "svc", plain.Addr, testutil.TestService)
		plainReg.Meta = map[string]string{healthcheck.MetaTLS: "false"}
		consul.Register(t, "", plainReg)
		h.routable(t, testutil.TestService, 2)

		cc := testutil.Dial(t, h.addr)
		for range 10 {
			if _, err := testutil.Unary(t.Context(), cc, "/test.Svc/Echo", []byte("x")); err != nil {
				t.Fatalf("a call over the route with an mTLS and a plaintext backend: %v", err)
			}
		}
		for _, b := range []*testutil.Backend{secure, plain} {
			select {
			case <-b.Started():
			default:
				t.Fatalf("backend %s took no call", b.Addr)
			}
		}
	})
}

// TestB62_NoTLSCannotReachAnMTLSBackend: without backend_tls the gateway
// dials in plaintext, the mTLS backend never becomes routable, and the
// route answers UNAVAILABLE rather than sending calls it cannot deliver.
func TestB62_NoTLSCannotReachAnMTLSBackend(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		secure := mtlsBackend(t, newTestCA(t))
		h := e.start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{secure.Addr}}}})
		testutil.WaitFor(t, 10*time.Second, "the backend to be known, its connection not READY", func() bool {
			b, ok := h.g.State().Backend(testutil.TestService, secure.Addr)
			return ok && !b.Routable && strings.HasPrefix(b.Reason, "connection ")
		})
		cc := testutil.Dial(t, h.addr)
		if _, err := testutil.Unary(t.Context(), cc, "/test.Svc/Echo", []byte("x")); status.Code(err) != codes.Unavailable {
			t.Fatalf("a call to a route whose only backend needs mTLS the gateway does not have: %v, want UNAVAILABLE", err)
		}
	})
}
