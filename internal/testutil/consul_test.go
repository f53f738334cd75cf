package testutil

import (
	"testing"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestConsulSmoke proves the real agent runs: a service registered through
// the HTTP API reads back from the health endpoint.
func TestConsulSmoke(t *testing.T) {
	c := StartConsul(t)
	client, err := api.NewClient(&api.Config{Address: c.Addr})
	if err != nil {
		t.Fatal(err)
	}
	reg := &api.AgentServiceRegistration{ID: "smoke-1", Name: "smoke", Address: "127.0.0.1", Port: 1234, Tags: []string{"a"}}
	if err := client.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	entries, _, err := client.Health().Service("smoke", "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Service.ID != "smoke-1" || entries[0].Service.Port != 1234 {
		t.Fatalf("got %+v, want the one registered service", entries)
	}
	t.Logf("consul: registered and read back service %q at %s:%d", entries[0].Service.Service, entries[0].Service.Address, entries[0].Service.Port)
}
