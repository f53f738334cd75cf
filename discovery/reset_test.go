package discovery_test

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/internal/testutil"
)

// fakeConsul answers the two queries the Consul source makes, the catalog
// of services and the health of one service, as blocking queries over a
// state the test sets: every answer carries the state's index, and a query
// that waits on that index is held until the state changes. While the agent
// is down every query fails, the held ones too. A test drives the source
// through an exact order of answers with it, which a real agent restarted
// under load gives only now and then.
type fakeConsul struct {
	mu      sync.Mutex // guards the fields below
	up      bool
	index   uint64
	catalog map[string][]string
	health  map[string][]*api.ServiceEntry
	changed chan struct{} // closed and replaced at each change
	// answered lists the indexes each query ("catalog" or a service name)
	// was answered with; failed counts its failures.
	answered map[string][]uint64
	failed   map[string]int
	// failing are queries that fail even while the agent is up.
	failing map[string]bool
}

func startFakeConsul(t *testing.T) (*fakeConsul, string) {
	t.Helper()
	f := &fakeConsul{changed: make(chan struct{}), answered: map[string][]uint64{}, failed: map[string]int{}, failing: map[string]bool{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.Listener.Addr().String()
}

// set brings the agent up with this state at index. instances maps a
// service to the addresses of its instances, each registered with the route
// tag for routes[service].
func (f *fakeConsul) set(index uint64, routes map[string]string, instances map[string][]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.up, f.index = true, index
	f.catalog = map[string][]string{"consul": {}}
	f.health = map[string][]*api.ServiceEntry{}
	for svc, addrs := range instances {
		tags := []string{"healthgate.route=" + routes[svc]}
		f.catalog[svc] = tags
		for _, addr := range addrs {
			port, _ := strconv.Atoi(strings.TrimPrefix(addr, "127.0.0.1:"))
			f.health[svc] = append(f.health[svc], &api.ServiceEntry{
				Node:    &api.Node{Node: "node-1", Address: "127.0.0.1", Datacenter: "dc1"},
				Service: &api.AgentService{ID: svc + "-" + addr, Service: svc, Address: "127.0.0.1", Port: port, Tags: tags},
			})
		}
	}
	f.changeLocked()
}

// fail makes query fail (or answer again) while the agent is up.
func (f *fakeConsul) fail(query string, fail bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failing[query] = fail
	f.changeLocked()
}

// down makes every query fail, as a stopped agent does.
func (f *fakeConsul) down() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.up = false
	f.changeLocked()
}

func (f *fakeConsul) changeLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeConsul) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var query string
	switch {
	case r.URL.Path == "/v1/catalog/services":
		query = "catalog"
	case strings.HasPrefix(r.URL.Path, "/v1/health/service/"):
		query = strings.TrimPrefix(r.URL.Path, "/v1/health/service/")
	default:
		http.NotFound(w, r)
		return
	}
	wait, _ := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
	for {
		f.mu.Lock()
		if !f.up || f.failing[query] {
			f.failed[query]++
			f.mu.Unlock()
			http.Error(w, "agent down", http.StatusInternalServerError)
			return
		}
		if f.index != wait {
			var body any = f.catalog
			if query != "catalog" {
				body = append([]*api.ServiceEntry{}, f.health[query]...)
			}
			index := f.index
			f.answered[query] = append(f.answered[query], index)
			f.mu.Unlock()
			w.Header().Set("X-Consul-Index", strconv.FormatUint(index, 10))
			w.Header().Set("X-Consul-LastContact", "0")
			w.Header().Set("X-Consul-KnownLeader", "true")
			json.NewEncoder(w).Encode(body) //nolint:errcheck // the client may have gone
			return
		}
		changed := f.changed
		f.mu.Unlock()
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}

// waitAnswered waits until query has been answered with index.
func (f *fakeConsul) waitAnswered(t *testing.T, query string, index uint64) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, query+" answered at index "+strconv.FormatUint(index, 10), func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return slices.Contains(f.answered[query], index)
	})
}

// waitFailed waits until each query has failed since the agent went down.
func (f *fakeConsul) waitFailed(t *testing.T, queries ...string) {
	t.Helper()
	f.mu.Lock()
	before := map[string]int{}
	for _, q := range queries {
		before[q] = f.failed[q]
	}
	f.mu.Unlock()
	testutil.WaitFor(t, 10*time.Second, "queries "+strings.Join(queries, ", ")+" to fail", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, q := range queries {
			if f.failed[q] == before[q] {
				return false
			}
		}
		return true
	})
}

func fakeSource(t *testing.T, addr string, grace time.Duration, mod func(*discovery.ConsulConfig)) (*watcher, *testutil.LogRecorder) {
	t.Helper()
	cfg := discovery.ConsulConfig{
		ConsulSettings: discovery.ConsulSettings{Address: addr},
		RetryBase:      time.Millisecond, RetryMax: 5 * time.Millisecond,
		ResetGrace: grace,
	}
	if mod != nil {
		mod(&cfg)
	}
	rec, logger := testutil.NewLogRecorder(t)
	src, err := discovery.NewConsul(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	return run(t, src), rec
}

func (w *watcher) wantAddrs(t *testing.T, route string, want ...string) {
	t.Helper()
	if got, ok := w.addrs(route); !ok || join(got) != join(want) {
		t.Fatalf("route %s = %v (known %v), want %v", route, got, ok, want)
	}
}

var b33Routes = map[string]string{"svc-a": "test.Svc", "svc-b": "other.Svc", "svc-c": "third.Svc", "svc-d": "fourth.Svc"}

// TestB33_RestartedAgentCatchingUpIsOneReset: an agent that restarted
// empty answers first with an index below the one known before (a reset),
// then, as instances register again, with indexes still below it. Those
// answers are news, not further resets: the catalog known before the
// restart stays kept, so a route none of whose instances has registered
// again keeps its backend for the grace. (The gateway's B33 test saw the
// catalog's second answer taken for a reset that replaced the kept catalog
// with the restarted agent's empty one, and other.Svc dropped at once.)
func TestB33_RestartedAgentCatchingUpIsOneReset(t *testing.T) {
	f, addr := startFakeConsul(t)
	f.set(17, b33Routes, map[string][]string{"svc-a": {"127.0.0.1:7001"}, "svc-b": {"127.0.0.1:7002"}})
	w, rec := fakeSource(t, addr, time.Hour, nil)
	w.waitAddrs(t, 10*time.Second, "test.Svc", "127.0.0.1:7001")
	w.waitAddrs(t, 10*time.Second, "other.Svc", "127.0.0.1:7002")

	f.down()
	f.waitFailed(t, "catalog", "svc-a", "svc-b")
	// Back without its state: a lower index, and of what it knew nothing
	// but a service that was quick to register.
	f.set(11, b33Routes, map[string][]string{"svc-c": {"127.0.0.1:7003"}})
	for _, q := range []string{"catalog", "svc-a", "svc-b"} {
		f.waitAnswered(t, q, 11)
	}
	// svc-a registers again, and a new service with a route of its own:
	// the index moves on, still below 17.
	f.set(16, b33Routes, map[string][]string{"svc-a": {"127.0.0.1:7001"}, "svc-c": {"127.0.0.1:7003"}, "svc-d": {"127.0.0.1:7004"}})
	// fourth.Svc comes only from the catalog's answer at 16 and svc-d's
	// first answer: once it is there, the source has taken both in.
	w.waitAddrs(t, 10*time.Second, "fourth.Svc", "127.0.0.1:7004")
	w.wantAddrs(t, "test.Svc", "127.0.0.1:7001")
	w.wantAddrs(t, "other.Svc", "127.0.0.1:7002")
	w.wantAddrs(t, "third.Svc", "127.0.0.1:7003")
	if n := rec.Count(slog.LevelInfo, "first catalog answer after an outage"); n != 1 {
		t.Fatalf("the catalog reported %d resets for one restart, want 1", n)
	}
}

// TestB33_SecondResetWithinGraceKeepsBoth: a second restart within the
// grace of the first keeps what the first kept beside what the watch knew
// just before the second.
func TestB33_SecondResetWithinGraceKeepsBoth(t *testing.T) {
	f, addr := startFakeConsul(t)
	f.set(20, b33Routes, map[string][]string{"svc-a": {"127.0.0.1:7001", "127.0.0.1:7002"}})
	w, _ := fakeSource(t, addr, time.Hour, func(cfg *discovery.ConsulConfig) {
		cfg.DisableAutoRoutes = true
		cfg.Routes = []discovery.ConsulRoute{{Route: "test.Svc", Service: "svc-a"}}
	})
	w.waitAddrs(t, 10*time.Second, "test.Svc", "127.0.0.1:7001", "127.0.0.1:7002")

	f.down()
	f.waitFailed(t, "svc-a")
	f.set(5, b33Routes, nil)
	f.waitAnswered(t, "svc-a", 5)
	f.set(8, b33Routes, map[string][]string{"svc-a": {"127.0.0.1:7001"}})
	f.waitAnswered(t, "svc-a", 8)

	f.down()
	f.waitFailed(t, "svc-a")
	f.set(3, b33Routes, map[string][]string{"svc-a": {"127.0.0.1:7003"}})
	// 7003 is only in the answer after the second restart.
	testutil.WaitFor(t, 10*time.Second, "the answer after the second restart", func() bool {
		got, _ := w.addrs("test.Svc")
		return slices.Contains(got, "127.0.0.1:7003")
	})
	w.wantAddrs(t, "test.Svc", "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003")
}

// TestB33_KeptAfterResetGoAfterGrace: what a reset kept and did not
// register again is dropped once the grace is over, route and all; what
// registered again stays.
func TestB33_KeptAfterResetGoAfterGrace(t *testing.T) {
	f, addr := startFakeConsul(t)
	f.set(17, b33Routes, map[string][]string{"svc-a": {"127.0.0.1:7001"}, "svc-b": {"127.0.0.1:7002"}})
	w, _ := fakeSource(t, addr, 100*time.Millisecond, nil)
	w.waitAddrs(t, 10*time.Second, "test.Svc", "127.0.0.1:7001")
	w.waitAddrs(t, 10*time.Second, "other.Svc", "127.0.0.1:7002")

	f.down()
	f.waitFailed(t, "catalog", "svc-a", "svc-b")
	f.set(11, b33Routes, map[string][]string{"svc-a": {"127.0.0.1:7001"}})
	testutil.WaitFor(t, 10*time.Second, "other.Svc to be dropped after the grace", func() bool {
		_, ok := w.addrs("other.Svc")
		return !ok
	})
	w.wantAddrs(t, "test.Svc", "127.0.0.1:7001")
}

// TestB33_HealthResetAfterCatalogResetKeepsItsGrace: the catalog and a
// service's health query each see the restart when they first answer
// again, on their own retry schedules. A service whose health answer came
// later keeps its instances for the grace from that answer, even once the
// catalog's grace is over.
func TestB33_HealthResetAfterCatalogResetKeepsItsGrace(t *testing.T) {
	const grace = 3 * time.Second
	f, addr := startFakeConsul(t)
	f.set(17, b33Routes, map[string][]string{"svc-a": {"127.0.0.1:7001"}, "svc-b": {"127.0.0.1:7002"}})
	w, _ := fakeSource(t, addr, grace, nil)
	w.waitAddrs(t, 10*time.Second, "other.Svc", "127.0.0.1:7002")

	f.down()
	f.waitFailed(t, "catalog", "svc-b")
	f.fail("svc-b", true)
	f.set(11, b33Routes, nil)
	f.waitAnswered(t, "catalog", 11)
	catalogReset := time.Now()
	// svc-b's query answers again most of a grace later.
	time.Sleep(grace * 5 / 6)
	f.fail("svc-b", false)
	f.waitAnswered(t, "svc-b", 11)
	// Past the catalog's grace, well within svc-b's.
	time.Sleep(time.Until(catalogReset.Add(grace + grace/6)))
	w.wantAddrs(t, "other.Svc", "127.0.0.1:7002")
	testutil.WaitFor(t, 2*grace, "other.Svc to be dropped after svc-b's grace", func() bool {
		_, ok := w.addrs("other.Svc")
		return !ok
	})
}
