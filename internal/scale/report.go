package scale

import (
	"fmt"
	"io"
	"math"
	"text/tabwriter"
	"time"
)

// WriteTables prints two markdown tables of rs: totals and latencies, then
// the idle cost per backend over the Before baseline.
func WriteTables(w io.Writer, rs []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	row := func(cells ...any) {
		for _, c := range cells {
			fmt.Fprintf(tw, "\t %v ", c)
		}
		fmt.Fprintln(tw, "\t")
	}
	fmt.Fprintln(tw, "Totals. RSS before forced GCs; live heap after one GC (sync.Pools still full) and after two; \"gw\" = the gateway's share (goroutines by pprof label, heap by allocation stack), the rest is the in-process backends' and the harness's. CPU per flip covers its way out and back in. Other load: CPU the rest of the machine used during the sync / the flips; times are noisy when it is high.")
	fmt.Fprintln(tw)
	row("backends", "GOGC", "sync (1st table, 50%, 90%)", "sync CPU (GC)", "RSS (anon) idle", "RSS (anon) after flips", "peak RSS", "live heap 1 GC / 2 GCs (gw)", "stacks", "heap goal", "goroutines (gw)", "flip-out p50 / p99", "flip-in p50 / p99", "CPU per flip (GC)", "other load")
	row("---", "---", "---", "---", "---", "---", "---", "---", "---", "---", "---", "---", "---", "---", "---")
	for _, r := range rs {
		flips := time.Duration(max(1, len(r.FlipOut)))
		row(r.Backends, gogc(r), fmt.Sprintf("%s (%s, %s, %s)", dur(r.Sync), dur(r.SyncFirst), dur(r.SyncHalf), dur(r.Sync90)),
			fmt.Sprintf("%s (%s)", dur(r.SyncCost.CPU), dur(r.SyncCost.GCCPU)),
			fmt.Sprintf("%s (%s)", mib(r.Idle.RSS), mib(r.Idle.RSSAnon)),
			fmt.Sprintf("%s (%s)", mib(r.AfterFlips.RSS), mib(r.AfterFlips.RSSAnon)), mib(r.PeakRSS),
			fmt.Sprintf("%s / %s (%s)", mib(r.Idle.LiveOneGC), mib(r.Idle.Live), mib(r.Idle.GatewayHeap)), mib(r.Idle.Stacks), mib(r.Idle.Goal),
			fmt.Sprintf("%d (%d)", r.Idle.Goroutines, r.Idle.GatewayGoroutines),
			fmt.Sprintf("%s / %s", dur(Percentile(r.FlipOut, 50)), dur(Percentile(r.FlipOut, 99))),
			fmt.Sprintf("%s / %s", dur(Percentile(r.FlipIn, 50)), dur(Percentile(r.FlipIn, 99))),
			fmt.Sprintf("%s (%s)", dur(r.FlipCost.CPU/flips), dur(r.FlipCost.GCCPU/flips)),
			fmt.Sprintf("%.2f / %.2f cores", r.SyncCost.OtherCores, r.FlipCost.OtherCores),
		)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "Idle cost per backend: (every backend routable) - (backends listening, no checker yet), over the number of backends.")
	fmt.Fprintln(tw)
	row("backends", "GOGC", "RSS KiB", "live heap KiB", "gw heap KiB", "backend heap KiB", "stacks KiB", "goroutines", "gw goroutines", "backend goroutines")
	row("---", "---", "---", "---", "---", "---", "---", "---", "---", "---")
	for _, r := range rs {
		n := float64(r.Backends)
		per := func(after, before uint64) string { return fmt.Sprintf("%.1f", (float64(after)-float64(before))/1024/n) }
		perG := func(after, before int) string { return fmt.Sprintf("%.2f", float64(after-before)/n) }
		row(r.Backends, gogc(r),
			per(r.Idle.RSS, r.Before.RSS), per(r.Idle.Live, r.Before.Live),
			per(r.Idle.GatewayHeap, r.Before.GatewayHeap), per(r.Idle.BackendHeap, r.Before.BackendHeap),
			per(r.Idle.Stacks, r.Before.Stacks),
			perG(r.Idle.Goroutines, r.Before.Goroutines),
			perG(r.Idle.GatewayGoroutines, r.Before.GatewayGoroutines),
			perG(r.Idle.BackendGoroutines, r.Before.BackendGoroutines),
		)
	}
	return tw.Flush()
}

func gogc(r Result) string {
	s := fmt.Sprint(r.GOGC)
	if r.MemoryLimit != math.MaxInt64 {
		s += " limit " + mib(uint64(r.MemoryLimit))
	}
	return s
}

func mib(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func dur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
}
