package discovery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// ConnectCA is the gateway's identity in Consul Connect: its own leaf
// certificate and the CA's roots, each kept current by a blocking query on
// the local agent, so that a renewed leaf or a rotated CA is used by the
// next handshake without a restart. Nothing is asked of Consul before a
// backend needs it (ClientTLS or Ready): a gateway without Connect-native
// backends needs no service:write right on its Connect name.
type ConnectCA struct {
	log *slog.Logger
	// onQuery is ConsulConfig.OnQuery, for metrics.
	onQuery func(kind string, took time.Duration, err error)

	wanted   chan struct{} // closed by the first demand
	wantOnce sync.Once
	// reset carries new settings to Run; it holds at most the latest.
	reset chan ConsulSettings

	mu       sync.Mutex
	settings ConsulSettings
	leaf     *connectLeaf
	roots    *connectRoots
	lastErr  error
	changed  chan struct{} // closed and replaced on every change above
}

type connectLeaf struct {
	cert        *tls.Certificate
	serial      string
	uri         string
	validBefore time.Time
}

type connectRoots struct {
	pool        *x509.CertPool
	trustDomain string
	ids         []string
}

// NewConnectCA returns the Connect identity configured by settings
// (Connect.Service and how to reach the agent); onQuery may be nil.
func NewConnectCA(settings ConsulSettings, onQuery func(kind string, took time.Duration, err error), logger *slog.Logger) *ConnectCA {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &ConnectCA{
		log:      logger.With("component", "connect"),
		onQuery:  onQuery,
		wanted:   make(chan struct{}),
		reset:    make(chan ConsulSettings, 1),
		settings: settings.WithDefaults(),
		changed:  make(chan struct{}),
	}
}

// Set applies reloaded Consul settings. The certificate and roots in hand
// stay in use until the agent's answers under the new settings replace
// them, so that a reload never fails a handshake.
func (ca *ConnectCA) Set(settings ConsulSettings) {
	settings = settings.WithDefaults()
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if connectKey(ca.settings) == connectKey(settings) {
		return
	}
	ca.settings = settings
	select {
	case <-ca.reset:
	default:
	}
	ca.reset <- settings
}

// connectKey is what of the Consul settings the Connect queries depend on.
func connectKey(s ConsulSettings) any {
	return struct {
		addr, token, svc string
		tls              ConsulTLS
	}{s.Address, s.Token, s.Connect.Service, s.TLS}
}

func (ca *ConnectCA) want() { ca.wantOnce.Do(func() { close(ca.wanted) }) }

// Run keeps the certificate and roots current until ctx ends, from the
// first demand on.
func (ca *ConnectCA) Run(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-ca.wanted:
	}
	ca.mu.Lock()
	settings := ca.settings
	ca.mu.Unlock()
	for {
		runCtx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		if c, err := NewConsul(ConsulConfig{ConsulSettings: settings, OnQuery: ca.onQuery}, ca.log); err != nil {
			ca.failed(err)
		} else {
			svc := settings.Connect.Service
			ca.log.Info("asking the Consul agent for the gateway's Connect certificate", "service", svc)
			wg.Add(2)
			go func() {
				defer wg.Done()
				blockingLoop(runCtx, c, "connect_leaf", "Connect leaf certificate of "+svc, func(q *api.QueryOptions) (*api.LeafCert, *api.QueryMeta, error) {
					leaf, meta, err := c.client.Agent().ConnectCALeaf(svc, q)
					if err != nil {
						ca.failed(err)
					}
					return leaf, meta, err
				}, func(l *api.LeafCert, _ bool) { ca.setLeaf(l) })
			}()
			go func() {
				defer wg.Done()
				blockingLoop(runCtx, c, "connect_roots", "Connect CA roots", func(q *api.QueryOptions) (*api.CARootList, *api.QueryMeta, error) {
					roots, meta, err := c.client.Agent().ConnectCARoots(q)
					if err != nil {
						ca.failed(err)
					}
					return roots, meta, err
				}, func(r *api.CARootList, _ bool) { ca.setRoots(r) })
			}()
		}
		select {
		case <-ctx.Done():
		case settings = <-ca.reset:
		}
		cancel()
		wg.Wait()
		if ctx.Err() != nil {
			return
		}
	}
}

func (ca *ConnectCA) failed(err error) {
	ca.mu.Lock()
	ca.lastErr = err
	ca.mu.Unlock()
}

func (ca *ConnectCA) setLeaf(l *api.LeafCert) {
	cert, err := tls.X509KeyPair([]byte(l.CertPEM), []byte(l.PrivateKeyPEM))
	if err != nil {
		// The error of X509KeyPair names no key material; say no more.
		ca.log.Error("the Consul agent's Connect leaf certificate cannot be used; keeping the previous one", "serial", l.SerialNumber, "err", err)
		ca.failed(fmt.Errorf("leaf certificate %s: %w", l.SerialNumber, err))
		return
	}
	ca.log.Info("Connect leaf certificate received", "uri", l.ServiceURI, "serial", l.SerialNumber, "valid_before", l.ValidBefore)
	ca.update(func() {
		ca.leaf = &connectLeaf{cert: &cert, serial: l.SerialNumber, uri: l.ServiceURI, validBefore: l.ValidBefore}
	})
}

func (ca *ConnectCA) setRoots(r *api.CARootList) {
	if r == nil || r.TrustDomain == "" {
		// Connect is off on this cluster: the agent answers, with nothing.
		ca.failed(errors.New("the Consul agent has no Connect CA (is Connect enabled?)"))
		return
	}
	pool := x509.NewCertPool()
	var ids []string
	for _, root := range r.Roots {
		if !appendPEM(pool, root.RootCertPEM) {
			ca.log.Warn("a Connect CA root holds no usable certificate; skipped", "id", root.ID)
			continue
		}
		ids = append(ids, root.ID)
	}
	if len(ids) == 0 {
		ca.failed(errors.New("the Consul agent lists no usable Connect CA root"))
		return
	}
	ca.log.Info("Connect CA roots received", "trust_domain", r.TrustDomain, "roots", ids, "active", r.ActiveRootID)
	ca.update(func() { ca.roots = &connectRoots{pool: pool, trustDomain: r.TrustDomain, ids: ids} })
}

// appendPEM adds every certificate of a PEM block list to pool, and reports
// whether there was one.
func appendPEM(pool *x509.CertPool, s string) bool {
	rest, added := []byte(s), false
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return added
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			continue
		}
		pool.AddCert(c)
		added = true
	}
}

func (ca *ConnectCA) update(f func()) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	f()
	ca.lastErr = nil
	close(ca.changed)
	ca.changed = make(chan struct{})
}

func (ca *ConnectCA) current() (*connectLeaf, *connectRoots, error, chan struct{}) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.leaf, ca.roots, ca.lastErr, ca.changed
}

// Ready waits until both the gateway's certificate and the CA's roots are
// known, or ctx ends; its error then says what the agent last answered.
func (ca *ConnectCA) Ready(ctx context.Context) error {
	ca.want()
	for {
		leaf, roots, lastErr, changed := ca.current()
		if leaf != nil && roots != nil {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			what := "leaf certificate"
			if leaf != nil {
				what = "CA roots"
			}
			if lastErr != nil {
				return fmt.Errorf("no Connect %s from the Consul agent yet: %w", what, lastErr)
			}
			return fmt.Errorf("no Connect %s from the Consul agent yet", what)
		}
	}
}

// ClientTLS is TLS that presents the gateway's current Connect certificate
// and accepts only a backend whose certificate chains to the current
// Connect roots and names Consul service service (in datacenter, unless
// empty). It reads both at each handshake: a renewed leaf or rotated CA
// needs no new config. Call Ready first: before the agent has answered,
// the handshake fails.
func (ca *ConnectCA) ClientTLS(service, datacenter string) *tls.Config {
	ca.want()
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// A Connect certificate names a SPIFFE ID, not a host name: the
		// chain and the ID are checked by VerifyConnection instead.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, roots, _, _ := ca.current()
			return verifyConnect(roots, cs.PeerCertificates, service, datacenter)
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			leaf, _, _, _ := ca.current()
			if leaf == nil {
				return nil, errors.New("no Connect leaf certificate from the Consul agent yet")
			}
			return leaf.cert, nil
		},
	}
}

// ServerTLS is TLS for a Connect-native server: it presents the current
// leaf certificate (waiting, within the handshake, for the first) and asks
// the client for one from the Connect CA. Asked, not required: who may
// call is the intentions' decision, taken per call by the server, which
// must refuse a call without a certificate; Consul's own health check
// presents none.
func (ca *ConnectCA) ServerTLS() *tls.Config {
	ca.want()
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if err := ca.Ready(hello.Context()); err != nil {
				return nil, err
			}
			leaf, _, _, _ := ca.current()
			return leaf.cert, nil
		},
		ClientAuth: tls.RequestClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil
			}
			_, roots, _, _ := ca.current()
			return verifyConnect(roots, cs.PeerCertificates, "", "")
		},
	}
}

// verifyConnect checks a peer's chain against the Connect roots and its
// SPIFFE ID (spiffe://<trust domain>/[ap/<partition>/]ns/<ns>/dc/<dc>/svc/<service>)
// against the service expected; "" takes any service.
func verifyConnect(roots *connectRoots, chain []*x509.Certificate, service, datacenter string) error {
	if roots == nil {
		return errors.New("no Connect CA roots from the Consul agent yet")
	}
	if len(chain) == 0 {
		return errors.New("the peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots.pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("the peer's certificate is not from the Connect CA: %w", err)
	}
	var seen []string
	for _, u := range chain[0].URIs {
		seen = append(seen, u.String())
		if spiffeNames(u, roots.trustDomain, service, datacenter) {
			return nil
		}
	}
	if service == "" {
		return fmt.Errorf("the peer's certificate names %v, no Connect service of trust domain %s", seen, roots.trustDomain)
	}
	return fmt.Errorf("the peer's Connect certificate names %v, not service %q of trust domain %s", seen, service, roots.trustDomain)
}

// spiffeNames reports whether u is the Connect ID of a service in the
// trust domain: of service and datacenter, unless they are empty.
func spiffeNames(u *url.URL, trustDomain, service, datacenter string) bool {
	if u.Scheme != "spiffe" || !strings.EqualFold(u.Host, trustDomain) {
		return false
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts)%2 != 0 {
		return false
	}
	kv := map[string]string{}
	for i := 0; i < len(parts); i += 2 {
		kv[parts[i]] = parts[i+1]
	}
	return kv["svc"] != "" && kv["ns"] != "" && (service == "" || kv["svc"] == service) && (datacenter == "" || kv["dc"] == datacenter)
}

// ConnectStatus is what the admin endpoint shows of the Connect identity;
// never key material.
type ConnectStatus struct {
	Service     string    `json:"service"`
	URI         string    `json:"uri,omitempty"`
	Serial      string    `json:"serial,omitempty"`
	ValidBefore time.Time `json:"valid_before,omitzero"`
	TrustDomain string    `json:"trust_domain,omitempty"`
	Roots       []string  `json:"roots,omitempty"`
	Error       string    `json:"error,omitempty"`
}

// Status is the identity in hand.
func (ca *ConnectCA) Status() ConnectStatus {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	s := ConnectStatus{Service: ca.settings.Connect.Service}
	if ca.leaf != nil {
		s.URI, s.Serial, s.ValidBefore = ca.leaf.uri, ca.leaf.serial, ca.leaf.validBefore
	}
	if ca.roots != nil {
		s.TrustDomain, s.Roots = ca.roots.trustDomain, ca.roots.ids
	}
	if ca.lastErr != nil {
		s.Error = ca.lastErr.Error()
	}
	return s
}
