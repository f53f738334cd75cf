// Package memlimit keeps the Go runtime's soft memory limit a fixed margin
// above what the process really holds, so that a high GOGC can save
// collector CPU while memory stays near the live set.
//
// GOGC sets the heap goal as a multiple of the live heap: at 400, a gateway
// with a 40 MiB live heap may grow to 200 MiB before it collects, which
// buys CPU per call but costs resident memory that grows with the number of
// backends. A soft limit caps that growth; a fixed one cannot fit every
// size (too low for 5,000 backends, where the GC would run without pause;
// too high to matter for 10). Following the live set, it fits both: a small
// gateway never reaches its limit and keeps the CPU gain, a large one
// collects when it is Ratio × its live memory plus Headroom.
package memlimit

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
	"time"
)

// Config of the limit. The zero value is ready to use.
type Config struct {
	// Ratio of the live memory (heap objects that survived the last
	// collection, and goroutine stacks) that the limit allows. Zero means
	// 1.5.
	Ratio float64
	// Headroom is added to the limit: the cost of the binary and runtime
	// is not part of the live set. Zero means 20 MiB.
	Headroom uint64
	// Every is how often the limit follows the live set. Zero means 1s.
	Every time.Duration
}

// Validate reports the first field that cannot be used.
func (c Config) Validate() error {
	switch {
	case c.Ratio < 0 || (c.Ratio > 0 && c.Ratio < 1):
		return fmt.Errorf("ratio: must be at least 1, got %v", c.Ratio)
	case c.Every < 0:
		return fmt.Errorf("every: must not be negative, got %s", c.Every)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Ratio == 0 {
		c.Ratio = 1.5
	}
	if c.Headroom == 0 {
		c.Headroom = 20 << 20
	}
	if c.Every == 0 {
		c.Every = time.Second
	}
	return c
}

// The runtime/metrics names read; both exist in every Go release this
// module builds with.
const (
	liveHeap = "/gc/heap/live:bytes"
	stacks   = "/memory/classes/heap/stacks:bytes"
)

// Limit is the soft memory limit for a live set: live heap and stacks.
func (c Config) Limit(live, stack uint64) int64 {
	c = c.withDefaults()
	l := c.Ratio*float64(live+stack) + float64(c.Headroom)
	if l >= math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(l)
}

// Run sets the soft memory limit now, after every garbage collection and
// every cfg.Every, until ctx ends; then it puts back the limit it found.
//
// After every collection, because the live heap it follows is measured by
// collections: while the live set grows (thousands of backends connecting
// at start), a limit set from an older measurement would sit below what
// the process needs and the collector would run without pause.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("memlimit: %w", err)
	}
	cfg = cfg.withDefaults()
	before := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(before)
	samples := []metrics.Sample{{Name: liveHeap}, {Name: stacks}}
	t := time.NewTicker(cfg.Every)
	defer t.Stop()
	gc := make(chan struct{}, 1)
	stop := afterEachGC(gc)
	defer stop()
	for {
		metrics.Read(samples)
		var live, stack uint64
		if samples[0].Value.Kind() == metrics.KindUint64 {
			live = samples[0].Value.Uint64()
		}
		if samples[1].Value.Kind() == metrics.KindUint64 {
			stack = samples[1].Value.Uint64()
		}
		debug.SetMemoryLimit(cfg.Limit(live, stack))
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-gc:
		}
	}
}

// sentinel is garbage whose finalizer runs after the collection that
// found it unreachable, and makes the next one.
type sentinel struct {
	ch      chan<- struct{}
	stopped *atomic.Bool
}

// afterEachGC sends on ch (without blocking) after every garbage collection
// until stop is called: a finalizer on an unreachable object runs after
// each cycle, the runtime's only signal of one.
func afterEachGC(ch chan<- struct{}) (stop func()) {
	stopped := new(atomic.Bool)
	var arm func()
	arm = func() {
		runtime.SetFinalizer(&sentinel{ch: ch, stopped: stopped}, func(s *sentinel) {
			if s.stopped.Load() {
				return
			}
			select {
			case s.ch <- struct{}{}:
			default:
			}
			arm()
		})
	}
	arm()
	return func() { stopped.Store(true) }
}
