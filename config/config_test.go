package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestExampleConfigLoads(t *testing.T) {
	c, err := Load(filepath.Join("..", "configs", "healthgate.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:9000" || len(c.Routes) != 2 || c.Routes[1].ConsulService != "auth" {
		t.Fatalf("example config read as %+v", c)
	}
	if c.GRPCWeb.Enabled || len(c.GRPCWeb.AllowedOrigins) != 1 {
		t.Fatalf("grpc_web read as %+v, want off with one allowed origin", c.GRPCWeb)
	}
	if c.Health.BackoffMax != 2*time.Minute {
		t.Fatalf("health.backoff_max = %s, want 2m", c.Health.BackoffMax)
	}
}

func TestBadConfigNamesTheField(t *testing.T) {
	cases := []struct{ yaml, want string }{
		{"listen: nope", "listen:"},
		{"routes:\n- service: a.B\n", "routes[0]: neither backends nor consul_service"},
		{"routes:\n- service: a.B\n  backends: [x]\n", "routes[0].backends[0]"},
		{"routes:\n- service: a.B\n  backends: [h:1]\n  policy: random\n", "routes[0].policy"},
		{"routes:\n- service: /a.B/M\n  backends: [h:1]\n", "routes[0].service"},
		{"routes:\n- {service: a.B, backends: ['h:1']}\n- {service: a.B, backends: ['h:2']}\n", "routes[1].service"},
		{"proxy:\n  max_request_bytes: -1\n", "proxy.max_request_bytes"},
		{"shutdown:\n  grace: -1s\n", "shutdown.grace"},
		{"log:\n  level: loud\n", "log.level"},
		{"lsiten: x\n", "field lsiten not found"},
		{"health:\n  drain_grace: soon\n", "drain_grace"},
		{"listen: 0.0.0.0:9000\nconsul: {address: '127.0.0.1:8500'}\nregister: {enabled: true}\n", "register.address"},
		{"register: {enabled: true}\n", "register.enabled"},
		{"admin: 10.1.2.3:9901\n", "admin_public"},
		{"routes:\n- {service: grpc.reflection.v1.ServerReflection, backends: ['h:1']}\n", "routes[0].service: grpc.reflection.v1.ServerReflection is served by the gateway itself"},
		{"grpc_web:\n  enabled: true\n  allowed_origins: ['https://a.example', 'a.example']\n", "grpc_web.allowed_origins[1]"},
		{"grpc_web: {enabled: true}\nproxy: {engine: grpc}\nlisten_tls: {cert_file: c, key_file: k}\n", "grpc_web.enabled: gRPC-Web with listen_tls needs the relay engine"},
	}
	for _, tc := range cases {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.yaml, err, tc.want)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.yaml"))
	if err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("got %v, want a not-exist error", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}
