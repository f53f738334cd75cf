package healthcheck

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/healthgate/healthgate/discovery"
)

// Service meta keys with which an instance asks to be dialled with TLS
// (Consul refuses dots in meta keys).
const (
	// MetaTLS "true" dials the instance with TLS: the route's backend_tls
	// files if it has them, else the system's roots; "false" dials it in
	// plaintext whatever the route says.
	MetaTLS = "healthgate_tls"
	// MetaTLSServerName is the name the instance's certificate carries,
	// when it is not the host of its address. It implies TLS.
	MetaTLSServerName = "healthgate_tls_server_name"
)

// transport is how the gateway dials one backend address. It is
// comparable: a backend whose transport changes gets a new connection.
type transport struct {
	tls                       bool
	ca, cert, key, serverName string
}

func (t transport) String() string {
	if !t.tls {
		return "plaintext"
	}
	return fmt.Sprintf("tls (server name %q, client certificate %v)", t.serverName, t.cert != "")
}

// transportFor is how to dial ep as a backend of a route configured rc: the
// route's backend_tls, then what the instance says of itself.
func transportFor(rc RouteConfig, ep discovery.Endpoint) transport {
	var t transport
	if b := rc.BackendTLS; b != nil {
		t = transport{tls: true, ca: b.CAFile, cert: b.CertFile, key: b.KeyFile, serverName: b.ServerName}
	}
	if v, ok := ep.Meta[MetaTLS]; ok {
		t.tls = v == "true"
	}
	if v := ep.Meta[MetaTLSServerName]; v != "" {
		t.tls, t.serverName = true, v
	}
	if !t.tls {
		return transport{}
	}
	return t
}

// pick chooses one transport for an address listed by several routes:
// TLS over plaintext (an address that any route says needs TLS gets it),
// then the first in a fixed order, so that the choice does not flap.
func pick(ts []transport) transport {
	slices.SortFunc(ts, func(a, b transport) int {
		switch {
		case a.tls != b.tls:
			if a.tls {
				return -1
			}
			return 1
		case a.serverName != b.serverName:
			return cmpString(a.serverName, b.serverName)
		case a.ca != b.ca:
			return cmpString(a.ca, b.ca)
		}
		return cmpString(a.cert, b.cert)
	})
	return ts[0]
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// dialOption is the credentials of t; nil for plaintext (the configured
// dial options carry it).
func (t transport) dialOption() (grpc.DialOption, error) {
	if !t.tls {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.serverName}
	if t.ca != "" {
		pem, err := os.ReadFile(t.ca)
		if err != nil {
			return nil, fmt.Errorf("backend_tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("backend_tls.ca_file: %s holds no PEM certificate", t.ca)
		}
		c.RootCAs = pool
	}
	if t.cert != "" {
		pair, err := tls.LoadX509KeyPair(t.cert, t.key)
		if err != nil {
			return nil, fmt.Errorf("backend_tls.cert_file: %w", err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(c)), nil
}
