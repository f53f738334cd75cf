package config

import (
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"gopkg.in/yaml.v3"
)

// FuzzConfigParse holds Parse to its promise on any file: an error, or a
// config that is valid, and still valid once the defaults are filled in
// (which is what the gateway runs with).
func FuzzConfigParse(f *testing.F) {
	example, err := os.ReadFile(filepath.Join("..", "configs", "healthgate.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		string(example),
		"",
		"---\n---\n",
		"listen: ':'\nadmin: ':0'\n",
		"admin: '[::]:80'\nadmin_public: true\n",
		"routes:\n- service: '*'\n  backends: [a:1]\n",
		"routes:\n- service: a.S\n  backends: [x:1]\n  policy: weird\n",
		"routes:\n- service: a.S\n  backends: [x:1]\n- service: a.S\n  consul_service: s\n",
		"health: {drain_grace: x}\n",
		"health:\n  drain_grace: -1s\nproxy: {max_request_bytes: -1}\n",
		"unknown_field: 1\n",
		"routes: [&a {service: a.S, backends: [*a]}]\n",
		"a: &a [*a, *a]\n",
		"routes:\n\t- service: x\n",
		"\xff\xfe\x00",
		"routes:\n- service: a.S\n  health_service: ''\n  backends: ['h:1']\n  min_healthy: -3\n",
		"register: {enabled: true}\nconsul: {address: '127.0.0.1:8500'}\nlisten: '0.0.0.0:9000'\n",
		"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
		"log: {level: INFO, format: JSON}\n",
		"routes:\n- service: a.S\n  backends: ['h:1', {address: 'h:2', tags: [v2]}]\n  match: [{header: x-canary, value: 'true', subset: {tags: [canary]}}]\n  split: [{subset: {tags: [v1]}, weight: 95}, {subset: {tags: [v2]}, weight: 5}]\n  on_empty_subset: fail\n",
		"routes:\n- service: a.S\n  backends: [{address: 'h:2', weight: -1}]\n  split: [{subset: {tags: []}, weight: 0}]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if c != nil {
				t.Fatalf("Parse returned a config and the error %v", err)
			}
			return
		}
		if c == nil {
			t.Fatal("Parse returned neither a config nor an error")
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that Validate refuses: %v", err)
		}
		c.ApplyDefaults()
		if err := c.Validate(); err != nil {
			t.Fatalf("a config Parse accepted is invalid with its defaults: %v", err)
		}
	})
}

// FuzzStaticBackends holds the two forms of a route's backends to their
// meaning: whatever list is accepted, every backend is a valid address
// listed once, options belong to listed backends and say something, and
// writing the route back in the mapping form reads as the same route.
func FuzzStaticBackends(f *testing.F) {
	for _, s := range []string{
		"['127.0.0.1:1']",
		"['h:1', {address: 'h:2', tags: [v2], weight: 3}]",
		"[{address: 'h:2', tags: [v2, canary]}, 'h:2']",
		"['h:1', 'h:1', {address: 'h:1'}]",
		"\n  - h:1\n  - address: h:2\n    tags: [a]\n",
		"[{address: 'h:1', weight: 0, tags: []}]",
		"[{address: &a 'h:1'}, *a]",
		"[[h:1]]",
		"[{address: 'h:1', tags: [x]}, {address: 'h:1', tags: [y]}]",
		"[~]",
		"{}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, list string) {
		c, err := Parse([]byte("routes:\n- service: a.S\n  backends: " + list + "\n"))
		if err != nil {
			return
		}
		r := c.Routes[0]
		for i, a := range r.Backends {
			if _, _, err := net.SplitHostPort(a); err != nil {
				t.Fatalf("accepted backend %q: %v", a, err)
			}
			if slices.Index(r.Backends, a) != i {
				t.Fatalf("backend %q listed twice in %q", a, r.Backends)
			}
		}
		for a, o := range r.BackendOptions {
			if !slices.Contains(r.Backends, a) || o.isZero() || o.Weight < 0 {
				t.Fatalf("options %+v for %q with backends %q", o, a, r.Backends)
			}
		}
		var items []map[string]any
		for _, a := range r.Backends {
			o := r.BackendOptions[a]
			items = append(items, map[string]any{"address": a, "tags": o.Tags, "weight": o.Weight})
		}
		out, err := yaml.Marshal(map[string]any{"routes": []any{map[string]any{"service": "a.S", "backends": items}}})
		if err != nil {
			t.Fatal(err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("the route written back does not parse: %v\n%s", err, out)
		}
		if g := again.Routes[0]; !slices.Equal(g.Backends, r.Backends) || !reflect.DeepEqual(g.BackendOptions, r.BackendOptions) {
			t.Fatalf("written back and read again: %q %+v, want %q %+v\n%s", g.Backends, g.BackendOptions, r.Backends, r.BackendOptions, out)
		}
	})
}
