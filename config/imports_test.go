package config

import (
	"os/exec"
	"strings"
	"testing"
)

// TestSchemaImportsNoRuntime: the config file's schema is the stages' own
// settings types, kept in packages of the standard library alone, so that
// reading a config (cmd's flags, tools, fuzzing) does not link grpc-go or
// the Consul API client.
func TestSchemaImportsNoRuntime(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed %d packages, too few to be the closure: %q", len(deps), deps)
	}
	for _, d := range deps {
		for _, banned := range []string{"google.golang.org/grpc", "github.com/hashicorp/consul/api"} {
			if d == banned || strings.HasPrefix(d, banned+"/") {
				t.Errorf("config depends on %s", d)
			}
		}
	}
}
