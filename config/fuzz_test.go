package config

import (
	"os"
	"path/filepath"
	"testing"
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
