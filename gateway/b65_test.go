package gateway_test

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/tracing/tracingcfg"
)

// TestB65_NoSecretInLogsAdminOrErrors: the Consul ACL token (also the
// tracing collector's API key) reaches no log line (debug included), no
// admin page and no error, through a normal run and a Consul outage with
// its failing queries.
func TestB65_NoSecretInLogsAdminOrErrors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		const token = "b65-s3cret-token-6f1d2c"
		c := testutil.StartConsul(t)
		a := testutil.StartBackend(t)
		c.Register(t, "", testutil.RouteReg("a", "svc", a.Addr, testutil.TestService))
		var logs testutil.SyncBuffer
		logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		cfg := consulCfg(c.Addr)
		cfg.Consul.Token = token
		cfg.Log.Access = true
		// The collector's API key is a secret too.
		cfg.Tracing = tracingcfg.Config{OTLPEndpoint: testutil.StartOTLPReceiver(t).Addr, Insecure: true, Headers: map[string]string{"x-api-key": token}}
		h := e.startLog(t, cfg, logger)
		h.routable(t, testutil.TestService, 1)
		srv := adminServer(t, h)
		cc := testutil.Dial(t, h.addr)
		if _, err := testutil.Unary(t.Context(), cc, "/test.Svc/Echo", []byte("x")); err != nil {
			t.Fatal(err)
		}

		c.Stop()
		testutil.WaitFor(t, 10*time.Second, "a failed Consul query in the log", func() bool {
			return strings.Contains(logs.String(), "consul query failed")
		})
		if _, err := h.g.Reload(config.Config{Consul: config.Config{}.Consul, Routes: []config.Route{{Service: "x.S", ConsulService: "x"}}}); err == nil || strings.Contains(err.Error(), token) {
			t.Fatalf("a reload that cannot work: %v, want an error without the token", err)
		}
		for _, path := range []string{"/backends", "/metrics", "/readyz", "/"} {
			resp, err := http.Get(srv.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), token) {
				t.Fatalf("%s shows the Consul token", path)
			}
		}
		if strings.Contains(logs.String(), token) {
			t.Fatal("the log holds the Consul token")
		}
		if !strings.Contains(logs.String(), "rpc") {
			t.Fatal("the log has no access line: the test did not see what it should")
		}
	})
}
