package config

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/healthgate/healthgate/balancer/balancercfg"
)

func TestStaticBackendForms(t *testing.T) {
	c, err := Parse([]byte(`
routes:
- service: a.S
  backends:
    - 127.0.0.1:1
    - {address: 127.0.0.1:2, tags: [v2, canary], weight: 3}
    - address: 127.0.0.1:3
    - 127.0.0.1:1
    - {address: 127.0.0.1:2, tags: [v2, canary], weight: 3}
`))
	if err != nil {
		t.Fatal(err)
	}
	r := c.Routes[0]
	if want := []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}; !slices.Equal(r.Backends, want) {
		t.Errorf("backends = %q, want %q (a repeated backend is one)", r.Backends, want)
	}
	want := map[string]BackendOptions{"127.0.0.1:2": {Tags: []string{"v2", "canary"}, Weight: 3}}
	if !reflect.DeepEqual(r.BackendOptions, want) {
		t.Errorf("backend options = %+v, want %+v", r.BackendOptions, want)
	}

	// The plain form alone leaves no options behind.
	c, err = Parse([]byte("routes:\n- service: a.S\n  backends: ['127.0.0.1:1']\n"))
	if err != nil || c.Routes[0].BackendOptions != nil || !slices.Equal(c.Routes[0].Backends, []string{"127.0.0.1:1"}) {
		t.Errorf("plain form: %+v, %v", c.Routes[0], err)
	}
}

func TestRoutingParses(t *testing.T) {
	c, err := Parse([]byte(`
routes:
- service: a.S
  consul_service: a
  match:
    - {header: x-canary, value: "true", subset: {tags: [canary]}}
    - {header: x-tenant, prefix: beta-, subset: {tags: [beta]}}
    - {header: x-debug, present: true, subset: {tags: [debug, v2]}}
  split:
    - {subset: {tags: [v1]}, weight: 95}
    - {subset: {tags: [v2]}, weight: 5}
    - {subset: {tags: [v3]}, weight: 0}
  on_empty_subset: fail
  timeout: 2s
`))
	if err != nil {
		t.Fatal(err)
	}
	got := c.Routes[0].Routing
	want := balancercfg.Routing{
		Match: []balancercfg.Match{
			{Header: "x-canary", Value: "true", Subset: balancercfg.Subset{Tags: []string{"canary"}}},
			{Header: "x-tenant", Prefix: "beta-", Subset: balancercfg.Subset{Tags: []string{"beta"}}},
			{Header: "x-debug", Present: true, Subset: balancercfg.Subset{Tags: []string{"debug", "v2"}}},
		},
		Split: []balancercfg.Split{
			{Subset: balancercfg.Subset{Tags: []string{"v1"}}, Weight: 95},
			{Subset: balancercfg.Subset{Tags: []string{"v2"}}, Weight: 5},
			{Subset: balancercfg.Subset{Tags: []string{"v3"}}, Weight: 0},
		},
		OnEmptySubset: balancercfg.Fail,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("routing = %+v\nwant %+v", got, want)
	}
	if c.Routes[0].Traffic.Timeout.Seconds() != 2 {
		t.Fatalf("the route's other inline settings were lost: %+v", c.Routes[0])
	}
}

// TestExampleCanaryRouteParses: the commented canary route of the example
// config is a working one.
func TestExampleCanaryRouteParses(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "configs", "healthgate.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var block []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "  # - service: example.orders.v1.Orders") || len(block) > 0 && strings.HasPrefix(line, "  #   ") {
			block = append(block, "  "+strings.TrimPrefix(line, "  # "))
		} else if len(block) > 0 {
			break
		}
	}
	if len(block) < 5 {
		t.Fatalf("no canary example in configs/healthgate.yaml (found %q)", block)
	}
	c, err := Parse([]byte("consul: {address: '127.0.0.1:8500'}\nroutes:\n" + strings.Join(block, "\n") + "\n"))
	if err != nil {
		t.Fatalf("the example canary route: %v\n%s", err, strings.Join(block, "\n"))
	}
	r := c.Routes[0]
	if len(r.Routing.Match) != 1 || len(r.Routing.Split) != 2 || r.BackendOptions["127.0.0.1:50062"].Weight != 1 {
		t.Fatalf("the example canary route read as %+v", r)
	}
}

func TestBadRoutingNamesTheField(t *testing.T) {
	const route = "routes:\n- service: a.B\n  backends: ['h:1']\n"
	cases := []struct{ yaml, want string }{
		{route + "  split: [{subset: {tags: [v1]}, weight: 1}, {subset: {tags: [v2]}, weight: -5}]\n", "routes[0].split[1].weight: -5 is not between 0"},
		{route + "  split: [{subset: {tags: [v1]}, weight: 0}]\n", "routes[0].split: every weight is 0"},
		{route + "  split: [{subset: {tags: []}, weight: 1}]\n", "routes[0].split[0].subset.tags: missing"},
		{route + "  split: [{subset: {tags: [v1, '']}, weight: 1}]\n", "routes[0].split[0].subset.tags[1]: empty"},
		{route + "  split: [{subset: {tag: [v1]}, weight: 1}]\n", "field tag not found"},
		{route + "  match: [{value: x, subset: {tags: [c]}}]\n", "routes[0].match[0].header: missing"},
		{route + "  match: [{header: X-Canary, value: x, subset: {tags: [c]}}]\n", `routes[0].match[0].header: "X-Canary": gRPC metadata keys are lowercase; write "x-canary"`},
		{route + "  match: [{header: ':authority', present: true, subset: {tags: [c]}}]\n", "routes[0].match[0].header: \":authority\": pseudo-headers"},
		{route + "  match: [{header: x-id-bin, present: true, subset: {tags: [c]}}]\n", "routes[0].match[0].header: \"x-id-bin\": binary"},
		{route + "  match: [{header: x, subset: {tags: [c]}}]\n", "routes[0].match[0]: set exactly one of value, prefix and present"},
		{route + "  match: [{header: x, value: a, prefix: b, subset: {tags: [c]}}]\n", "routes[0].match[0]: set exactly one"},
		{route + "  match: [{header: x, value: a}]\n", "routes[0].match[0].subset.tags: missing"},
		{route + "  on_empty_subset: drop\n", `routes[0].on_empty_subset: "drop" is not "fallback" or "fail"`},
		{"routes:\n- service: a.B\n  backends:\n  - {address: 'h:1', weight: -1}\n", "routes[0].backends[0].weight: must not be negative"},
		{"routes:\n- service: a.B\n  backends:\n  - {address: 'h:1', tags: [a, '']}\n", "routes[0].backends[0].tags[1]: empty"},
		{"routes:\n- service: a.B\n  backends:\n  - {address: nope}\n", `routes[0].backends[0]: "nope" is not host:port`},
		{"routes:\n- service: a.B\n  backends:\n  - {tags: [a]}\n", "a backend mapping needs address"},
		{"routes:\n- service: a.B\n  backends:\n  - {address: 'h:1', tagz: [a]}\n", "field tagz not found in a backend"},
		{"routes:\n- service: a.B\n  backends:\n  - [h:1]\n", `routes[0].backends[0]`},
		{"routes:\n- service: a.B\n  backends:\n  - 'h:1'\n  - {address: 'h:1', tags: [x]}\n", `routes[0].backends[1]`}, {"routes:\n- service: a.B\n  backends:\n  - 'h:1'\n  - {address: 'h:1', tags: [x]}\n", `(line 5): "h:1" is listed twice with different tags or weight`},
		{"routes:\n- service: a.B\n  backends: ['h:1']\n  bogus: 1\n", "routes[0].bogus (line 4): field bogus not found in type config.Route"},
	}
	for _, tc := range cases {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.yaml, err, tc.want)
		}
	}
	// Options for an address the route does not list, as only Go code can
	// write them.
	c := Config{Routes: []Route{{Service: "a.B", Backends: []string{"h:1"}, BackendOptions: map[string]BackendOptions{"h:2": {Weight: 2}}}}}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `routes[0].backends: options are given for "h:2"`) {
		t.Errorf("options for an unlisted backend: %v, want the field named", err)
	}
}
