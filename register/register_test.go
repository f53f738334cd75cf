package register_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/internal/gatewaytest"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/register"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// gatewayCheck is the Consul check of the registered service id, if any.
func gatewayCheck(t *testing.T, client *api.Client, name, id string) (*api.HealthCheck, bool) {
	t.Helper()
	checks, _, err := client.Health().Checks(name, nil)
	if err != nil {
		t.Fatalf("consul health checks of %s: %v", name, err)
	}
	for _, c := range checks {
		if c.ServiceID == id {
			return c, true
		}
	}
	return nil, false
}

// TestGatewayRegistersItselfAndLeavesOnDrain: a gateway with register
// enabled is in Consul's catalog with a gRPC check that Consul runs against
// the gateway's own health (""), which follows the gateway's routes; when
// the gateway's context ends it leaves the catalog before it stops serving.
func TestGatewayRegistersItselfAndLeavesOnDrain(t *testing.T) {
	c := testutil.StartConsul(t)
	be := testutil.StartBackend(t)
	c.Register(t, "", testutil.RouteReg("be", "svc", be.Addr, testutil.TestService))

	const name = "healthgate-test"
	const drainDelay = 2 * time.Second
	g := gatewaytest.Start(t, config.Config{
		Consul: discovery.ConsulSettings{Address: c.Addr},
		// Consul runs checks at most once a second.
		Register: config.Register{Enabled: true, Name: name, Tags: []string{"edge"}, Interval: time.Second},
		Shutdown: config.Shutdown{DrainDelay: drainDelay},
	}, nil)
	_, portStr, _ := net.SplitHostPort(g.Addr)
	port, _ := strconv.Atoi(portStr)
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	client := c.Client(t, "")
	id := fmt.Sprintf("%s-127.0.0.1-%d", name, addr.Port)
	var entry *api.CatalogService
	testutil.WaitFor(t, 15*time.Second, "the gateway in Consul's catalog", func() bool {
		svcs, _, err := client.Catalog().Service(name, "", nil)
		if err != nil || len(svcs) != 1 {
			return false
		}
		entry = svcs[0]
		return true
	})
	if entry.ServiceID != id || entry.ServiceAddress != "127.0.0.1" || entry.ServicePort != addr.Port || !slices.Equal(entry.ServiceTags, []string{"edge"}) {
		t.Fatalf("catalog entry: id %q address %q port %d tags %v; want %q, 127.0.0.1, %d, [edge]",
			entry.ServiceID, entry.ServiceAddress, entry.ServicePort, entry.ServiceTags, id, addr.Port)
	}

	var check *api.HealthCheck
	testutil.WaitFor(t, 15*time.Second, "the gateway's Consul check to pass", func() bool {
		var ok bool
		check, ok = gatewayCheck(t, client, name, id)
		return ok && check.Status == api.HealthPassing
	})
	// Consul keeps no definition to read back, but its output names the
	// target it dialled: the address alone, with no "/service" suffix, is
	// a Check for "", the gateway as a whole.
	if want := fmt.Sprintf("gRPC check %s: success", addr); check.Type != "grpc" || check.Output != want {
		t.Fatalf("check: type %q output %q; want grpc, %q", check.Type, check.Output, want)
	}

	// The check asks the gateway's own health for "", its readiness (B44):
	// a route without backends is that route's NOT_SERVING, not a reason
	// for Consul to take the gateway out; draining is.

	// Drain: the registration goes first, while the gateway still serves
	// out its drain delay.
	cancelled := time.Now()
	g.Stop()
	testutil.WaitFor(t, 10*time.Second, "the gateway to leave Consul's catalog", func() bool {
		svcs, _, err := client.Catalog().Service(name, "", nil)
		return err == nil && len(svcs) == 0
	})
	left := time.Since(cancelled)
	select {
	case <-g.Done:
		t.Fatal("Run returned before the deregistration was seen; it must come first")
	default:
	}
	if left >= drainDelay {
		t.Fatalf("deregistered %v after the cancel, not before the %v drain delay ended", left, drainDelay)
	}
	if _, ok := gatewayCheck(t, client, name, id); ok {
		t.Fatal("the gateway's check outlived its service")
	}
	select {
	case <-g.Done:
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after the drain")
	}
}

func TestRegisterAndDeregister(t *testing.T) {
	c := testutil.StartConsul(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A URL works as the Consul address too.
	reg, err := register.Register(ctx, register.Config{
		Consul: discovery.APIConfig(discovery.ConsulSettings{Address: "http://" + c.Addr}), Name: "gw", ID: "gw-1", Addr: "127.0.0.1:1234", Interval: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if reg.ID() != "gw-1" {
		t.Fatalf("ID %q, want the configured gw-1", reg.ID())
	}
	client := c.Client(t, "")
	svcs, err := client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	s, ok := svcs["gw-1"]
	if !ok || s.Service != "gw" || s.Address != "127.0.0.1" || s.Port != 1234 {
		t.Fatalf("agent services: %+v, want gw-1 as gw at 127.0.0.1:1234", svcs)
	}
	if err := reg.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	if svcs, err = client.Agent().Services(); err != nil || len(svcs) != 0 {
		t.Fatalf("after Deregister: %v, %v; want no services", svcs, err)
	}

	for _, tc := range []struct{ addr, want string }{
		{"nohost", `register: address "nohost"`},
		{"127.0.0.1:port", `register: port "port"`},
		{"0.0.0.0:9000", "wildcard host"},
	} {
		_, err := register.Register(ctx, register.Config{Consul: &api.Config{Address: c.Addr}, Name: "gw", Addr: tc.addr, Interval: time.Second})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Register with address %q: %v, want an error with %q", tc.addr, err, tc.want)
		}
	}
}
