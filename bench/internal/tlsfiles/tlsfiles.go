// Package tlsfiles makes the certificates of the bench's TLS workload and
// the one client configuration every load on it uses, so that the peers
// differ in how they terminate TLS and in nothing the client chooses.
package tlsfiles

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files are the PEM files Write leaves in its directory.
type Files struct {
	CA      string // the self-signed CA that signs Cert; what clients trust
	Cert    string // the server certificate, for 127.0.0.1 and localhost
	Key     string // Cert's private key, PKCS#8
	CertKey string // Cert then Key in one file: HAProxy's crt
}

// Write generates an ECDSA P-256 CA and a server certificate it signs, and
// writes them into dir. They are valid for validFor from an hour ago, so a
// clock that is a little behind does not refuse them.
func Write(dir string, validFor time.Duration) (Files, error) {
	now := time.Now()
	caKey, caDER, err := newCert(nil, nil, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "healthgate bench CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validFor),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	})
	if err != nil {
		return Files{}, fmt.Errorf("tlsfiles: CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return Files{}, fmt.Errorf("tlsfiles: CA: %w", err)
	}
	key, der, err := newCert(ca, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(validFor),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:    []string{"localhost"},
	})
	if err != nil {
		return Files{}, fmt.Errorf("tlsfiles: server certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Files{}, fmt.Errorf("tlsfiles: server key: %w", err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	f := Files{
		CA:      filepath.Join(dir, "ca.pem"),
		Cert:    filepath.Join(dir, "server.pem"),
		Key:     filepath.Join(dir, "server.key"),
		CertKey: filepath.Join(dir, "server-with-key.pem"),
	}
	err = errors.Join(
		os.WriteFile(f.CA, caPEM, 0o644),
		os.WriteFile(f.Cert, certPEM, 0o644),
		os.WriteFile(f.Key, keyPEM, 0o600),
		os.WriteFile(f.CertKey, append(append([]byte{}, certPEM...), keyPEM...), 0o600),
	)
	if err != nil {
		return Files{}, fmt.Errorf("tlsfiles: %w", err)
	}
	return f, nil
}

// newCert makes a P-256 key and a certificate for it from tmpl, signed by
// parent's key, or self-signed when parent is nil.
func newCert(parent *x509.Certificate, parentKey *ecdsa.PrivateKey, tmpl *x509.Certificate) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	return key, der, err
}

// ClientConfig is the client side of every TLS connection of the bench:
// TLS 1.3 only, trusting the CA in caFile. Its one key exchange, X25519, is
// one that Go, nginx's and HAProxy's OpenSSL all have: left to its default,
// Go would offer X25519MLKEM768, which a Go server takes and OpenSSL 3.0
// does not, and the peers would not be doing the same handshake. The
// handshake is once per connection, so this is about sameness more than
// cost. TLS 1.3 cipher suites are not configurable in Go; the servers that
// can choose are set to the one Go picks on AES-capable CPUs (see
// bench/README.md), and Describe shows what was negotiated.
func ClientConfig(caFile string) (*tls.Config, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("tlsfiles: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tlsfiles: %s holds no PEM certificate", caFile)
	}
	return &tls.Config{
		RootCAs:          pool,
		MinVersion:       tls.VersionTLS13,
		CurvePreferences: []tls.CurveID{tls.X25519},
	}, nil
}

// ServerConfig is the server side for the bench's own Go servers (the
// backend serving direct, and grpc-proxy): the certificate in certFile and
// keyFile, TLS 1.3 only. healthgate is configured through its own
// listen_tls instead.
func ServerConfig(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tlsfiles: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}, nil
}

// Describe names what a connection negotiated, for the report: version,
// cipher suite, key exchange and ALPN protocol.
func Describe(s tls.ConnectionState) string {
	return fmt.Sprintf("%s %s %s ALPN %s", tls.VersionName(s.Version), tls.CipherSuiteName(s.CipherSuite), s.CurveID, s.NegotiatedProtocol)
}
