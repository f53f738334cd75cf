package memlimit

import (
	"context"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/healthgate/healthgate/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLimitFollowsTheLiveSet(t *testing.T) {
	for _, tc := range []struct {
		cfg         Config
		live, stack uint64
		want        int64
	}{
		{Config{}, 0, 0, 20 << 20},
		{Config{}, 40 << 20, 0, 80 << 20},
		{Config{}, 40 << 20, 20 << 20, 110 << 20},
		{Config{Ratio: 2, Headroom: 1 << 20}, 10 << 20, 0, 21 << 20},
	} {
		if got := tc.cfg.Limit(tc.live, tc.stack); got != tc.want {
			t.Errorf("%+v.Limit(%d, %d) = %d, want %d", tc.cfg, tc.live, tc.stack, got, tc.want)
		}
	}
	if err := (Config{Ratio: 0.5}).Validate(); err == nil {
		t.Error("a ratio below 1 was accepted: the limit would sit below the live set and the GC would never rest")
	}
}

// TestRunSetsAndRestores: while Run runs the limit is the live set's, and
// when it ends the limit found before is back.
func TestRunSetsAndRestores(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, Config{Every: time.Millisecond}) }()
	testutil.WaitFor(t, 10*time.Second, "Run to set a limit", func() bool { return debug.SetMemoryLimit(-1) != before })
	got := debug.SetMemoryLimit(-1)
	if got < 20<<20 || got > 1<<30 {
		t.Fatalf("limit %d, want the live set x1.5 + 20 MiB for a test process (between 20 MiB and 1 GiB)", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if after := debug.SetMemoryLimit(-1); after != before {
		t.Fatalf("limit after Run: %d, want the %d found before", after, before)
	}
}

// TestLimitFollowsEachCollection: the limit moves after a collection that
// measured a bigger live heap, without waiting for the timer, so that a
// live set growing fast (a start with thousands of backends) does not run
// into a stale limit.
func TestLimitFollowsEachCollection(t *testing.T) {
	// The live heap measured from here excludes what earlier tests left.
	runtime.GC()
	runtime.GC()
	before := debug.SetMemoryLimit(-1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, Config{Every: time.Hour}) }()
	defer func() {
		cancel()
		<-done
		debug.SetMemoryLimit(before)
	}()
	testutil.WaitFor(t, 10*time.Second, "the first limit", func() bool { return debug.SetMemoryLimit(-1) != before })
	first := debug.SetMemoryLimit(-1)
	live := make([]byte, 96<<20)
	for i := range live {
		live[i] = byte(i)
	}
	testutil.WaitFor(t, 10*time.Second, "the limit to follow a 96 MiB live heap", func() bool {
		runtime.GC()
		return debug.SetMemoryLimit(-1) >= first+96<<20
	})
	runtime.KeepAlive(live)
}
