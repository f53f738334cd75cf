package testutil

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/healthgate/healthgate/proxy/proxycfg"
)

// EnginesEnv is the environment variable that chooses the forwarding
// engines the engine-table tests run against: a comma-separated list of
// proxy.engine values, e.g. "grpc,relay". Unset or empty means
// DefaultEngines. It lets an engine run under the whole contract before it
// is in DefaultEngines.
const EnginesEnv = "HEALTHGATE_ENGINES"

// DefaultEngines are the forwarding engines every engine-table test runs
// against when EnginesEnv is not set: all of them.
func DefaultEngines() []string { return []string{proxycfg.EngineGRPC, proxycfg.EngineRelay} }

// Engines is the forwarding engines of this run: EnginesEnv's list, or
// DefaultEngines. A name that is not an engine, or one named twice, fails
// the test: a typo must not quietly test nothing.
func Engines(t testing.TB) []string {
	t.Helper()
	v := strings.TrimSpace(os.Getenv(EnginesEnv))
	if v == "" {
		return DefaultEngines()
	}
	var out []string
	for _, e := range strings.Split(v, ",") {
		e = strings.TrimSpace(e)
		switch {
		case e != proxycfg.EngineGRPC && e != proxycfg.EngineRelay:
			t.Fatalf("%s=%q: %q is not %s or %s", EnginesEnv, v, e, proxycfg.EngineGRPC, proxycfg.EngineRelay)
		case slices.Contains(out, e):
			t.Fatalf("%s=%q: %q is named twice", EnginesEnv, v, e)
		}
		out = append(out, e)
	}
	return out
}

// ForEachEngine runs f as a subtest named after each engine of Engines, in
// order. The package's own wrapper puts the engine into the gateway's
// config.
func ForEachEngine(t *testing.T, f func(t *testing.T, engine string)) {
	t.Helper()
	for _, e := range Engines(t) {
		t.Run(e, func(t *testing.T) { f(t, e) })
	}
}
