// Package discoverycfg is discovery's part of the config file, the consul:
// section: pure data with its YAML keys, documented zero values, defaults
// and validation.
//
// It belongs to discovery, which re-exports its types (ConsulSettings,
// ConsulTLS, DefaultRoute) and applies its defaults in NewConsul. It is a
// package of its own only so that the config file's schema does not pull
// in the Consul API client, which discovery itself needs: it imports the
// standard library alone, and config's imports test holds it to that.
package discoverycfg

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// DefaultRoute names the route that takes calls for gRPC services that no
// other route covers.
const DefaultRoute = "*"

// DefaultRouteTag is the prefix of route tags when Consul.RouteTag is empty.
const DefaultRouteTag = "healthgate.route"

// Consul says how to reach Consul and what to take from it. Only cmd reads
// the environment (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN); here every value is
// explicit.
type Consul struct {
	// Address of the agent's HTTP API: host:port or an http(s) URL. Empty
	// means no Consul.
	Address string `yaml:"address"`
	// Token is the ACL token; empty means none.
	Token string `yaml:"token"`
	// Datacenter to query; empty means the agent's own.
	Datacenter string `yaml:"datacenter"`
	// Tags: only instances carrying every one of these tags are used, for
	// routes learned from route tags.
	Tags []string `yaml:"tags"`
	// AllowUnhealthy also uses instances whose Consul checks do not pass.
	// Off by default: only passing instances are used.
	AllowUnhealthy bool `yaml:"allow_unhealthy"`
	// RouteTag is the tag prefix that routes a backend without gateway
	// configuration: a tag "<RouteTag>=pkg.Service" routes calls to
	// pkg.Service to it. Empty means DefaultRouteTag.
	RouteTag string `yaml:"route_tag"`
	// DisableAutoRoutes turns route tags off: only the routes of the config
	// file are served. Off by default: every service that carries route
	// tags is routed.
	DisableAutoRoutes bool `yaml:"disable_auto_routes"`
	// AutoRouteServices, when set, limits auto routes to the Consul
	// services whose names match one of these patterns (path.Match: "*"
	// and "?"): a service outside them carrying a route tag joins no route.
	// Empty means every service, as far as Consul's ACLs let it register.
	AutoRouteServices []string `yaml:"auto_route_services"`
	// TLS to the agent; the zero value is plain HTTP.
	TLS TLS `yaml:"tls"`
	// Connect is the gateway's identity in Consul's service mesh, with
	// which it dials Connect-native backends.
	Connect Connect `yaml:"connect"`
}

// DefaultConnectService is the gateway's Connect identity when
// Connect.Service is empty.
const DefaultConnectService = "healthgate"

// Connect is the gateway as a client in Consul's service mesh. Its
// certificate is asked of the agent only once a backend needs it: a
// Connect-native instance, or a route with connect: true.
type Connect struct {
	// Service is the Consul service name the gateway's Connect leaf
	// certificate names, and so the source that intentions allow or deny.
	// The token needs service:write on it. Empty means
	// DefaultConnectService.
	Service string `yaml:"service"`
}

// TLS is TLS to the Consul agent; zero means plain HTTP.
type TLS struct {
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// Validate reports the first field that cannot be used, by its YAML key.
func (c Consul) Validate() error {
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return errors.New("tls: cert_file and key_file go together")
	}
	if strings.ContainsAny(c.Connect.Service, "/?#% \t") {
		return fmt.Errorf("connect.service: %q is not a Consul service name", c.Connect.Service)
	}
	for i, p := range c.AutoRouteServices {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("auto_route_services[%d]: %q is not a pattern: %w", i, p, err)
		}
	}
	return nil
}

// AutoRoutes reports whether the Consul service svc may join routes by its
// route tags.
func (c Consul) AutoRoutes(svc string) bool {
	if c.DisableAutoRoutes {
		return false
	}
	if len(c.AutoRouteServices) == 0 {
		return true
	}
	for _, p := range c.AutoRouteServices {
		if ok, _ := path.Match(p, svc); ok {
			return true
		}
	}
	return false
}

// WithDefaults is c with every zero value replaced by what it means.
func (c Consul) WithDefaults() Consul {
	if c.RouteTag == "" {
		c.RouteTag = DefaultRouteTag
	}
	if c.Connect.Service == "" {
		c.Connect.Service = DefaultConnectService
	}
	return c
}
