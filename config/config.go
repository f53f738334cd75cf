// Package config reads healthgate's YAML configuration file. It is data
// only: validation names the offending field, and turning the config into
// running parts is the gateway package's job.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/healthgate/healthgate/balancer/balancercfg"
	"github.com/healthgate/healthgate/discovery/discoverycfg"
	"github.com/healthgate/healthgate/grpcweb/grpcwebcfg"
	"github.com/healthgate/healthgate/healthcheck/healthcheckcfg"
	"github.com/healthgate/healthgate/proxy/proxycfg"
	"github.com/healthgate/healthgate/tracing/tracingcfg"
)

// Config is the whole file. Every field is optional; the zero value of each
// is documented and is what the gateway does without a config file.
type Config struct {
	// Listen is the gRPC address clients call. Default 127.0.0.1:9000.
	Listen string `yaml:"listen"`
	// ListenTLS terminates TLS on the listener; proxy owns it.
	ListenTLS proxycfg.ListenTLS `yaml:"listen_tls"`
	// ListenPlaintext allows a listener without TLS on an address that is
	// not loopback. Plaintext on loopback needs no permission.
	ListenPlaintext bool `yaml:"listen_plaintext"`
	// Admin is the HTTP admin address (/healthz, /readyz, /metrics,
	// /backends, the status page); empty means no admin listener. A host
	// that is not loopback must be allowed with AdminPublic; a bare
	// ":port" binds to 127.0.0.1.
	Admin string `yaml:"admin"`
	// AdminPublic allows an admin address that is not loopback.
	AdminPublic bool `yaml:"admin_public"`
	// Pprof serves /debug/pprof/ on the admin address. Off by default.
	Pprof bool `yaml:"pprof"`
	// Register, when enabled, registers the gateway itself in Consul.
	Register Register `yaml:"register"`
	Log      Log      `yaml:"log"`
	// Consul, when its address is set, discovers backends; discovery owns
	// it.
	Consul discoverycfg.Consul `yaml:"consul"`
	Routes []Route             `yaml:"routes"`
	// Proxy tunes forwarding; proxy owns it.
	Proxy proxycfg.Settings `yaml:"proxy"`
	// Health tunes backend health checking; healthcheck owns it.
	Health healthcheckcfg.Settings `yaml:"health"`
	// Outlier is passive failure detection; healthcheck owns it.
	Outlier healthcheckcfg.Outlier `yaml:"outlier_detection"`
	// Shutdown tunes the drain on SIGTERM.
	Shutdown Shutdown `yaml:"shutdown"`
	// Reflection is the gateway's own gRPC server reflection, merged from
	// its routes' backends.
	Reflection Reflection `yaml:"reflection"`
	// GRPCWeb serves gRPC-Web on the listener; grpcweb owns it.
	GRPCWeb grpcwebcfg.Settings `yaml:"grpc_web"`
	// Tracing exports a span per proxied call and per backend attempt over
	// OTLP; tracing owns it. Off unless otlp_endpoint is set.
	Tracing tracingcfg.Config `yaml:"tracing"`
}

// Reflection: the gateway serves grpc.reflection.v1 and v1alpha itself,
// listing its routes and describing them with the descriptors their
// backends' reflection serves, so that grpcurl works through it. It is on
// by default; it tells any client that can reach the listener which
// services are routed.
type Reflection struct {
	// Disabled turns it off: reflection calls are then routed like any
	// other service's, to the route (if any) that covers them.
	Disabled bool `yaml:"disabled"`
}

// The reflection services' names, which a route may name only with
// reflection disabled.
const (
	ReflectionV1      = "grpc.reflection.v1.ServerReflection"
	ReflectionV1Alpha = "grpc.reflection.v1alpha.ServerReflection"
)

// Register is the gateway's own registration in Consul, with a Consul gRPC
// check against its aggregated health (""); it deregisters when it drains.
type Register struct {
	Enabled bool `yaml:"enabled"`
	// Name is the Consul service name. Default "healthgate".
	Name string `yaml:"name"`
	// ID defaults to name-host-port.
	ID string `yaml:"id"`
	// Address advertised to Consul; default the listen address's host.
	Address string   `yaml:"address"`
	Tags    []string `yaml:"tags"`
	// Interval of the Consul gRPC check. Default 5s.
	Interval time.Duration `yaml:"interval"`
}

// Log chooses the log output.
type Log struct {
	// Level: debug, info (default), warn or error.
	Level string `yaml:"level"`
	// Format: text (default) or json.
	Format string `yaml:"format"`
	// Access logs one line per proxied call. Off by default.
	Access bool `yaml:"access"`
}

// Route sends calls for one gRPC service to a set of backends.
type Route struct {
	// Service is the full gRPC service name ("pkg.Service"), or "*" for
	// calls that no other route covers.
	Service string `yaml:"service"`
	// Backends are static addresses (host:port). In the file an item is
	// either the address or a mapping {address, tags, weight}, whose tags
	// and weight are kept in BackendOptions.
	Backends []string `yaml:"-"`
	// BackendOptions are the tags and weights of static backends, by
	// address; a backend not listed has no tags and weight 1.
	BackendOptions map[string]BackendOptions `yaml:"-"`
	// ConsulService names a Consul service whose instances serve the route.
	ConsulService string `yaml:"consul_service"`
	// Tags filter ConsulService's instances: each must carry all of them.
	Tags []string `yaml:"tags"`
	// Health is the route's health_service and min_healthy; healthcheck
	// owns them.
	Health healthcheckcfg.RouteConfig `yaml:",inline"`
	// Policy: round_robin (default) or least_request.
	Policy balancercfg.Policy `yaml:"policy"`
	// Limits are the route's max_in_flight and rate; balancer owns them.
	Limits balancercfg.Limits `yaml:",inline"`
	// Traffic is the route's forwarding policy (timeout, ...); proxy
	// owns it.
	Traffic proxycfg.RoutePolicy `yaml:",inline"`
	// Routing sends calls to subsets of the backends by header (match)
	// or weight (split); balancer owns it.
	Routing balancercfg.Routing `yaml:",inline"`
}

// Shutdown tunes the drain on SIGTERM: the gateway reports NOT_SERVING at
// once, keeps accepting for DrainDelay so that clients and load balancers
// notice, then stops accepting and gives calls in flight Grace to finish.
type Shutdown struct {
	// DrainDelay, default 2s.
	DrainDelay time.Duration `yaml:"drain_delay"`
	// Grace, default 30s.
	Grace time.Duration `yaml:"grace"`
}

// DefaultListen is the listen address when none is set.
const DefaultListen = "127.0.0.1:9000"

// Load reads and validates a config file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML strictly (an unknown field is an error) and validates.
func Parse(data []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, nameFields(data, err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// ApplyDefaults fills unset fields with their documented defaults.
func (c *Config) ApplyDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if host, port, err := net.SplitHostPort(c.Admin); err == nil && host == "" {
		c.Admin = net.JoinHostPort("127.0.0.1", port)
	}
	if c.Register.Name == "" {
		c.Register.Name = "healthgate"
	}
	if c.Register.Interval == 0 {
		c.Register.Interval = 5 * time.Second
	}
	if c.Shutdown.DrainDelay == 0 {
		c.Shutdown.DrainDelay = 2 * time.Second
	}
	if c.Shutdown.Grace == 0 {
		c.Shutdown.Grace = 30 * time.Second
	}
}

// Validate reports the first field that cannot be used, by its path in the
// file (routes[1].policy: ...).
func (c *Config) Validate() error {
	for _, a := range []struct{ field, addr string }{{"listen", c.Listen}, {"admin", c.Admin}} {
		if a.addr != "" {
			if _, _, err := net.SplitHostPort(a.addr); err != nil {
				return fmt.Errorf("%s: %q is not host:port: %w", a.field, a.addr, err)
			}
		}
	}
	if host, _, err := net.SplitHostPort(c.Admin); err == nil && host != "" && !c.AdminPublic && !isLoopback(host) {
		return fmt.Errorf("admin: %q is not a loopback address; set admin_public: true (or -admin-public) to serve the admin endpoint beyond this host", c.Admin)
	}
	if c.Register.Enabled && c.Consul.Address == "" {
		return errors.New("register.enabled: needs consul.address")
	}
	if host, _, err := net.SplitHostPort(c.Listen); err == nil && c.Register.Enabled && c.Register.Address == "" {
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			return fmt.Errorf("register.address: required when listen (%q) is a wildcard address: Consul must advertise an address clients can reach", c.Listen)
		}
	}
	switch strings.ToLower(c.Log.Level) {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level: %q is not debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "", "text", "json":
	default:
		return fmt.Errorf("log.format: %q is not text or json", c.Log.Format)
	}
	if err := c.Consul.Validate(); err != nil {
		return fmt.Errorf("consul.%w", err)
	}
	seen := map[string]int{}
	for i, r := range c.Routes {
		f := fmt.Sprintf("routes[%d]", i)
		switch {
		case r.Service == "":
			return fmt.Errorf("%s.service: missing (a full gRPC service name such as pkg.Service, or %q)", f, discoverycfg.DefaultRoute)
		case strings.ContainsAny(r.Service, "/ ") && r.Service != discoverycfg.DefaultRoute:
			return fmt.Errorf("%s.service: %q is not a gRPC service name (no slashes or spaces: pkg.Service)", f, r.Service)
		case !c.Reflection.Disabled && (r.Service == ReflectionV1 || r.Service == ReflectionV1Alpha):
			return fmt.Errorf("%s.service: %s is served by the gateway itself; set reflection.disabled: true to route it", f, r.Service)
		case len(r.Backends) == 0 && r.ConsulService == "":
			return fmt.Errorf("%s: neither backends nor consul_service is set", f)
		case len(r.Tags) > 0 && r.ConsulService == "":
			return fmt.Errorf("%s.tags: tags filter consul_service, which is not set", f)
		case r.Health.Connect && c.Consul.Address == "":
			return fmt.Errorf("%s.connect: the gateway's Connect certificate comes from the Consul agent, and consul.address is not set", f)
		case r.Health.Connect && len(r.Backends) > 0 && r.Health.ConnectService == "":
			return fmt.Errorf("%s.connect_service: static backends of a connect route need the Consul service whose identity they present", f)
		}
		if err := r.Health.Validate(); err != nil {
			return fmt.Errorf("%s.%w", f, err)
		}
		if j, dup := seen[r.Service]; dup {
			return fmt.Errorf("%s.service: %q is already routed by routes[%d]", f, r.Service, j)
		}
		seen[r.Service] = i
		for j, b := range r.Backends {
			if _, _, err := net.SplitHostPort(b); err != nil {
				return fmt.Errorf("%s.backends[%d]: %q is not host:port: %w", f, j, b, err)
			}
			if err := r.BackendOptions[b].validate(); err != nil {
				return fmt.Errorf("%s.backends[%d].%w", f, j, err)
			}
		}
		for addr := range r.BackendOptions {
			if !slices.Contains(r.Backends, addr) {
				return fmt.Errorf("%s.backends: options are given for %q, which is not one of them", f, addr)
			}
		}
		if err := r.Routing.Validate(); err != nil {
			return fmt.Errorf("%s.%w", f, err)
		}
		if err := r.Policy.Validate(); err != nil {
			return fmt.Errorf("%s.policy: %w", f, err)
		}
		if err := r.Traffic.Validate(); err != nil {
			return fmt.Errorf("%s.%w", f, err)
		}
		if err := r.Limits.Validate(); err != nil {
			return fmt.Errorf("%s.%w", f, err)
		}
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{
		{"shutdown.drain_delay", c.Shutdown.DrainDelay},
		{"shutdown.grace", c.Shutdown.Grace},
		{"register.interval", c.Register.Interval},
	} {
		if d.v < 0 {
			return fmt.Errorf("%s: must not be negative, got %s", d.field, d.v)
		}
	}
	if err := c.Health.Validate(); err != nil {
		return fmt.Errorf("health.%w", err)
	}
	if err := c.Outlier.Validate(); err != nil {
		return fmt.Errorf("outlier_detection.%w", err)
	}
	if err := c.Proxy.Validate(); err != nil {
		return fmt.Errorf("proxy.%w", err)
	}
	if err := c.ListenTLS.Validate(); err != nil {
		return fmt.Errorf("listen_tls.%w", err)
	}
	if err := c.GRPCWeb.Validate(); err != nil {
		return fmt.Errorf("grpc_web.%w", err)
	}
	// grpc-go's server takes no other protocol on its TLS connections,
	// and browsers speak HTTP/2 there (ALPN): only the relay diverts it.
	if c.GRPCWeb.Enabled && c.ListenTLS.Enabled() && c.Proxy.Engine == proxycfg.EngineGRPC {
		return errors.New("grpc_web.enabled: gRPC-Web with listen_tls needs the relay engine (proxy.engine: relay, the default); the grpc engine serves gRPC-Web over plaintext HTTP/1.1 only")
	}
	if err := c.Tracing.Validate(); err != nil {
		return fmt.Errorf("tracing.%w", err)
	}
	// An edge listener without TLS is a choice to make on purpose.
	if host, _, err := net.SplitHostPort(c.Listen); err == nil && !c.ListenTLS.Enabled() && !c.ListenPlaintext && !isLoopback(host) {
		return fmt.Errorf("listen: %q is not a loopback address and listen_tls is not set; set listen_tls.cert_file and key_file, or listen_plaintext: true (-listen-plaintext) to serve plaintext h2c on purpose", c.Listen)
	}
	return nil
}

// nameFields adds the field path to yaml's type errors, which name only a
// line: "line 3: cannot unmarshal ..." becomes "health.drain_grace (line 3):
// cannot unmarshal ...".
func nameFields(data []byte, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	var root yaml.Node
	if yaml.Unmarshal(data, &root) != nil {
		return err
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, m := range te.Errors {
		var line int
		if _, scanErr := fmt.Sscanf(m, "line %d:", &line); scanErr == nil {
			if path := pathAt(&root, line, ""); path != "" {
				_, rest, _ := strings.Cut(m, ":")
				m = fmt.Sprintf("%s (line %d):%s", path, line, rest)
			}
		}
		msgs = append(msgs, m)
	}
	return errors.New(strings.Join(msgs, "; "))
}

// pathAt finds the deepest key or item at line and returns its path, such as
// routes[1].policy.
func pathAt(n *yaml.Node, line int, prefix string) string {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if p := pathAt(c, line, prefix); p != "" {
				return p
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			path := k.Value
			if prefix != "" {
				path = prefix + "." + k.Value
			}
			if p := pathAt(v, line, path); p != "" {
				return p
			}
			if k.Line == line {
				return path
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			path := fmt.Sprintf("%s[%d]", prefix, i)
			if p := pathAt(c, line, path); p != "" {
				return p
			}
			if c.Line == line && c.Kind == yaml.ScalarNode {
				return path
			}
		}
	}
	return ""
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
