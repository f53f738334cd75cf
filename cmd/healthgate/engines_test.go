package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
)

// forEachEngine runs f once per forwarding engine of this run
// (testutil.Engines: HEALTHGATE_ENGINES, or the default list), as a subtest
// named after the engine. f writes its config files with writeConfig, which
// puts the engine into them.
func forEachEngine(t *testing.T, f func(t *testing.T, engine string)) {
	t.Helper()
	testutil.ForEachEngine(t, f)
}

// writeConfig writes a config file made of body and a proxy: section naming
// engine, in a directory of the test's, and returns its path. The file is
// parsed back, so that a config the binary would read with another engine
// fails the test here rather than test the wrong engine.
func writeConfig(t *testing.T, name, body, engine string) string {
	t.Helper()
	data := fmt.Sprintf("%sproxy:\n  engine: %s\n", body, engine)
	cfg, err := config.Parse([]byte(data))
	if err != nil {
		t.Fatalf("config %s: %v\n%s", name, err, data)
	}
	if cfg.Proxy.Engine != engine {
		t.Fatalf("config %s reads as proxy.engine %q, want %q:\n%s", name, cfg.Proxy.Engine, engine, data)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
