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
