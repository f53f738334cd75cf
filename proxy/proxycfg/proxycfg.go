// Package proxycfg is forwarding's part of the config file, the proxy:
// section: pure data with its YAML keys, documented zero values, defaults
// and validation.
//
// It belongs to proxy, which re-exports Settings and applies its defaults in
// New. It is a package of its own only so that the config file's schema
// does not pull in grpc-go, which proxy itself needs: it imports the
// standard library alone, and config's imports test holds it to that.
package proxycfg

import (
	"fmt"
	"net/netip"
	"time"
)

// DefaultMaxMessageBytes is gRPC's own default limit for a received message.
const DefaultMaxMessageBytes = 4 << 20

// Settings tunes forwarding. The zero value is ready to use.
type Settings struct {
	// MaxRequestBytes limits one message sent by a client, on both hops.
	// Zero means DefaultMaxMessageBytes.
	MaxRequestBytes int `yaml:"max_request_bytes"`
	// MaxResponseBytes limits one message sent by a backend, on both hops.
	// Zero means DefaultMaxMessageBytes.
	MaxResponseBytes int `yaml:"max_response_bytes"`
	// DefaultTimeout is the deadline given to calls that arrive without one.
	// Zero means such calls get none, as they would without the gateway.
	DefaultTimeout time.Duration `yaml:"default_timeout"`
	// TrustedProxies are the addresses or CIDR prefixes of clients whose
	// x-forwarded-for and x-forwarded-host the gateway keeps (and appends
	// to). From anyone else they are replaced: a client cannot choose the
	// address a backend sees. Empty means nobody is trusted.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// Limits bound what one client can hold of the gateway.
	Limits Limits `yaml:"limits"`
	// Engine is the forwarding engine: EngineRelay, HTTP/2 frames relayed
	// between the client's and the backend's connections without a stream
	// of grpc-go on either side, or EngineGRPC, a grpc-go server and
	// client stream per call (the reference, and the fallback). Empty
	// means EngineRelay.
	Engine string `yaml:"engine"`
}

// RoutePolicy is the traffic policy of one route: the keys of a routes:
// entry that forwarding applies. The zero value is the proxy's settings
// alone.
type RoutePolicy struct {
	// Timeout is the deadline given to the route's calls that arrive
	// without one, instead of default_timeout. Zero means default_timeout.
	Timeout time.Duration `yaml:"timeout"`
	// MaxTimeout caps the deadline of the route's calls: a client's
	// grpc-timeout longer than it, and a call without one, get
	// MaxTimeout, and the backend is sent the capped grpc-timeout. Zero
	// means no cap.
	MaxTimeout time.Duration `yaml:"max_timeout"`
	// IdleTimeout ends a call of the route that moves nothing (no message
	// bytes, no headers) in either direction for that long, with
	// DEADLINE_EXCEEDED: the call may have done its work on the backend,
	// which that code says and UNAVAILABLE (retry, it is safe) would
	// deny. Zero means no idle limit.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// Retry says which failed calls the gateway sends to another backend;
	// the zero value retries none.
	Retry Retry `yaml:"retry"`
}

// Validate reports the first field that cannot be used, by its YAML key.
func (r RoutePolicy) Validate() error {
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"timeout", r.Timeout}, {"max_timeout", r.MaxTimeout}, {"idle_timeout", r.IdleTimeout}} {
		if d.v < 0 {
			return fmt.Errorf("%s: must not be negative, got %s", d.key, d.v)
		}
	}
	if r.MaxTimeout > 0 && r.Timeout > r.MaxTimeout {
		return fmt.Errorf("timeout: %s is longer than max_timeout %s, which caps it", r.Timeout, r.MaxTimeout)
	}
	if err := r.Retry.Validate(); err != nil {
		return fmt.Errorf("retry.%w", err)
	}
	return nil
}

// The forwarding engines.
const (
	EngineGRPC  = "grpc"
	EngineRelay = "relay"
)

// Limits bound what clients can make the gateway hold: streams, header
// bytes, connections and their time. Every engine enforces the same
// values. The zero value of each field is its documented default; none is
// unlimited by default.
type Limits struct {
	// MaxConcurrentStreams per client connection, advertised in SETTINGS;
	// a stream beyond it is refused (REFUSED_STREAM), which a client may
	// retry. Zero means 1000.
	MaxConcurrentStreams uint32 `yaml:"max_concurrent_streams"`
	// MaxHeaderListBytes bounds a request's header block once decoded
	// (HPACK included, so a small block that expands is bounded too),
	// advertised in SETTINGS. Zero means 16 KiB.
	MaxHeaderListBytes uint32 `yaml:"max_header_list_bytes"`
	// HandshakeTimeout is how long a new connection has to finish its TLS
	// handshake and HTTP/2 preface; a client that sends it slowly is cut.
	// Zero means 10s.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// MinPingInterval is the shortest interval between a client's
	// keepalive PINGs that the gateway accepts, with or without calls in
	// flight; a client that pings more often gets GOAWAY
	// ENHANCE_YOUR_CALM. Zero means 10s.
	MinPingInterval time.Duration `yaml:"min_ping_interval"`
	// IdleTimeout closes (GOAWAY) a connection without calls for that long.
	// Zero means 5m.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxConnectionAge sends GOAWAY to a connection that old, so that
	// long-lived clients reconnect and spread over gateway replicas; its
	// calls in flight go on for MaxConnectionAgeGrace. Zero means 30m.
	MaxConnectionAge time.Duration `yaml:"max_connection_age"`
	// MaxConnectionAgeGrace is how long calls in flight on a connection
	// past its age may go on before the connection is closed under them.
	// Zero means no end: a long stream is never cut.
	MaxConnectionAgeGrace time.Duration `yaml:"max_connection_age_grace"`
	// MaxConnections bounds the client connections open at once; one more
	// is closed as soon as it is accepted. Zero means 10000.
	MaxConnections int `yaml:"max_connections"`
}

// Validate reports the first field that cannot be used, by its YAML key.
func (l Limits) Validate() error {
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"handshake_timeout", l.HandshakeTimeout}, {"min_ping_interval", l.MinPingInterval}, {"idle_timeout", l.IdleTimeout},
		{"max_connection_age", l.MaxConnectionAge}, {"max_connection_age_grace", l.MaxConnectionAgeGrace},
	} {
		if d.v < 0 {
			return fmt.Errorf("%s: must not be negative, got %s", d.key, d.v)
		}
	}
	if l.MaxConnections < 0 {
		return fmt.Errorf("max_connections: must not be negative, got %d", l.MaxConnections)
	}
	return nil
}

// WithDefaults is l with every zero value replaced by what it means.
func (l Limits) WithDefaults() Limits {
	if l.MaxConcurrentStreams == 0 {
		l.MaxConcurrentStreams = 1000
	}
	if l.MaxHeaderListBytes == 0 {
		l.MaxHeaderListBytes = 16 << 10
	}
	if l.HandshakeTimeout == 0 {
		l.HandshakeTimeout = 10 * time.Second
	}
	if l.MinPingInterval == 0 {
		l.MinPingInterval = 10 * time.Second
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = 5 * time.Minute
	}
	if l.MaxConnectionAge == 0 {
		l.MaxConnectionAge = 30 * time.Minute
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = 10000
	}
	return l
}

// Validate reports the first field that cannot be used, by its YAML key.
func (s Settings) Validate() error {
	switch {
	case s.MaxRequestBytes < 0:
		return fmt.Errorf("max_request_bytes: must not be negative, got %d", s.MaxRequestBytes)
	case s.MaxResponseBytes < 0:
		return fmt.Errorf("max_response_bytes: must not be negative, got %d", s.MaxResponseBytes)
	case s.DefaultTimeout < 0:
		return fmt.Errorf("default_timeout: must not be negative, got %s", s.DefaultTimeout)
	case s.Engine != "" && s.Engine != EngineGRPC && s.Engine != EngineRelay:
		return fmt.Errorf("engine: %q is not %s or %s", s.Engine, EngineGRPC, EngineRelay)
	}
	if err := s.Limits.Validate(); err != nil {
		return fmt.Errorf("limits.%w", err)
	}
	_, err := s.TrustedPrefixes()
	return err
}

// WithDefaults is s with every zero value replaced by what it means.
func (s Settings) WithDefaults() Settings {
	if s.MaxRequestBytes == 0 {
		s.MaxRequestBytes = DefaultMaxMessageBytes
	}
	if s.MaxResponseBytes == 0 {
		s.MaxResponseBytes = DefaultMaxMessageBytes
	}
	s.Limits = s.Limits.WithDefaults()
	if s.Engine == "" {
		s.Engine = EngineRelay
	}
	return s
}

// TrustedPrefixes is TrustedProxies as prefixes; a bare address is a
// prefix of its own.
func (s Settings) TrustedPrefixes() ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(s.TrustedProxies))
	for i, p := range s.TrustedProxies {
		if pr, err := netip.ParsePrefix(p); err == nil {
			out = append(out, pr.Masked())
			continue
		}
		a, err := netip.ParseAddr(p)
		if err != nil {
			return nil, fmt.Errorf("trusted_proxies[%d]: %q is neither an IP address nor a CIDR prefix", i, p)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// ListenTLS is TLS on the listener clients call: the listen_tls: section.
// The zero value is no TLS.
type ListenTLS struct {
	// CertFile and KeyFile are the gateway's certificate chain and key,
	// PEM. Files replaced on disk are used by new connections within a
	// second; open connections keep theirs.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCAFile, when set, verifies client certificates against these
	// CAs (mTLS); RequireClientCert refuses a client without one at the
	// handshake.
	ClientCAFile      string `yaml:"client_ca_file"`
	RequireClientCert bool   `yaml:"require_client_cert"`
	// MinVersion is "1.2" or "1.3". Empty means 1.2.
	MinVersion string `yaml:"min_version"`
}

// Enabled reports whether TLS is configured.
func (t ListenTLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// Validate reports the first field that cannot be used, by its YAML key.
func (t ListenTLS) Validate() error {
	switch {
	case (t.CertFile == "") != (t.KeyFile == ""):
		return fmt.Errorf("cert_file and key_file go together")
	case t.ClientCAFile != "" && !t.Enabled():
		return fmt.Errorf("client_ca_file: needs cert_file and key_file")
	case t.RequireClientCert && t.ClientCAFile == "":
		return fmt.Errorf("require_client_cert: needs client_ca_file")
	}
	switch t.MinVersion {
	case "", "1.2", "1.3":
	default:
		return fmt.Errorf("min_version: %q is not 1.2 or 1.3", t.MinVersion)
	}
	return nil
}
