package democa_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/healthgate/healthgate/example/democa"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestIssueVerifies(t *testing.T) {
	ca, err := democa.New("democa test")
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	tests := []struct {
		name     string
		leaf     democa.Leaf
		verifyAs string // DNS name or IP the chain is verified for; "" for a client
		usage    x509.ExtKeyUsage
	}{
		{"server by ip", democa.Leaf{CommonName: "s", Hosts: []string{"127.0.0.1", "localhost"}, Server: true}, "127.0.0.1", x509.ExtKeyUsageServerAuth},
		{"server by name", democa.Leaf{CommonName: "s", Hosts: []string{"127.0.0.1", "localhost"}, Server: true}, "localhost", x509.ExtKeyUsageServerAuth},
		{"client", democa.Leaf{CommonName: "c", Client: true}, "", x509.ExtKeyUsageClientAuth},
		{"both as client", democa.Leaf{CommonName: "b", Hosts: []string{"127.0.0.1"}, Server: true, Client: true}, "", x509.ExtKeyUsageClientAuth},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, keyPEM, err := ca.Issue(tt.leaf)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
				t.Fatalf("X509KeyPair: %v", err)
			}
			block, _ := pem.Decode(certPEM)
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatalf("ParseCertificate: %v", err)
			}
			if cert.Subject.CommonName != tt.leaf.CommonName {
				t.Errorf("common name = %q, want %q", cert.Subject.CommonName, tt.leaf.CommonName)
			}
			opts := x509.VerifyOptions{Roots: ca.Pool(), DNSName: tt.verifyAs, KeyUsages: []x509.ExtKeyUsage{tt.usage}}
			if _, err := cert.Verify(opts); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

func TestIssueRejects(t *testing.T) {
	ca, err := democa.New("democa test")
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if _, _, err := ca.Issue(democa.Leaf{Server: true}); err == nil || !strings.Contains(err.Error(), "common name") {
		t.Errorf("Issue without a name = %v, want a common name error", err)
	}
	if _, _, err := ca.Issue(democa.Leaf{CommonName: "x"}); err == nil || !strings.Contains(err.Error(), "neither") {
		t.Errorf("Issue without a usage = %v, want a usage error", err)
	}
	other, err := democa.New("other")
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	certPEM, _, err := other.Issue(democa.Leaf{CommonName: "x", Client: true})
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	block, _ := pem.Decode(certPEM)
	cert, _ := x509.ParseCertificate(block.Bytes)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("a certificate of another CA verified")
	}
}

func TestWriteFiles(t *testing.T) {
	ca, err := democa.New("democa test")
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	dir := t.TempDir()
	caFile, err := ca.WriteCA(dir)
	if err != nil {
		t.Fatalf("WriteCA: %v", err)
	}
	if got, err := os.ReadFile(caFile); err != nil || string(got) != string(ca.PEM()) {
		t.Errorf("ca file = %q, %v; want the CA's PEM", got, err)
	}
	certFile, keyFile, err := ca.WriteLeaf(dir, "gw", democa.Leaf{CommonName: "gw", Hosts: []string{"127.0.0.1"}, Server: true})
	if err != nil {
		t.Fatalf("WriteLeaf: %v", err)
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Errorf("LoadX509KeyPair: %v", err)
	}
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatalf("stat key file: %v", err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("key file mode = %v, want 0600", got)
	}
}
