// Package grpcwebcfg is gRPC-Web's part of the config file, the grpc_web:
// section: pure data with its YAML keys, documented zero values and
// validation. It is a package of its own so that the config file's schema
// imports the standard library alone (config's imports test holds it to
// that).
package grpcwebcfg

import (
	"fmt"
	"net/url"
	"strings"
)

// Settings turns on gRPC-Web on the gateway's listener. The zero value is
// off.
type Settings struct {
	// Enabled serves gRPC-Web (application/grpc-web, -web+proto and
	// -web-text) beside gRPC on the same listener. Off by default: a
	// gateway that answers a second protocol on its port should say so in
	// its config.
	Enabled bool `yaml:"enabled"`
	// AllowedOrigins are the origins ("https://app.example.com", scheme,
	// host and port, no path) whose pages may call the gateway across
	// origins (CORS), or "*" for any. Empty means none: only pages served
	// from the gateway's own origin (or through a proxy in front of it)
	// may call it from a browser.
	AllowedOrigins []string `yaml:"allowed_origins"`
}

// Validate reports the first field that cannot be used, by its YAML key.
func (s Settings) Validate() error {
	for i, o := range s.AllowedOrigins {
		if err := validOrigin(o); err != nil {
			return fmt.Errorf("allowed_origins[%d]: %q %w", i, o, err)
		}
	}
	return nil
}

// validOrigin accepts "*" and what a browser sends as Origin: a scheme
// (http or https), a host and an optional port, nothing else.
func validOrigin(o string) error {
	if o == "*" {
		return nil
	}
	u, err := url.Parse(o)
	switch {
	case err != nil:
		return fmt.Errorf("is not an origin: %w", err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("is not an origin: the scheme must be http or https (like https://app.example.com)")
	case u.Host == "" || u.User != nil:
		return fmt.Errorf("is not an origin: it needs a host and nothing else (like https://app.example.com)")
	case u.Path != "" || u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(o, "/"):
		return fmt.Errorf("is not an origin: an origin has no path (like https://app.example.com)")
	case o != strings.ToLower(o):
		return fmt.Errorf("is not an origin as browsers send it: write it in lower case")
	}
	return nil
}
