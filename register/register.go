// Package register puts the gateway itself in Consul, with a Consul gRPC
// check against the gateway's own aggregated health (""), so that clients
// and other balancers can discover healthgate the way healthgate discovers
// backends. The gateway deregisters first thing when it drains.
package register

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Config of the registration.
type Config struct {
	// Consul is the agent's API configuration (discovery.APIConfig builds
	// it with the gateway's address, token, datacenter and TLS).
	Consul *api.Config
	// Name, ID and Tags of the service. ID defaults to name-host-port.
	Name, ID string
	Tags     []string
	// Addr is host:port that Consul advertises and checks.
	Addr string
	// Interval of the gRPC check.
	Interval time.Duration
}

// Registration is a registered gateway.
type Registration struct {
	client *api.Client
	id     string
}

// Register registers the gateway.
func Register(ctx context.Context, cfg Config) (*Registration, error) {
	host, portStr, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("register: address %q: %w", cfg.Addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("register: port %q: %w", portStr, err)
	}
	id := cfg.ID
	if id == "" {
		id = fmt.Sprintf("%s-%s-%d", cfg.Name, strings.ReplaceAll(host, ":", "_"), port)
	}
	if cfg.Consul == nil {
		return nil, fmt.Errorf("register: no consul configuration")
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return nil, fmt.Errorf("register: address %q: a wildcard host cannot be reached by clients; set register.address", cfg.Addr)
	}
	client, err := api.NewClient(cfg.Consul)
	if err != nil {
		return nil, fmt.Errorf("register: consul %s: %w", cfg.Consul.Address, err)
	}
	reg := &api.AgentServiceRegistration{
		ID: id, Name: cfg.Name, Address: host, Port: port, Tags: cfg.Tags,
		Check: &api.AgentServiceCheck{
			// No service suffix: the check asks for "", the gateway as a
			// whole, which turns NOT_SERVING first when it drains.
			GRPC:                           net.JoinHostPort(host, portStr),
			Interval:                       cfg.Interval.String(),
			Timeout:                        "2s",
			DeregisterCriticalServiceAfter: "10m",
		},
	}
	if err := client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return nil, fmt.Errorf("register: service %s: %w", id, err)
	}
	return &Registration{client: client, id: id}, nil
}

// ID is the registered service ID.
func (r *Registration) ID() string { return r.id }

// Deregister removes the registration.
func (r *Registration) Deregister(ctx context.Context) error {
	if err := r.client.Agent().ServiceDeregisterOpts(r.id, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("register: deregister %s: %w", r.id, err)
	}
	return nil
}
