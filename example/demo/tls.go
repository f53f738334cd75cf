package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/healthgate/healthgate/example/democa"
)

// Names of the demo's certificates, as the other side sees them.
const (
	gatewayServerCN = "healthgate"         // the gateway's listener
	gatewayClientCN = "healthgate-gateway" // the gateway dialling backends
	demoClientCN    = "healthgate-demo"    // the demo looking at backends directly
	consulAgentCN   = "consul-agent"       // Consul's checks of the backends
)

// demoTLS is the -tls mode's certificates: one demo CA that signs every
// certificate, so that each side trusts the others by that CA alone.
type demoTLS struct {
	ca     *democa.CA
	dir    string
	caFile string
	// gateway is the listener's pair; gatewayClient the one the gateway
	// presents to backends; consul the agent's, presented by its checks;
	// backends[i] each backend's; demo the demo's own, to watch backends.
	gateway, gatewayClient, consul, demo pair
	backends                             []pair
}

type pair struct{ cert, key string }

// newDemoTLS writes the demo CA and every certificate into dir.
func newDemoTLS(dir string, nBackends int) (*demoTLS, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := democa.New("healthgate demo CA")
	if err != nil {
		return nil, err
	}
	d := &demoTLS{ca: ca, dir: dir}
	if d.caFile, err = ca.WriteCA(dir); err != nil {
		return nil, err
	}
	local := []string{"127.0.0.1", "localhost"}
	leaves := []struct {
		name string
		leaf democa.Leaf
		into *pair
	}{
		{"gateway", democa.Leaf{CommonName: gatewayServerCN, Hosts: local, Server: true}, &d.gateway},
		{"gateway-client", democa.Leaf{CommonName: gatewayClientCN, Client: true}, &d.gatewayClient},
		// The agent's certificate is also its internal RPC one, hence both
		// usages; the dev agent does not use it for RPC (no verify_*).
		{"consul", democa.Leaf{CommonName: consulAgentCN, Hosts: local, Server: true, Client: true}, &d.consul},
		{"demo-client", democa.Leaf{CommonName: demoClientCN, Client: true}, &d.demo},
	}
	d.backends = make([]pair, nBackends)
	for i := range d.backends {
		leaves = append(leaves, struct {
			name string
			leaf democa.Leaf
			into *pair
		}{fmt.Sprintf("backend-%d", i+1), democa.Leaf{CommonName: fmt.Sprintf("backend-%d", i+1), Hosts: local, Server: true}, &d.backends[i]})
	}
	for _, l := range leaves {
		if l.into.cert, l.into.key, err = ca.WriteLeaf(dir, l.name, l.leaf); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// consulArgs give the agent a certificate from the demo CA for its checks.
// Consul's gRPC check has no field for a client certificate: with
// enable_agent_tls_for_checks the agent presents its own internal_rpc
// certificate and verifies the backend against its ca_file.
func (d *demoTLS) consulArgs() []string {
	return []string{
		"-hcl", "enable_agent_tls_for_checks = true",
		"-hcl", fmt.Sprintf("tls { internal_rpc { ca_file = %q cert_file = %q key_file = %q } }", d.caFile, d.consul.cert, d.consul.key),
	}
}

// backendArgs make backend i serve mTLS: its certificate, and the demo CA
// as the only signer of client certificates it accepts.
func (d *demoTLS) backendArgs(i int) []string {
	return []string{"-tls-cert", d.backends[i].cert, "-tls-key", d.backends[i].key, "-tls-client-ca", d.caFile}
}

// gatewayConfig writes healthgate's config: TLS on the listener, and one
// route whose Consul service is dialled with backend_tls (the demo CA to
// verify the backends, the gateway's client certificate for their mTLS).
// A route in the file is authoritative, so the backends' route tags do not
// add a second, plaintext way to them.
func (d *demoTLS) gatewayConfig() (path, text string, err error) {
	text = fmt.Sprintf(`listen: %s
admin: %s
listen_tls:
  cert_file: %s
  key_file: %s
consul:
  address: %s
routes:
  - service: example.auth.v1.Authorization
    consul_service: auth
    backend_tls:
      ca_file: %s
      cert_file: %s
      key_file: %s
`, gatewayAt, adminAt, d.gateway.cert, d.gateway.key, consulHTTP, d.caFile, d.gatewayClient.cert, d.gatewayClient.key)
	path = filepath.Join(d.dir, "healthgate.yaml")
	return path, text, os.WriteFile(path, []byte(text), 0o600)
}

// clientCreds verify the gateway against the demo CA; no client
// certificate, the gateway asks for none.
func (d *demoTLS) clientCreds() grpc.DialOption {
	return grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: d.ca.Pool(), MinVersion: tls.VersionTLS12}))
}

// backendCreds are the demo's own, to watch a backend directly.
func (d *demoTLS) backendCreds() (grpc.DialOption, error) {
	pair, err := tls.LoadX509KeyPair(d.demo.cert, d.demo.key)
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: d.ca.Pool(), Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12,
	})), nil
}

// clientCreds of the plaintext demo, or of d.
func clientCreds(d *demoTLS) grpc.DialOption {
	if d == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return d.clientCreds()
}

func backendCreds(d *demoTLS) (grpc.DialOption, error) {
	if d == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials()), nil
	}
	return d.backendCreds()
}

// refusedWithoutCert is what a client trusting the demo CA but holding no
// certificate gets from addr: the handshake completes on its side (TLS
// 1.3 sends the client's certificate last), and the server's alert is
// what it reads next. nil means it was served.
func refusedWithoutCert(ctx context.Context, d *demoTLS, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	dialer := tls.Dialer{Config: &tls.Config{RootCAs: d.ca.Pool(), NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12}}
	conn, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	// A served client reads the server's HTTP/2 SETTINGS here.
	if _, err := conn.Read(make([]byte, 1)); err != nil {
		return err
	}
	return nil
}

// describeConn says how the client's connection to the gateway is secured.
func describeConn(st tls.ConnectionState) string {
	cn := "?"
	if len(st.PeerCertificates) > 0 {
		cn = st.PeerCertificates[0].Subject.CommonName
	}
	return fmt.Sprintf("%s, ALPN %q, %s, server certificate CN=%s verified against the demo CA",
		tls.VersionName(st.Version), st.NegotiatedProtocol, tls.CipherSuiteName(st.CipherSuite), cn)
}

// waitConsulChecks waits until the agent has run its gRPC check of every
// service ID over TLS and it passed, and returns their outputs. It reads
// the agent, not the catalog: the catalog takes a changed output of a
// passing check only after check_update_interval.
func waitConsulChecks(ctx context.Context, ids []string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		var checks map[string]struct{ ServiceID, Status, Output string }
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+consulHTTP+"/v1/agent/checks", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&checks)
			resp.Body.Close()
		}
		out := map[string]string{}
		for _, c := range checks {
			if c.Status == "passing" && strings.HasSuffix(c.Output, ": success") {
				out[c.ServiceID] = c.Output
			}
		}
		done := true
		for _, id := range ids {
			if _, ok := out[id]; !ok {
				done = false
			}
		}
		if done {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("consul's gRPC checks over mTLS did not pass within 30s (last: %v)", checks)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
