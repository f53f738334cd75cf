package gateway_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy/proxycfg"
)

// testCA issues certificates for the tests, generated with crypto/x509.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "healthgate test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a PEM certificate and key for 127.0.0.1 with serial.
func (ca *testCA) issue(t *testing.T, serial int64, client bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	usage := x509.ExtKeyUsageServerAuth
	var uris []*url.URL
	if client {
		usage = x509.ExtKeyUsageClientAuth
		uris = []*url.URL{{Scheme: "spiffe", Host: "healthgate.test", Path: "/client"}}
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "healthgate test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}, URIs: uris,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// writeFile replaces path whole, as a renewal tool does (write, rename).
func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// servedSerial is the serial of the certificate the gateway shows a new
// connection.
func servedSerial(t *testing.T, addr string, pool *x509.CertPool) int64 {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("TLS to the gateway: %v", err)
	}
	defer c.Close()
	st := c.ConnectionState()
	if st.NegotiatedProtocol != "h2" {
		t.Fatalf("ALPN %q, want h2", st.NegotiatedProtocol)
	}
	return st.PeerCertificates[0].SerialNumber.Int64()
}

// TestB60_TLSListenerReloadsCertificates: clients connect with TLS (1.2+,
// ALPN h2) and call through; replacing the certificate files on disk
// reaches new connections within seconds, while a stream opened before
// keeps working; a plaintext client is refused.
func TestB60_TLSListenerReloadsCertificates(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		ca := newTestCA(t)
		dir := t.TempDir()
		certFile, keyFile := filepath.Join(dir, "gw.pem"), filepath.Join(dir, "gw.key")
		c1, k1 := ca.issue(t, 100, false)
		writeFile(t, certFile, c1)
		writeFile(t, keyFile, k1)

		b := testutil.StartBackend(t)
		cfg := config.Config{
			Routes:    []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}},
			ListenTLS: proxycfg.ListenTLS{CertFile: certFile, KeyFile: keyFile},
		}
		h := e.start(t, cfg)
		h.routable(t, testutil.TestService, 1)

		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca.pem)
		cc, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		stream, err := testutil.RawStream(t.Context(), cc, "/test.Svc/Echo")
		if err != nil {
			t.Fatal(err)
		}
		if err := testutil.Echo(stream, "over TLS"); err != nil {
			t.Fatalf("a call over TLS: %v", err)
		}
		if got := servedSerial(t, h.addr, pool); got != 100 {
			t.Fatalf("served certificate serial %d, want 100", got)
		}

		c2, k2 := ca.issue(t, 200, false)
		writeFile(t, certFile, c2)
		writeFile(t, keyFile, k2)
		replaced := time.Now()
		testutil.WaitFor(t, 10*time.Second, "new connections to get the replaced certificate", func() bool {
			return servedSerial(t, h.addr, pool) == 200
		})
		t.Logf("replaced certificate served %v after the files changed", time.Since(replaced).Round(time.Millisecond))
		if err := testutil.Echo(stream, "the old stream"); err != nil {
			t.Fatalf("the stream opened before the renewal: %v", err)
		}
		var p peer.Peer
		if _, err := testutil.Unary(t.Context(), cc, "/test.Svc/Echo", []byte("x"), grpc.Peer(&p)); err != nil {
			t.Fatalf("a new call after the renewal: %v", err)
		}

		plain := testutil.Dial(t, h.addr)
		if _, err := testutil.Unary(t.Context(), plain, "/test.Svc/Echo", []byte("x")); err == nil {
			t.Fatal("a plaintext client was served by a TLS listener")
		}
	})
}

// TestB61_ClientCertificateRequired: with a client CA and
// require_client_cert, a client without a valid certificate is refused at
// the handshake and one with a certificate from the CA is served, its
// verified identity (URI SAN) in the access log.
func TestB61_ClientCertificateRequired(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		ca := newTestCA(t)
		dir := t.TempDir()
		certFile, keyFile, caFile := filepath.Join(dir, "gw.pem"), filepath.Join(dir, "gw.key"), filepath.Join(dir, "ca.pem")
		c1, k1 := ca.issue(t, 100, false)
		writeFile(t, certFile, c1)
		writeFile(t, keyFile, k1)
		writeFile(t, caFile, ca.pem)
		b := testutil.StartBackend(t)
		var logs testutil.SyncBuffer
		h := e.startLog(t, config.Config{
			Routes:    []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}},
			ListenTLS: proxycfg.ListenTLS{CertFile: certFile, KeyFile: keyFile, ClientCAFile: caFile, RequireClientCert: true},
			Log:       config.Log{Access: true},
		}, slog.New(slog.NewTextHandler(&logs, nil)))
		h.routable(t, testutil.TestService, 1)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca.pem)

		anon, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
		if err != nil {
			t.Fatal(err)
		}
		defer anon.Close()
		if _, err := testutil.Unary(t.Context(), anon, "/test.Svc/Echo", []byte("x")); err == nil {
			t.Fatal("a client without a certificate was served")
		}

		other := newTestCA(t)
		oc, ok := other.issue(t, 7, true)
		stranger, err := tls.X509KeyPair(oc, ok)
		if err != nil {
			t.Fatal(err)
		}
		bad, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{stranger}})))
		if err != nil {
			t.Fatal(err)
		}
		defer bad.Close()
		if _, err := testutil.Unary(t.Context(), bad, "/test.Svc/Echo", []byte("x")); err == nil {
			t.Fatal("a client with a certificate from another CA was served")
		}

		cc, ck := ca.issue(t, 8, true)
		mine, err := tls.X509KeyPair(cc, ck)
		if err != nil {
			t.Fatal(err)
		}
		good, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{mine}})))
		if err != nil {
			t.Fatal(err)
		}
		defer good.Close()
		if _, err := testutil.Unary(t.Context(), good, "/test.Svc/Echo", []byte("x")); err != nil {
			t.Fatalf("a client with a certificate from the CA: %v", err)
		}
		testutil.WaitFor(t, 10*time.Second, "the access log line with the client's identity", func() bool {
			return strings.Contains(logs.String(), "client=spiffe://healthgate.test/client")
		})
	})
}
