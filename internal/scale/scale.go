// Package scale measures what health checking costs as the number of
// backends grows: how long healthgate's checker takes until every backend
// is routable, what each backend costs in memory and goroutines while
// idle, and how soon a backend that stops serving leaves its route.
//
// Everything runs in one process: n grpc.Servers with grpc-go's health
// server on loopback listeners, one discovery.Static route listing them
// all, and the checker with the gateway's backend dial options. RSS and
// the live heap therefore include the backends' side of every connection;
// Mem tells the two sides' goroutines apart by a pprof label and their live
// heap by allocation stack.
//
// Memory figures depend on what ran before in the process: measure one
// configuration per process (the tests run each in a child process).
package scale

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync/atomic"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Route is the one route; the checker watches this health-service name.
const Route = "scale.Svc"

// Config says what to measure. Zero values are documented defaults.
type Config struct {
	// Backends is how many backends to start. Required.
	Backends int
	// Flips is how many flip-to-out measurements to take, spread evenly
	// over the backends. Zero means 200.
	Flips int
	// SyncTimeout bounds the wait until every backend is routable. Zero
	// means 5m.
	SyncTimeout time.Duration
	// FlipTimeout bounds each wait for a flip to show in the table. Zero
	// means 30s.
	FlipTimeout time.Duration
	// SplitHeap also splits the live heap between gateway and backends
	// (Mem.GatewayHeap), from the heap profile: set runtime.MemProfileRate
	// well below its 512 KiB default, before Run, for a usable estimate.
	SplitHeap bool
	// ProfileDir, if set, receives heap.pprof and goroutine.pprof, taken
	// once every backend is routable, and CPU profiles of the sync and of
	// the flips (cpu-sync.pprof, cpu-flips.pprof).
	ProfileDir string
	// Logger is the checker's; nil discards.
	Logger *slog.Logger
}

// Validate reports the first field that cannot be used.
func (c Config) Validate() error {
	switch {
	case c.Backends < 1:
		return fmt.Errorf("backends: must be at least 1, got %d", c.Backends)
	case c.Flips < 0:
		return fmt.Errorf("flips: must not be negative, got %d", c.Flips)
	case c.SyncTimeout < 0 || c.FlipTimeout < 0:
		return errors.New("timeouts: must not be negative")
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Flips == 0 {
		c.Flips = 200
	}
	if c.SyncTimeout == 0 {
		c.SyncTimeout = 5 * time.Minute
	}
	if c.FlipTimeout == 0 {
		c.FlipTimeout = 30 * time.Second
	}
	return c
}

// Result is what one Run measured.
type Result struct {
	Backends int
	// GOGC and MemoryLimit are the GC settings in force (MemoryLimit is
	// math.MaxInt64 when there is none).
	GOGC        int
	MemoryLimit int64

	// Empty is the process before any backend; Before has the backends
	// listening and no checker yet, the baseline of the per-backend costs;
	// Idle is once every backend is routable; AfterFlips once the flips
	// are done (RSS then shows the heap growth that GOGC allows under
	// churn).
	Empty, Before, Idle, AfterFlips Mem
	// PeakRSS is VmHWM at the end.
	PeakRSS uint64

	// Sync is from the checker's start until the first published table in
	// which every backend is routable; SyncCost what it took. SyncFirst is
	// until the first table (the checker has made every connection by
	// then), SyncHalf and Sync90 until half and 90% of the backends are
	// routable.
	Sync, SyncFirst, SyncHalf, Sync90 time.Duration
	SyncCost                          Phase

	// FlipOut holds, for each flip, the time from SetServingStatus
	// (NOT_SERVING) on the backend's health server to the publication of
	// the first table in which the backend is not routable; FlipIn the
	// same back to SERVING and routable. Sorted. FlipCost is what all the
	// flips took.
	FlipOut, FlipIn []time.Duration
	FlipCost        Phase
}

// published is a table and when the checker published it. Each links to
// the next one published, so that a waiter sees every table in order,
// however late it looks.
type published struct {
	table
	at   time.Time
	next atomic.Pointer[published]
}

// Run starts cfg.Backends backends and a checker over them, measures, and
// stops everything before it returns.
func Run(ctx context.Context, cfg Config) (res Result, err error) {
	if err := cfg.Validate(); err != nil {
		return res, fmt.Errorf("scale: %w", err)
	}
	cfg = cfg.withDefaults()
	n := cfg.Backends
	res.Backends = n
	res.GOGC, res.MemoryLimit = gcSettings()
	// A listener, and both ends of a connection, per backend.
	if err := raiseFileLimit(uint64(3*n + 256)); err != nil {
		return res, err
	}
	if res.Empty, err = measure(cfg.SplitHeap); err != nil {
		return res, err
	}

	bs, err := startBackends(ctx, n)
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, bs.stop()) }()
	if res.Before, err = measure(cfg.SplitHeap); err != nil {
		return res, err
	}

	// The checker runs under runCtx until Run returns, in a goroutine
	// labelled as the gateway's, as are the goroutines it starts. Its
	// tables form a list from first, which the waiter takes; changed says
	// the list grew.
	var (
		first   atomic.Pointer[published]
		last    *published // only the publish callback uses it
		changed = make(chan struct{}, 1)
		done    = make(chan error, 1)
	)
	publish := func(t table) {
		p := &published{table: t, at: time.Now()}
		if last == nil {
			first.Store(p)
		} else {
			last.next.Store(p)
		}
		last = p
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	ph, err := startPhase(cfg.ProfileDir, "sync")
	if err != nil {
		return res, err
	}
	start := time.Now()
	runCtx, stop := context.WithCancel(ctx)
	defer func() {
		stop()
		if cerr := <-done; cerr != nil {
			err = errors.Join(err, fmt.Errorf("scale: checker: %w", cerr))
		}
	}()
	pprof.Do(runCtx, pprof.Labels(sideLabel, sideGateway), func(ctx context.Context) {
		go func() { done <- runChecker(ctx, Route, bs.addrs, cfg.Logger, publish) }()
	})
	// wait returns the first table after the last one it looked at (after
	// none, the first call) for which ok holds, within timeout.
	var seen *published
	wait := func(what string, timeout time.Duration, ok func(*published) bool) (*published, error) {
		ctx, cancel := context.WithTimeout(runCtx, timeout)
		defer cancel()
		for {
			var next *published
			if seen == nil {
				// Taken, not read: first would keep every table alive.
				next = first.Swap(nil)
			} else {
				next = seen.next.Load()
			}
			if next != nil {
				seen = next
				if ok(next) {
					return next, nil
				}
				continue
			}
			select {
			case <-changed:
			case <-ctx.Done():
				return nil, fmt.Errorf("scale: %s: not within %s: %w", what, timeout, ctx.Err())
			case cerr := <-done:
				done <- cerr // for the deferred wait
				return nil, fmt.Errorf("scale: %s: the checker ended: %v", what, cerr)
			}
		}
	}

	synced, err := wait(fmt.Sprintf("all %d backends routable", n), cfg.SyncTimeout, func(p *published) bool {
		c, since := p.routableCount(Route), p.at.Sub(start)
		if res.SyncFirst == 0 {
			res.SyncFirst = since
		}
		if res.SyncHalf == 0 && 2*c >= n {
			res.SyncHalf = since
		}
		if res.Sync90 == 0 && 10*c >= 9*n {
			res.Sync90 = since
		}
		return c == n
	})
	if res.SyncCost, err = ph.end(err); err != nil {
		return res, err
	}
	res.Sync = synced.at.Sub(start)
	if res.Idle, err = measure(cfg.SplitHeap); err != nil {
		return res, err
	}
	if cfg.ProfileDir != "" {
		if err := writeProfiles(cfg.ProfileDir); err != nil {
			return res, err
		}
	}

	if ph, err = startPhase(cfg.ProfileDir, "flips"); err != nil {
		return res, err
	}
	if res.FlipOut, res.FlipIn, err = flips(cfg, bs, wait); err != nil {
		ph.end(err) //nolint:errcheck // err is the one to report
		return res, err
	}
	if res.FlipCost, err = ph.end(nil); err != nil {
		return res, err
	}
	if res.AfterFlips, err = measure(cfg.SplitHeap); err != nil {
		return res, err
	}
	st, err := readStatus()
	res.PeakRSS = st.Peak
	return res, err
}

// flips flips cfg.Flips backends, spread evenly over them, one at a time:
// NOT_SERVING until the table shows it unroutable, then SERVING until it
// shows it routable again. It returns both latencies of each flip, sorted.
func flips(cfg Config, bs *backends, wait func(string, time.Duration, func(*published) bool) (*published, error)) (out, in []time.Duration, err error) {
	n := len(bs.addrs)
	for i := range cfg.Flips {
		addr := bs.addrs[(i*n/cfg.Flips)%n]
		for _, dir := range []struct {
			st       healthpb.HealthCheckResponse_ServingStatus
			routable bool
			into     *[]time.Duration
		}{
			{healthpb.HealthCheckResponse_NOT_SERVING, false, &out},
			{healthpb.HealthCheckResponse_SERVING, true, &in},
		} {
			t0 := time.Now()
			bs.set(addr, dir.st)
			p, err := wait(fmt.Sprintf("flip %d: %s %s", i+1, addr, dir.st), cfg.FlipTimeout, func(p *published) bool {
				return p.routable(Route, addr) == dir.routable
			})
			if err != nil {
				return nil, nil, err
			}
			*dir.into = append(*dir.into, p.at.Sub(t0))
		}
	}
	slices.Sort(out)
	slices.Sort(in)
	return out, in, nil
}

// writeProfiles writes the heap profile (after a GC) and the goroutine
// profile into dir.
func writeProfiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("scale: profiles: %w", err)
	}
	for _, name := range []string{"heap", "goroutine"} {
		f, err := os.Create(filepath.Join(dir, name+".pprof"))
		if err != nil {
			return fmt.Errorf("scale: profiles: %w", err)
		}
		err = pprof.Lookup(name).WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("scale: %s profile: %w", name, err)
		}
	}
	return nil
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 100) of sorted
// durations; zero when there are none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(float64(len(sorted))*p/100)) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
