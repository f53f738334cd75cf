package main

import (
	"strings"
	"testing"

	"github.com/healthgate/healthgate/bench/internal/result"
)

func TestRenderRatiosAndMissing(t *testing.T) {
	w := allWorkloads[1] // unary-c50
	run := func(rate, p50, p99, proxy float64) result.Run {
		r := result.Run{Rate: rate, P50Us: p50, P99Us: p99, CPU: map[string]result.CPU{"backend": {UsPerOp: 10}}}
		if proxy > 0 {
			r.CPU["proxy"] = result.CPU{UsPerOp: proxy}
		}
		return r
	}
	rep := &report{
		opts: options{mode: "quick", reps: 3, peers: []string{"direct", "healthgate", "nginx", "haproxy"}, workloads: []workload{w}},
		meta: map[string]any{},
		runs: map[string]map[string][]result.Run{w.name: {
			// Medians: direct 20000 QPS, healthgate 10000 QPS and 40 µs of proxy CPU.
			"direct":     {run(19000, 100, 300, 0), run(20000, 100, 300, 0), run(21000, 100, 300, 0)},
			"healthgate": {run(10000, 300, 900, 40), run(9000, 300, 900, 50), run(11000, 300, 900, 30)},
			"haproxy":    {run(15000, 200, 600, 20), run(15000, 200, 600, 20), run(15000, 200, 600, 20)},
		}},
		notes: map[string]map[string][]string{},
	}
	rep.missing(w.name, "nginx", "not installed")
	out := rep.render()

	for _, want := range []string{
		"| direct | 20000 | 1.00 | 1.33 | 100 | 1.00 | 0.50 | 300 | 1.00 | 0.50 |",
		"| healthgate | 10000 | 0.50 | 0.67 | 300 | 3.00 | 1.50 | 900 | 3.00 | 1.50 | 0.00 | 40.0 | 2.00 | 10.0 | 0 |",
		"| haproxy | 15000 | 0.75 | 1.00 | 200 | 2.00 | 1.00 | 600 | 2.00 | 1.00 | 0.00 | 20.0 | 1.00 | 10.0 | 0 |",
		"| nginx | MISSING |",
		"- nginx: MISSING: not installed",
		"| Proxy CPU-µs per RPC at c=50 (unary-c50) | 40.0 | — | 20.0 |",
		"| p99 at c=50 as a ratio to direct (unary-c50) | 3.00× | — | 2.00× |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
