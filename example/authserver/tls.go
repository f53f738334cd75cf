package authserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	consul "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Service meta with which a backend asks healthgate to dial it with TLS.
// They are healthcheck.MetaTLS and healthcheck.MetaTLSServerName, written
// out so that the example does not import the gateway (a test holds them
// equal).
const (
	MetaTLS           = "healthgate_tls"
	MetaTLSServerName = "healthgate_tls_server_name"
)

// BackendTLSHeader is the response header in which a backend serving TLS
// says how the caller reached it: the TLS version and the client
// certificate's common name, e.g. "TLS 1.3, client certificate
// CN=healthgate". Behind the gateway it describes the gateway's hop.
const BackendTLSHeader = "x-backend-tls"

// TLS is TLS on the backend's gRPC listener. The files are read once, by
// New: a renewed certificate needs a restart (this is an example).
type TLS struct {
	// CertFile and KeyFile are the backend's certificate and key, PEM.
	// Both are required.
	CertFile, KeyFile string
	// ClientCAFile, when set, makes the listener mTLS: a client must
	// present a certificate signed by one of these CAs (PEM) or the
	// handshake fails. Empty means clients are not asked for one.
	ClientCAFile string
	// ServerName is the name that clients verify the certificate for,
	// when it is not the host of Config.GRPCAddr. It is registered as the
	// meta healthgate_tls_server_name and used by Consul's check.
	ServerName string
}

// Validate reports whether t can be used: the files are checked by New.
func (t *TLS) Validate() error {
	if t.CertFile == "" || t.KeyFile == "" {
		return errors.New("tls: cert and key files are both required")
	}
	return nil
}

// serverOption loads the files into the gRPC server's credentials.
func (t *TLS) serverOption() (grpc.ServerOption, error) {
	pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: load %s and %s: %w", t.CertFile, t.KeyFile, err)
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
	if t.ClientCAFile != "" {
		pem, err := os.ReadFile(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls: client ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls: client ca: %s holds no PEM certificate", t.ClientCAFile)
		}
		// Required, not "verified if given": the gateway's path must be
		// mTLS, so Consul's check has to present a certificate too (see
		// register).
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return grpc.Creds(credentials.NewTLS(c)), nil
}

// register adds to reg what TLS changes: the meta that makes healthgate
// dial the instance with TLS, and a gRPC check that speaks TLS.
//
// Consul's gRPC check can use TLS (GRPCUseTLS, TLSServerName), but its
// registration has no field for a client certificate. What Consul 1.20
// offers instead is the agent's own: with enable_agent_tls_for_checks =
// true, HTTP and gRPC checks use the agent's tls.internal_rpc (or
// tls.defaults) cert_file and key_file as their client certificate and
// verify the backend against its ca_file (tlsutil's
// OutgoingTLSConfigForCheck). So an mTLS backend needs an agent holding a
// certificate from a CA in ClientCAFile; the demo's agent is given one.
// The rejected alternatives: asking for client certificates without
// requiring them would let any client in without one, and TLSSkipVerify
// would only drop the agent's check of the backend, not present a
// certificate.
func (t *TLS) register(reg *consul.AgentServiceRegistration) {
	if reg.Meta == nil {
		reg.Meta = map[string]string{}
	}
	reg.Meta[MetaTLS] = "true"
	if t.ServerName != "" {
		reg.Meta[MetaTLSServerName] = t.ServerName
	}
	if reg.Check != nil {
		reg.Check.GRPCUseTLS = true
		reg.Check.TLSServerName = t.ServerName
	}
}

// peerTLS describes how the caller of ctx reached the server, for
// BackendTLSHeader; "" for a plaintext connection.
func peerTLS(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return ""
	}
	desc := tls.VersionName(info.State.Version)
	if certs := info.State.PeerCertificates; len(certs) > 0 {
		return desc + ", client certificate CN=" + certs[0].Subject.CommonName
	}
	return desc + ", no client certificate"
}
