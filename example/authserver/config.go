package authserver

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"
)

const (
	// DefaultServiceName is the Consul service name used when Config leaves it
	// empty; it matches the article's service so its client config carries over.
	DefaultServiceName = "auth"
	// DefaultCheckInterval is short so that a demo or test sees Consul react to
	// a stopped backend within a couple of seconds.
	DefaultCheckInterval = time.Second
)

// Config describes one example backend.
type Config struct {
	// GRPCAddr is the host:port the gRPC server listens on, e.g.
	// 127.0.0.1:8080. Port 0 picks a free port; read it back with
	// Server.GRPCAddr.
	GRPCAddr string
	// HTTPAddr is the host:port of the /update and /status endpoints. Empty
	// means no HTTP server.
	HTTPAddr string
	// ConsulAddr is the Consul agent's HTTP address (host:port, optionally
	// with an http:// or https:// scheme). Empty means do not register.
	ConsulAddr string
	// ConsulToken is the ACL token for registration. Empty falls back to
	// whatever the Consul API defaults find (CONSUL_HTTP_TOKEN).
	ConsulToken string
	// ServiceName is the Consul service name; DefaultServiceName if empty.
	ServiceName string
	// ServiceID is the Consul service ID; ServiceName-host-port if empty, so
	// several backends on one agent do not overwrite each other.
	ServiceID string
	// CheckInterval is the interval of the Consul gRPC check;
	// DefaultCheckInterval if zero.
	CheckInterval time.Duration
	// DrainDelay is how long the backend keeps serving after it has left
	// Consul and reported NOT_SERVING, before it stops accepting calls: the
	// time a load balancer needs to hear of it. Zero means stop at once.
	DrainDelay time.Duration
	// TLS, when set, serves gRPC over TLS (mTLS with TLS.ClientCAFile),
	// registers the instance with the meta healthgate_tls=true and makes
	// Consul's gRPC check use TLS. Nil means plaintext.
	TLS *TLS
	// ConnectNative makes the backend a Consul Connect-native service: TLS
	// with its own Connect certificate from the agent at ConsulAddr, and
	// every call but health checks allowed only when the Consul intentions
	// let the caller's Connect identity in.
	ConnectNative bool
	// Logger receives status changes and lifecycle events; nil discards them.
	Logger *slog.Logger
}

// Validate reports whether c can be used by New. Zero values that have a
// default are accepted.
func (c Config) Validate() error {
	var errs []error
	if c.GRPCAddr == "" {
		errs = append(errs, errors.New("grpc address is required"))
	} else if host, _, err := net.SplitHostPort(c.GRPCAddr); err != nil {
		errs = append(errs, fmt.Errorf("grpc address %q: %w", c.GRPCAddr, err))
	} else if c.ConsulAddr != "" && !advertisable(host) {
		// The host is what Consul's gRPC check dials and what the gateway
		// routes to, so a wildcard listen address cannot be registered.
		errs = append(errs, fmt.Errorf("grpc address %q: host must be a concrete address to register in consul", c.GRPCAddr))
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			errs = append(errs, fmt.Errorf("http address %q: %w", c.HTTPAddr, err))
		}
	}
	if c.ConnectNative && c.TLS != nil {
		errs = append(errs, errors.New("connect native: its TLS comes from Consul Connect; drop the TLS files"))
	}
	if c.ConnectNative && c.ConsulAddr == "" {
		errs = append(errs, errors.New("connect native: needs the consul address, where its certificate comes from"))
	}
	if c.DrainDelay < 0 {
		errs = append(errs, fmt.Errorf("drain delay %s: must not be negative", c.DrainDelay))
	}
	if c.CheckInterval < 0 {
		errs = append(errs, fmt.Errorf("check interval %s: must not be negative", c.CheckInterval))
	}
	if c.TLS != nil {
		if err := c.TLS.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	// The ID becomes a path segment of the deregister URL.
	if strings.Contains(c.ServiceID, "/") {
		errs = append(errs, fmt.Errorf("service id %q: must not contain '/'", c.ServiceID))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid authserver config: %w", err)
	}
	return nil
}

func advertisable(host string) bool {
	if host == "" {
		return false
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return !ip.IsUnspecified()
	}
	return true
}

// withDefaults fills the defaults that do not depend on the bound listener.
func (c Config) withDefaults() Config {
	if c.ServiceName == "" {
		c.ServiceName = DefaultServiceName
	}
	if c.CheckInterval == 0 {
		c.CheckInterval = DefaultCheckInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}
