package discovery_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"

	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// watcher runs a source and keeps its latest snapshot.
type watcher struct {
	mu     sync.Mutex
	latest discovery.Snapshot
	n      int
	done   chan error
}

func run(t *testing.T, src discovery.Source) *watcher {
	t.Helper()
	w := &watcher{done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		w.done <- src.Run(ctx, func(s discovery.Snapshot) {
			w.mu.Lock()
			w.latest, w.n = s, w.n+1
			w.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-w.done; err != nil {
			t.Errorf("source Run: %v", err)
		}
	})
	return w
}

func (w *watcher) snap() discovery.Snapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.latest
}

// addrs returns the addresses of route, and whether the route exists.
func (w *watcher) addrs(route string) ([]string, bool) {
	s := w.snap()
	eps, ok := s.Routes[route]
	var out []string
	for _, e := range eps {
		out = append(out, e.Addr)
	}
	return out, ok
}

func (w *watcher) waitAddrs(t *testing.T, timeout time.Duration, route string, want ...string) time.Duration {
	t.Helper()
	start := time.Now()
	testutil.WaitFor(t, timeout, "route "+route+" to list "+join(want), func() bool {
		got, _ := w.addrs(route)
		return join(got) == join(want)
	})
	return time.Since(start)
}

func join(s []string) string {
	out := ""
	for _, x := range s {
		out += x + ","
	}
	return out
}

func TestStaticAndMerge(t *testing.T) {
	w := run(t, discovery.Merge(
		discovery.Static{"a.S": {"127.0.0.1:2", "127.0.0.1:1"}},
		discovery.Static{"a.S": {"127.0.0.1:1", "127.0.0.1:3"}, "b.S": {"127.0.0.1:4"}},
	))
	w.waitAddrs(t, 5*time.Second, "a.S", "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
	if got, _ := w.addrs("b.S"); join(got) != "127.0.0.1:4," {
		t.Fatalf("b.S = %v", got)
	}
	if !w.snap().Synced {
		t.Fatal("merged static sources are not synced")
	}
}

// counter sits between the source and Consul and counts the queries.
type counter struct {
	total, blocking atomic.Int64
}

func countingProxy(t *testing.T, consulAddr string) (string, *counter) {
	c := &counter{}
	target, _ := url.Parse("http://" + consulAddr)
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.total.Add(1)
		if idx := r.URL.Query().Get("index"); idx != "" && idx != "0" {
			c.blocking.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), c
}

func TestB30_RegisterAndDeregisterWithinOneSecond(t *testing.T) {
	c := testutil.StartConsul(t)
	addr, count := countingProxy(t, c.Addr)
	src, err := discovery.NewConsul(discovery.ConsulConfig{ConsulSettings: discovery.ConsulSettings{Address: addr}}, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	w := run(t, src)
	testutil.WaitFor(t, 5*time.Second, "the first sync", func() bool { return w.snap().Synced })

	start := time.Now()
	c.Register(t, "", testutil.RouteReg("a-1", "a", "127.0.0.1:7001", "test.Svc"))
	registered := time.Since(start)
	took := w.waitAddrs(t, time.Second, "test.Svc", "127.0.0.1:7001")
	t.Logf("registration -> in the snapshot: %v (register call took %v)", took, registered)

	c.Register(t, "", testutil.RouteReg("a-2", "a", "127.0.0.1:7002", "test.Svc"))
	w.waitAddrs(t, time.Second, "test.Svc", "127.0.0.1:7001", "127.0.0.1:7002")

	start = time.Now()
	c.CLI(t, "services", "deregister", "-id", "a-1")
	took = w.waitAddrs(t, time.Second, "test.Svc", "127.0.0.1:7002")
	t.Logf("consul services deregister -> out of the snapshot: %v", time.Since(start))
	_ = took

	// Blocking queries, not polling: with nothing changing, no query
	// returns, so none is sent. The window is the observation, not a wait
	// for an event.
	// The deregistration's after-effects (catalog and health indexes
	// moving) settle first.
	settled := false
	for deadline := time.Now().Add(5 * time.Second); !settled && time.Now().Before(deadline); {
		before := count.total.Load()
		time.Sleep(300 * time.Millisecond)
		settled = count.total.Load() == before
	}
	before := count.total.Load()
	time.Sleep(time.Second)
	if n := count.total.Load() - before; !settled || n != 0 {
		t.Fatalf("%d queries in 1s of quiet (settled %v); a blocking query should hold", n, settled)
	}
	if count.blocking.Load() == 0 {
		t.Fatalf("no query carried an index: not blocking queries (%d queries)", count.total.Load())
	}
}

func TestB31_PassingTagsDatacenterToken(t *testing.T) {
	t.Run("passing only, unless configured", func(t *testing.T) {
		c := testutil.StartConsul(t)
		reg := testutil.RouteReg("p-1", "p", "127.0.0.1:7101", "test.Svc")
		reg.Check = &api.AgentServiceCheck{CheckID: "p-1-ttl", TTL: "1h", Status: api.HealthCritical}
		c.Register(t, "", reg)
		c.Register(t, "", testutil.RouteReg("p-2", "p", "127.0.0.1:7102", "test.Svc"))

		strict := run(t, mustConsul(t, discovery.ConsulConfig{ConsulSettings: discovery.ConsulSettings{Address: c.Addr}}))
		loose := run(t, mustConsul(t, discovery.ConsulConfig{ConsulSettings: discovery.ConsulSettings{Address: c.Addr, AllowUnhealthy: true}}))
		strict.waitAddrs(t, 5*time.Second, "test.Svc", "127.0.0.1:7102")
		loose.waitAddrs(t, 5*time.Second, "test.Svc", "127.0.0.1:7101", "127.0.0.1:7102")

		if err := c.Client(t, "").Agent().UpdateTTL("p-1-ttl", "ok", api.HealthPassing); err != nil {
			t.Fatal(err)
		}
		strict.waitAddrs(t, 5*time.Second, "test.Svc", "127.0.0.1:7101", "127.0.0.1:7102")
	})

	t.Run("a route whose instances all fail still exists, empty", func(t *testing.T) {
		c := testutil.StartConsul(t)
		reg := testutil.RouteReg("f-1", "f", "127.0.0.1:7111", "test.Failing")
		reg.Check = &api.AgentServiceCheck{TTL: "1h", Status: api.HealthCritical}
		c.Register(t, "", reg)
		w := run(t, mustConsul(t, discovery.ConsulConfig{ConsulSettings: discovery.ConsulSettings{Address: c.Addr}}))
		testutil.WaitFor(t, 5*time.Second, "route test.Failing to exist", func() bool {
			got, ok := w.addrs("test.Failing")
			return ok && len(got) == 0 && w.snap().Synced
		})
	})

	t.Run("tags", func(t *testing.T) {
		c := testutil.StartConsul(t)
		c.Register(t, "", testutil.RouteReg("t-1", "t", "127.0.0.1:7201", "test.Svc", "blue"))
		c.Register(t, "", testutil.RouteReg("t-2", "t", "127.0.0.1:7202", "test.Svc", "green"))
		auto := run(t, mustConsul(t, discovery.ConsulConfig{ConsulSettings: discovery.ConsulSettings{Address: c.Addr, Tags: []string{"green"}}}))
		auto.waitAddrs(t, 5*time.Second, "test.Svc", "127.0.0.1:7202")
		explicit := run(t, mustConsul(t, discovery.ConsulConfig{ConsulSettings: discovery.ConsulSettings{Address: c.Addr, DisableAutoRoutes: true},
			Routes: []discovery.ConsulRoute{{Route: "blue.Svc", Service: "t", Tags: []string{"blue"}}}}))
		explicit.waitAddrs(t, 5*time.Second, "blue.Svc", "127.0.0.1:7201")
		if _, ok := explicit.addrs("test.Svc"); ok {
			t.Fatal("route tags were followed with auto routes off")
		}
	})

	t.Run("datacenter", func(t *testing.T) {
		c := testutil.StartConsul(t)
		c.Register(t, "", testutil.RouteReg("d-1", "d", "127.0.0.1:7301", "test.Svc"))
		ok := run(t, mustConsul(t, discovery.ConsulConfig{ConsulSettings: discovery.ConsulSettings{Address: c.Addr, Datacenter: "dc1"}}))
		ok.waitAddrs(t, 5*time.Second, "test.Svc", "127.0.0.1:7301")
		other := run(t, mustConsul(t, discovery.ConsulConfig{ConsulSettings: discovery.ConsulSettings{Address: c.Addr, Datacenter: "dc-elsewhere"}, RetryBase: 10 * time.Millisecond}))
		// The unknown datacenter answers with an error: the source keeps
		// retrying and never reports a sync or a route from dc1.
		ok.waitAddrs(t, 5*time.Second, "test.Svc", "127.0.0.1:7301")
		if s := other.snap(); s.Synced || len(s.Routes) > 0 {
			t.Fatalf("a source for another datacenter saw %+v", s)
		}
	})

	t.Run("ACL token", func(t *testing.T) {
		c := testutil.StartConsul(t, "-hcl", `acl { enabled = true, default_policy = "deny", tokens { initial_management = "root-token" } }`)
		c.Register(t, "root-token", testutil.RouteReg("a-1", "acl", "127.0.0.1:7401", "test.Svc"))
		with := run(t, mustConsul(t, discovery.ConsulConfig{ConsulSettings: discovery.ConsulSettings{Address: c.Addr, Token: "root-token"}}))
		without := run(t, mustConsul(t, discovery.ConsulConfig{ConsulSettings: discovery.ConsulSettings{Address: c.Addr}}))
		with.waitAddrs(t, 5*time.Second, "test.Svc", "127.0.0.1:7401")
		testutil.WaitFor(t, 5*time.Second, "the anonymous source to sync", func() bool { return without.snap().Synced })
		if got, ok := without.addrs("test.Svc"); ok {
			t.Fatalf("without a token the source saw %v", got)
		}
	})
}

func mustConsul(t *testing.T, cfg discovery.ConsulConfig) *discovery.Consul {
	t.Helper()
	src, err := discovery.NewConsul(cfg, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return src
}
