package gateway_test

import (
	"log/slog"
	"sync/atomic"
	"testing"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
)

// engine is one forwarding engine's run of an engine-table test: the
// gateways the test starts through it forward with that engine.
type engine struct {
	name string
	// started counts the gateways started through the engine.
	started atomic.Int32
}

// forEachEngine runs f once per forwarding engine of this run
// (testutil.Engines: HEALTHGATE_ENGINES, or the default list), as a subtest
// named after the engine. f starts its gateways with e.start or e.startLog,
// which put the engine into their config; a run that starts none fails, so
// that a test in the table cannot quietly run the default engine alone.
func forEachEngine(t *testing.T, f func(t *testing.T, e *engine)) {
	t.Helper()
	testutil.ForEachEngine(t, func(t *testing.T, name string) {
		e := &engine{name: name}
		f(t, e)
		if e.started.Load() == 0 {
			t.Fatalf("engine %s: the test started no gateway through it", name)
		}
	})
}

// config is cfg forwarding with e.
func (e *engine) config(cfg config.Config) config.Config {
	cfg.Proxy.Engine = e.name
	return cfg
}

// start runs a gateway built from cfg with e, like startGateway.
func (e *engine) start(t *testing.T, cfg config.Config) *harness {
	t.Helper()
	return e.startLog(t, cfg, nil)
}

// startLog runs a gateway built from cfg with e, like startGatewayLog.
func (e *engine) startLog(t *testing.T, cfg config.Config, logger *slog.Logger) *harness {
	t.Helper()
	h := startGatewayLog(t, e.config(cfg), logger)
	if got := h.g.Engine(); got != e.name {
		t.Fatalf("the gateway runs the %s engine, want %s", got, e.name)
	}
	e.started.Add(1)
	return h
}
