package authserver

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/big"
	"strings"

	consul "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/discovery/discoverycfg"
)

// connectNative makes the backend a Consul Connect-native service: it
// serves TLS with its own Connect leaf certificate, checks a client's
// certificate against the Connect CA at the handshake, and asks the local
// agent for each call whether the intentions let the caller in. Deciding
// per call rather than per connection is what makes an intention changed
// in Consul apply to connections already open, such as the gateway's one
// long-lived connection.
type connectNative struct {
	ca      *discovery.ConnectCA
	agent   *consul.Agent
	service string
}

func newConnectNative(cfg Config, client *consul.Client) *connectNative {
	settings := discovery.ConsulSettings{
		Address: cfg.ConsulAddr, Token: cfg.ConsulToken,
		Connect: discoverycfg.Connect{Service: cfg.ServiceName},
	}
	return &connectNative{
		ca:      discovery.NewConnectCA(settings, nil, cfg.Logger),
		agent:   client.Agent(),
		service: cfg.ServiceName,
	}
}

func (c *connectNative) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(c.ca.ServerTLS())),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := c.authorize(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := c.authorize(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
}

// authorize lets a call in when the intentions allow its caller. Health
// is open to every caller: it is no secret, and Consul's own check of the
// backend has no certificate to present.
func (c *connectNative) authorize(ctx context.Context, fullMethod string) error {
	if strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") {
		return nil
	}
	var cert *x509.Certificate
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
			cert = info.State.PeerCertificates[0]
		}
	}
	if cert == nil {
		return status.Errorf(codes.Unauthenticated, "connect: %s takes calls only with a Connect client certificate", c.service)
	}
	var uri string
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" {
			uri = u.String()
			break
		}
	}
	res, err := c.agent.ConnectAuthorize(&consul.AgentAuthorizeParams{
		Target: c.service, ClientCertURI: uri, ClientCertSerial: serialHex(cert.SerialNumber),
	})
	if err != nil {
		return status.Errorf(codes.Unavailable, "connect: cannot ask the Consul agent whether %s may call %s: %v", uri, c.service, err)
	}
	if !res.Authorized {
		return status.Errorf(codes.PermissionDenied, "connect: %s may not call %s: %s", uri, c.service, res.Reason)
	}
	return nil
}

// serialHex is a certificate serial the way Consul writes it: hex bytes
// joined by colons.
func serialHex(n *big.Int) string {
	b := n.Bytes()
	parts := make([]string, len(b))
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02x", x)
	}
	return strings.Join(parts, ":")
}
