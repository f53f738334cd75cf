package healthcheck

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"

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
	// connect dials with the gateway's Connect identity; the backend must
	// present the identity of Consul service connectSvc (in connectDC,
	// unless empty).
	connect               bool
	connectSvc, connectDC string
}

func (t transport) String() string {
	if t.connect {
		return fmt.Sprintf("connect (service %q)", t.connectSvc)
	}
	if !t.tls {
		return "plaintext"
	}
	return fmt.Sprintf("tls (server name %q, client certificate %v)", t.serverName, t.cert != "")
}

// transportFor is how to dial ep as a backend of a route configured rc: the
// route's backend_tls, then what the instance says of itself.
func transportFor(rc RouteConfig, ep discovery.Endpoint) transport {
	if rc.Connect || ep.ConnectNative {
		svc := rc.ConnectService
		if svc == "" {
			svc = ep.Service
		}
		return transport{tls: true, connect: true, connectSvc: svc, connectDC: ep.Datacenter}
	}
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
		case a.connect != b.connect:
			// Connect first: an instance that is Connect-native takes
			// nothing else.
			if a.connect {
				return -1
			}
			return 1
		case a.connectSvc != b.connectSvc:
			return cmpString(a.connectSvc, b.connectSvc)
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

// creds is the credentials of t; nil for plaintext (the configured dial
// options carry it). id is the gateway's Connect identity, nil when there
// is none.
func (t transport) creds(id ConnectIdentity) (credentials.TransportCredentials, error) {
	c, err := t.tlsConfig(id)
	if err != nil || c == nil {
		return nil, err
	}
	if t.connect {
		return connectCreds{credentials.NewTLS(c), id}, nil
	}
	return credentials.NewTLS(c), nil
}

// tlsConfig is the TLS of t; nil for plaintext.
func (t transport) tlsConfig(id ConnectIdentity) (*tls.Config, error) {
	if t.connect {
		switch {
		case t.connectSvc == "":
			return nil, errors.New("a static backend of a connect route needs the route's connect_service")
		case id == nil:
			return nil, fmt.Errorf("backend needs Consul Connect (service %q) but the gateway has no Connect identity: set consul.address", t.connectSvc)
		}
		return id.ClientTLS(t.connectSvc, t.connectDC), nil
	}
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
	return c, nil
}

// ConnectIdentity is the gateway's identity in Consul Connect, with which
// Connect backends are dialled; discovery.ConnectCA is one.
type ConnectIdentity interface {
	// Ready waits until the gateway's certificate and the CA roots are
	// known, or ctx ends.
	Ready(ctx context.Context) error
	// ClientTLS presents the gateway's current certificate and accepts
	// only a backend whose certificate is from the Connect CA and names
	// service (in datacenter, unless empty).
	ClientTLS(service, datacenter string) *tls.Config
}

// connectCreds waits, within the connection attempt's deadline, for the
// gateway's Connect identity before the handshake: the first connection
// to a Connect backend may be made before the agent has answered, and
// should wait for it rather than fail and back off.
type connectCreds struct {
	credentials.TransportCredentials
	id ConnectIdentity
}

func (c connectCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if err := c.id.Ready(ctx); err != nil {
		return nil, nil, err
	}
	return c.TransportCredentials.ClientHandshake(ctx, authority, conn)
}

func (c connectCreds) Clone() credentials.TransportCredentials {
	return connectCreds{c.TransportCredentials.Clone(), c.id}
}

// trackedCreds tells the connection's tracker how each handshake ended, so
// that a backend refused for its certificate says why in /backends rather
// than only "TRANSIENT_FAILURE".
type trackedCreds struct {
	credentials.TransportCredentials
	t *connTracker
}

func (c trackedCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	nc, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, conn)
	if err != nil {
		c.t.failed(fmt.Errorf("handshake: %w", err))
	}
	return nc, info, err
}

func (c trackedCreds) Clone() credentials.TransportCredentials {
	return trackedCreds{c.TransportCredentials.Clone(), c.t}
}
