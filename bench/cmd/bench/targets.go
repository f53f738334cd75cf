package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// targetPeer is the peer the relay engine's acceptance targets are about;
// targetRef is shown beside it for reference.
const (
	targetPeer = "healthgate-relay"
	targetRef  = "healthgate-grpc"
)

// target is one acceptance target: a ratio of the peer's value to a
// reference peer's in the same workload of the same run, at most or at
// least limit.
type target struct {
	title    string
	workload string
	ref      string // the reference peer
	refName  string // how the target names it
	limit    float64
	atMost   bool // the ratio must be ≤ limit; else ≥ limit
	// value is what is compared: the peer's, and the reference's as
	// computed from the same workload (added p50 needs direct's too).
	value func(get func(peer string) (agg, bool), peer string) (float64, bool)
	unit  string // of value, for the cell
}

// targets are the relay engine's acceptance targets, in the order its
// acceptance states them.
var targets = []target{
	{
		title: "proxy CPU per unary RPC at c=50", workload: "unary-c50", ref: "haproxy", refName: "HAProxy",
		limit: 1.0, atMost: true, unit: "CPU-µs",
		value: func(get func(string) (agg, bool), p string) (float64, bool) {
			a, ok := get(p)
			return a.proxyCPU, ok && !math.IsNaN(a.proxyCPU)
		},
	},
	{
		title: "added p50 at c=1 (p50 − direct's)", workload: "unary-c1", ref: "nginx", refName: "nginx",
		limit: 1.0, atMost: true, unit: "µs",
		value: func(get func(string) (agg, bool), p string) (float64, bool) {
			a, ok := get(p)
			d, dok := get("direct")
			return a.p50 - d.p50, ok && dok
		},
	},
	{
		title: "bidi msg/s", workload: "stream-c50", ref: "direct", refName: "direct",
		limit: 0.9, unit: "msg/s",
		value: func(get func(string) (agg, bool), p string) (float64, bool) {
			a, ok := get(p)
			return a.rate, ok
		},
	},
	{
		title: "p99 at c=50", workload: "unary-c50", ref: "direct", refName: "direct",
		limit: 1.15, atMost: true, unit: "µs",
		value: func(get func(string) (agg, bool), p string) (float64, bool) {
			a, ok := get(p)
			return a.p99, ok
		},
	},
	{
		title: "1 MiB unary MB/s", workload: "unary-1mib", ref: "direct", refName: "direct",
		limit: 0.9, unit: "MB/s",
		value: func(get func(string) (agg, bool), p string) (float64, bool) {
			a, ok := get(p)
			return a.rate, ok
		},
	},
}

// wanted is the target as the acceptance states it.
func (t target) wanted() string {
	op := "≥"
	if t.atMost {
		op = "≤"
	}
	return fmt.Sprintf("%s %.2f× %s", op, t.limit, t.refName)
}

// targetResult is one target evaluated for one peer.
type targetResult struct {
	v, ref float64 // the peer's value and the reference's
	ratio  float64 // v / ref; NaN when ref is not positive
	ok     bool    // both values exist in this run
	pass   bool
}

// evaluate computes t for peer from get (one workload's medians by peer).
// The verdict compares v with limit × ref, so that it stands even when
// the ratio does not (a reference that adds no latency at all).
func (t target) evaluate(get func(peer string) (agg, bool), peer string) targetResult {
	v, ok := t.value(get, peer)
	ref, rok := t.value(get, t.ref)
	if !ok || !rok || math.IsNaN(v) || math.IsNaN(ref) {
		return targetResult{ratio: math.NaN()}
	}
	res := targetResult{v: v, ref: ref, ratio: math.NaN(), ok: true}
	if ref > 0 {
		res.ratio = v / ref
	}
	if t.atMost {
		res.pass = v <= t.limit*ref
	} else {
		res.pass = v >= t.limit*ref
	}
	return res
}

func (tr targetResult) cell(t target) string {
	if !tr.ok {
		return "—"
	}
	ratio := "—"
	if !math.IsNaN(tr.ratio) {
		ratio = fmt.Sprintf("%.2f×", tr.ratio)
	}
	sign := ""
	if t.unit == "µs" && t.workload == "unary-c1" {
		sign = "+"
	}
	return fmt.Sprintf("%s (%s%s vs %s%s %s)", ratio, sign, num(tr.v), sign, num(tr.ref), t.unit)
}

func (tr targetResult) verdict() string {
	switch {
	case !tr.ok:
		return "n/a"
	case tr.pass:
		return "PASS"
	default:
		return "MISS"
	}
}

// renderTargets prints the relay engine's acceptance targets, each a
// ratio within this run, with PASS or MISS.
func (r *report) renderTargets(b *strings.Builder) {
	if !slices.Contains(r.opts.peers, targetPeer) {
		return
	}
	withRef := slices.Contains(r.opts.peers, targetRef)
	fmt.Fprintf(b, "\n## Targets (%s)\n\n", targetPeer)
	b.WriteString("Each a ratio of medians within this run. The cell gives the ratio, then the peer's value against the reference's.\n\n")
	fmt.Fprintf(b, "| target | workload | wanted | %s | verdict |", targetPeer)
	if withRef {
		fmt.Fprintf(b, " %s, for reference |", targetRef)
	}
	b.WriteString("\n|---|---|---|---:|---|")
	if withRef {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	var passed, total int
	var noisy, absent []string
	for _, t := range targets {
		get := func(p string) (agg, bool) { return r.get(t.workload, p) }
		res := t.evaluate(get, targetPeer)
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s |", t.title, t.workload, t.wanted(), res.cell(t), res.verdict())
		if withRef {
			fmt.Fprintf(b, " %s |", t.evaluate(get, targetRef).cell(t))
		}
		b.WriteString("\n")
		if res.ok {
			total++
			if res.pass {
				passed++
			}
			if r.noise(t.workload) != "" && !slices.Contains(noisy, t.workload) {
				noisy = append(noisy, t.workload)
			}
		} else if !slices.Contains(absent, t.workload) {
			absent = append(absent, t.workload)
		}
	}
	fmt.Fprintf(b, "\n- %d of %d targets met", passed, total)
	if len(absent) > 0 {
		fmt.Fprintf(b, "; not measured in this run (workload or peer missing): %s", strings.Join(absent, ", "))
	}
	b.WriteString(".\n")
	if len(noisy) > 0 {
		fmt.Fprintf(b, "- NOISE under %s: rerun before trusting a verdict near its limit.\n", strings.Join(noisy, ", "))
	}
}
