package main

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/healthgate/healthgate/bench/internal/result"
)

// targetPeer is the peer the relay engine's acceptance targets are about;
// targetRef is shown beside it for reference. policyPeer is the relay with
// a route's retries and limits on, which the policies' target compares
// with targetPeer.
const (
	targetPeer = "healthgate-relay"
	targetRef  = "healthgate-grpc"
	policyPeer = "healthgate-relay-policy"
	// policyWorkload loads targetPeer and policyPeer at once.
	policyWorkload = "policy-c50"
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
	// peer is whose value is compared with ref's when it is not
	// targetPeer. Such a target is about that peer alone: it has no
	// reference cell, and no row in a run without both peers.
	peer string
	// paired judges the median of the ratios of each repetition's two
	// windows, measured at the same time (a together workload), rather
	// than the ratio of the medians: two configurations of one binary
	// differ by a few percent, less than this machine's speed drifts
	// between windows, and only windows that share the machine's moment
	// cancel the drift.
	paired bool
}

// cpuPerRPC is the value of the targets on proxy CPU per RPC.
func cpuPerRPC(get func(string) (agg, bool), p string) (float64, bool) {
	a, ok := get(p)
	return a.proxyCPU, ok && !math.IsNaN(a.proxyCPU)
}

// subject is the peer whose value t judges.
func (t target) subject() string { return or(t.peer, targetPeer) }

// targets are the relay engine's acceptance targets, in the order its
// acceptance states them, then the traffic policies' cost.
var targets = []target{
	{
		title: "proxy CPU per unary RPC at c=50", workload: "unary-c50", ref: "haproxy", refName: "HAProxy",
		limit: 1.0, atMost: true, unit: "CPU-µs", value: cpuPerRPC,
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
	// Issue 11: retries and limits, on but never triggered, may cost the
	// hot path at most 5%.
	{
		title: "cost of retries and limits (retry, max_in_flight, rate), loaded at once with the relay", workload: policyWorkload,
		peer: policyPeer, ref: targetPeer, refName: targetPeer,
		limit: 1.05, atMost: true, unit: "CPU-µs", value: cpuPerRPC, paired: true,
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
	// pairs are a paired target's ratios, one per repetition; ratio is
	// then their median.
	pairs []float64
}

// pairedCPU is the ratios of peer's proxy CPU per RPC to ref's, one per
// repetition in which both were measured.
func pairedCPU(peer, ref []result.Run) []float64 {
	var out []float64
	for _, p := range peer {
		for _, r := range ref {
			pc, pok := p.CPU["proxy"]
			rc, rok := r.CPU["proxy"]
			if p.Rep == r.Rep && p.Error == "" && r.Error == "" && pok && rok && rc.UsPerOp > 0 {
				out = append(out, pc.UsPerOp/rc.UsPerOp)
			}
		}
	}
	return out
}

// pair turns tr into the paired verdict on ratios.
func (tr targetResult) pair(t target, ratios []float64) targetResult {
	if !tr.ok || len(ratios) == 0 {
		return tr
	}
	tr.pairs = ratios
	tr.ratio = median(ratios)
	if t.atMost {
		tr.pass = tr.ratio <= t.limit
	} else {
		tr.pass = tr.ratio >= t.limit
	}
	return tr
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
	if len(tr.pairs) > 0 {
		ps := make([]string, len(tr.pairs))
		for i, p := range tr.pairs {
			ps[i] = fmt.Sprintf("%.2f", p)
		}
		return fmt.Sprintf("%s paired (%s; medians %s vs %s %s)", ratio, strings.Join(ps, ", "), num(tr.v), num(tr.ref), t.unit)
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

// renderTargets prints the relay engine's acceptance targets and the
// policies' cost, each a ratio within this run, with PASS or MISS.
func (r *report) renderTargets(b *strings.Builder) {
	if !slices.Contains(r.opts.peers, targetPeer) {
		return
	}
	withRef := slices.Contains(r.opts.peers, targetRef)
	withFloor := slices.Contains(r.opts.peers, splicePeer)
	fmt.Fprintf(b, "\n## Targets (%s)\n\n", targetPeer)
	b.WriteString("Each a ratio of medians within this run. The cell gives the ratio, then the peer's value against the reference's.")
	if withFloor {
		fmt.Fprintf(b, " %s, a TCP forwarder that does nothing but move bytes, is the same ratio for the least any process between client and backend costs them here.", splicePeer)
	}
	b.WriteString("\n\n")
	fmt.Fprintf(b, "| target | workload | wanted | %s | verdict |", targetPeer)
	if withRef {
		fmt.Fprintf(b, " %s, for reference |", targetRef)
	}
	if withFloor {
		fmt.Fprintf(b, " %s, the floor |", splicePeer)
	}
	b.WriteString("\n|---|---|---|---:|---|")
	if withRef {
		b.WriteString("---:|")
	}
	if withFloor {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	var passed, total int
	var noisy, absent, others []string
	for _, t := range targets {
		if t.peer != "" && !slices.Contains(r.opts.peers, t.peer) {
			continue
		}
		get := func(p string) (agg, bool) { return r.get(t.workload, p) }
		res := t.evaluate(get, t.subject())
		if t.paired {
			res = res.pair(t, pairedCPU(r.runs[t.workload][t.subject()], r.runs[t.workload][t.ref]))
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s |", t.title, t.workload, t.wanted(), res.cell(t), res.verdict())
		for _, other := range []struct {
			on   bool
			peer string
		}{{withRef, targetRef}, {withFloor, splicePeer}} {
			if !other.on {
				continue
			}
			cell := "—"
			if t.peer == "" {
				cell = t.evaluate(get, other.peer).cell(t)
			}
			fmt.Fprintf(b, " %s |", cell)
		}
		b.WriteString("\n")
		if t.peer != "" {
			others = append(others, fmt.Sprintf("%s: %s's value, in the %s column, against %s's", t.title, t.peer, targetPeer, t.ref))
		}
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
	for _, o := range others {
		fmt.Fprintf(b, "- %s.\n", o)
	}
	if len(noisy) > 0 {
		fmt.Fprintf(b, "- NOISE under %s: rerun before trusting a verdict near its limit.\n", strings.Join(noisy, ", "))
	}
}
