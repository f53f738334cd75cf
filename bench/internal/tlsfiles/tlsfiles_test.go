package tlsfiles

import (
	"context"
	"crypto/tls"
	"os"
	"strings"
	"testing"
	"time"
)

// TestHandshake checks what the peers depend on: the server certificate
// verifies for 127.0.0.1 under the CA, the combined file is HAProxy's
// certificate followed by its key, and the client gets TLS 1.3 with X25519.
func TestHandshake(t *testing.T) {
	f, err := Write(t.TempDir(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	combined, err := os.ReadFile(f.CertKey)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(combined); !strings.HasPrefix(s, "-----BEGIN CERTIFICATE-----") || !strings.Contains(s, "-----BEGIN PRIVATE KEY-----") {
		t.Errorf("%s is not a certificate then a key:\n%s", f.CertKey, s)
	}
	srv, err := ServerConfig(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	srv.NextProtos = []string{"h2"}
	cli, err := ClientConfig(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	cli.NextProtos = []string{"h2"}

	lis, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	served := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err == nil {
			err = c.(*tls.Conn).Handshake()
			c.Close()
		}
		served <- err
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := tls.Dialer{Config: cli}
	c, err := d.DialContext(ctx, "tcp", lis.Addr().String())
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	got := Describe(c.(*tls.Conn).ConnectionState())
	c.Close()
	if want := "TLS 1.3"; !strings.HasPrefix(got, want) || !strings.Contains(got, "X25519 ALPN h2") {
		t.Errorf("negotiated %q, want TLS 1.3 with X25519 and h2", got)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("server side: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("server side did not finish its handshake")
	}
}

// TestDescribeNamesEveryPart keeps the report's TLS line readable.
func TestDescribeNamesEveryPart(t *testing.T) {
	got := Describe(tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256, CurveID: tls.X25519, NegotiatedProtocol: "h2"})
	if want := "TLS 1.3 TLS_AES_128_GCM_SHA256 X25519 ALPN h2"; got != want {
		t.Errorf("Describe = %q, want %q", got, want)
	}
}
