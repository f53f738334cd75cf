package main

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/healthgate/healthgate/bench/internal/result"
)

// noisyPercent of a core used by processes outside the bench, in a window,
// earns a warning: past it, differences between peers may be the noise.
const noisyPercent = 10

type report struct {
	opts     options
	meta     map[string]any
	runs     map[string]map[string][]result.Run // workload -> peer -> runs
	notes    map[string]map[string][]string     // workload -> peer -> failures
	miss     map[string]map[string]string       // workload -> peer -> why MISSING
	profiles []*profileResult
}

func (r *report) missing(w, peer, why string) {
	if r.miss == nil {
		r.miss = map[string]map[string]string{}
	}
	if r.miss[w] == nil {
		r.miss[w] = map[string]string{}
	}
	r.miss[w][peer] = why
}

// agg is one peer's medians over its runs of one workload.
type agg struct {
	runs       int
	rate       float64
	p50, p99   float64
	p999       float64
	proxyCPU   float64 // NaN for direct
	backendCPU float64
	errors     int64
}

func aggregate(w workload, runs []result.Run) (agg, bool) {
	if len(runs) == 0 {
		return agg{}, false
	}
	col := func(f func(result.Run) float64) float64 {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = f(r)
		}
		return median(v)
	}
	a := agg{runs: len(runs)}
	a.rate = col(func(r result.Run) float64 {
		if w.unit == "MB/s" {
			return r.RespMBps
		}
		return r.Rate
	})
	a.p50 = col(func(r result.Run) float64 { return r.P50Us })
	a.p99 = col(func(r result.Run) float64 { return r.P99Us })
	a.p999 = col(func(r result.Run) float64 { return r.P999Us })
	a.backendCPU = col(func(r result.Run) float64 { return r.CPU["backend"].UsPerOp })
	a.proxyCPU = math.NaN()
	if _, ok := runs[0].CPU["proxy"]; ok {
		a.proxyCPU = col(func(r result.Run) float64 { return r.CPU["proxy"].UsPerOp })
	}
	for _, r := range runs {
		a.errors += r.Errors
	}
	return a, true
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func (r *report) render() string {
	var b strings.Builder
	o := r.opts
	m := r.meta
	runs := "runs"
	if o.reps == 1 {
		runs = "run"
	}
	fmt.Fprintf(&b, "\n# healthgate bench, %s mode\n\n", o.mode)
	fmt.Fprintf(&b, "%v. Each cell is the median of %d %s of %s after %s of warm-up.\n", m["time"], o.reps, runs, o.duration, o.warmup)
	fmt.Fprintf(&b, "Machine: %v, %v CPUs, Linux %v; ", m["cpu_model"], m["cpus"], m["kernel"])
	if m["pinned"] == true {
		fmt.Fprintf(&b, "each proxy pinned to CPU %s, backend and load generator to CPU %s.\n", proxyCPU, loadCPU)
	} else {
		b.WriteString("processes NOT pinned (no taskset or one CPU): CPU figures are less comparable.\n")
	}
	fmt.Fprintf(&b, "healthgate %v, built with %v", m["healthgate"], m["go"])
	for _, t := range []string{"nginx", "haproxy"} {
		if v, ok := m[t]; ok {
			fmt.Fprintf(&b, "; %v", v)
		}
	}
	b.WriteString(".\n\n")
	b.WriteString("×direct divides by direct's value, ×best by the best non-direct peer's (highest rate, lowest latency or CPU). " +
		"Proxy CPU is utime+stime of the proxy's process tree (/proc/PID/stat) over the window per completed op, " +
		"and has no ×direct: direct has no proxy. Backend CPU is the same for the backend.\n")

	for _, w := range o.workloads {
		r.renderWorkload(&b, w)
	}
	r.renderHeadline(&b)
	r.renderTargets(&b)
	for _, p := range r.profiles {
		renderProfile(&b, p)
	}
	return b.String()
}

func (r *report) renderWorkload(b *strings.Builder, w workload) {
	op := "RPC"
	if w.kind == "stream" {
		op = "msg"
	}
	fmt.Fprintf(b, "\n## %s: %s\n\n", w.name, w.title)
	fmt.Fprintf(b, "| peer | %s | ×direct | ×best | p50 µs | ×direct | ×best | p99 µs | ×direct | ×best | p99.9 µs | proxy CPU-µs/%s | ×best | backend CPU-µs/%s | errors |\n", w.unit, op, op)
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")

	peers := w.peersOf(r.opts.peers)
	aggs := map[string]agg{}
	for _, p := range peers {
		if a, ok := aggregate(w, r.runs[w.name][p]); ok {
			aggs[p] = a
		}
	}
	direct, hasDirect := aggs["direct"]
	best := agg{rate: math.NaN(), p50: math.NaN(), p99: math.NaN(), proxyCPU: math.NaN()}
	for p, a := range aggs {
		if isReference(p) {
			continue
		}
		best.rate = pick(best.rate, a.rate, math.Max)
		best.p50 = pick(best.p50, a.p50, math.Min)
		best.p99 = pick(best.p99, a.p99, math.Min)
		best.proxyCPU = pick(best.proxyCPU, a.proxyCPU, math.Min)
	}
	ratio := func(v, ref float64, ok bool) string {
		if !ok || math.IsNaN(v) || math.IsNaN(ref) || ref == 0 {
			return "—"
		}
		return fmt.Sprintf("%.2f", v/ref)
	}

	var foot []string
	for _, p := range peers {
		a, ok := aggs[p]
		name := p
		for _, n := range r.notes[w.name][p] {
			foot = append(foot, fmt.Sprintf("%s: %s", p, n))
		}
		if why, miss := r.miss[w.name][p]; miss {
			fmt.Fprintf(b, "| %s | MISSING |%s\n", p, strings.Repeat(" |", 14))
			foot = append(foot, fmt.Sprintf("%s: MISSING: %s", p, why))
			continue
		}
		if !ok {
			fmt.Fprintf(b, "| %s | FAILED |%s\n", p, strings.Repeat(" |", 14))
			continue
		}
		if a.runs < r.opts.reps {
			name += fmt.Sprintf(" (%d of %d runs)", a.runs, r.opts.reps)
		}
		cpu, cpuBest := "—", "—"
		if !math.IsNaN(a.proxyCPU) {
			cpu, cpuBest = num(a.proxyCPU), ratio(a.proxyCPU, best.proxyCPU, true)
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |\n",
			name,
			num(a.rate), ratio(a.rate, direct.rate, hasDirect), ratio(a.rate, best.rate, true),
			num(a.p50), ratio(a.p50, direct.p50, hasDirect), ratio(a.p50, best.p50, true),
			num(a.p99), ratio(a.p99, direct.p99, hasDirect), ratio(a.p99, best.p99, true),
			num(a.p999), cpu, cpuBest, num(a.backendCPU), a.errors)
	}
	if t := negotiatedTLS(peers, r.runs[w.name]); t != "" {
		foot = append(foot, t)
	}
	if n := r.noise(w.name); n != "" {
		foot = append(foot, n)
	}
	if len(foot) > 0 {
		b.WriteString("\n")
		for _, f := range foot {
			fmt.Fprintf(b, "- %s\n", oneLine(f))
		}
	}
}

// noise is the NOISE note for a workload's windows, empty when the machine
// was quiet enough in every one of them.
func (r *report) noise(wname string) string {
	var other, steal []float64
	for _, runs := range r.runs[wname] {
		for _, run := range runs {
			other = append(other, run.OtherCPUPercent)
			steal = append(steal, run.StealPercent)
		}
	}
	if len(other) == 0 || (slices.Max(other) < noisyPercent && slices.Max(steal) < noisyPercent) {
		return ""
	}
	return fmt.Sprintf("NOISE: other processes on the machine used up to %.0f%% of a core (median %.0f%%) "+
		"and the hypervisor stole up to %.0f%% during these windows; differences of that order are not the peers'.",
		slices.Max(other), median(other), slices.Max(steal))
}

// negotiatedTLS says what each peer's connections agreed on, in one
// clause when they all agreed on the same; empty for a plaintext workload.
func negotiatedTLS(peers []string, runs map[string][]result.Run) string {
	var parts []string
	var first string
	same := true
	for _, p := range peers {
		if len(runs[p]) == 0 || runs[p][0].TLS == "" {
			continue
		}
		t := runs[p][0].TLS
		if first == "" {
			first = t
		}
		same = same && t == first
		parts = append(parts, p+" "+t)
	}
	switch {
	case first == "":
		return ""
	case same:
		return "TLS negotiated by every peer: " + first
	default:
		return "TLS negotiated: " + strings.Join(parts, "; ")
	}
}

// renderHeadline answers the questions the bench exists for, in one place.
func (r *report) renderHeadline(b *strings.Builder) {
	get := r.get
	type line struct {
		title string
		cell  func(peer string) (string, bool)
	}
	proxyCPU := func(wname string) func(string) (string, bool) {
		return func(p string) (string, bool) {
			a, ok := get(wname, p)
			return num(a.proxyCPU), ok && !math.IsNaN(a.proxyCPU)
		}
	}
	// Same-run ratios: the machine's load moves every peer's CPU per RPC
	// together, their ratio much less.
	cpuRatio := func(wname, ref string) func(string) (string, bool) {
		return func(p string) (string, bool) {
			a, ok := get(wname, p)
			d, dok := get(wname, ref)
			return fmt.Sprintf("%.2f×", a.proxyCPU/d.proxyCPU), ok && dok && d.proxyCPU > 0 && !math.IsNaN(a.proxyCPU)
		}
	}
	rateRatio := func(wname string) func(string) (string, bool) {
		return func(p string) (string, bool) {
			a, ok := get(wname, p)
			d, dok := get(wname, "direct")
			return fmt.Sprintf("%.2f×", a.rate/d.rate), ok && dok && d.rate > 0
		}
	}
	lines := []line{
		{"Proxy CPU-µs per RPC at c=50 (unary-c50)", proxyCPU("unary-c50")},
		{"Proxy CPU per RPC at c=50 as a ratio to HAProxy's (unary-c50)", cpuRatio("unary-c50", "haproxy")},
		// The policies' cost is a question about one peer: the ratio of
		// any other peer to healthgate-relay says nothing about it.
		{"Proxy CPU per RPC with retries and limits on, as a ratio to healthgate-relay's loaded at the same time (policy-c50, median of the repetitions' ratios)", func(p string) (string, bool) {
			if p != policyPeer {
				return "", false
			}
			ratios := pairedCPU(r.runs[policyWorkload][p], r.runs[policyWorkload][targetPeer])
			if len(ratios) == 0 {
				return "", false
			}
			return fmt.Sprintf("%.2f×", median(ratios)), true
		}},
		{"Proxy CPU-µs per RPC at c=50, terminating TLS (unary-c50-tls)", proxyCPU("unary-c50-tls")},
		{"Proxy CPU per RPC terminating TLS as a ratio to nginx's (unary-c50-tls)", cpuRatio("unary-c50-tls", "nginx")},
		{"Proxy CPU per RPC terminating TLS as a ratio to HAProxy's (unary-c50-tls)", cpuRatio("unary-c50-tls", "haproxy")},
		{"Added p50 latency at c=1, peer p50 − direct p50 (unary-c1)", func(p string) (string, bool) {
			a, ok := get("unary-c1", p)
			d, dok := get("unary-c1", "direct")
			return fmt.Sprintf("%+.0f µs", a.p50-d.p50), ok && dok
		}},
		{"Bidi stream msg/s as a ratio to direct (stream-c50)", func(p string) (string, bool) {
			a, ok := get("stream-c50", p)
			d, dok := get("stream-c50", "direct")
			return fmt.Sprintf("%.2f×", a.rate/d.rate), ok && dok && d.rate > 0
		}},
		{"p99 at c=50 as a ratio to direct (unary-c50)", func(p string) (string, bool) {
			a, ok := get("unary-c50", p)
			d, dok := get("unary-c50", "direct")
			return fmt.Sprintf("%.2f×", a.p99/d.p99), ok && dok && d.p99 > 0
		}},
		{"QPS at c=50 as a ratio to direct (unary-c50)", rateRatio("unary-c50")},
		{"1 MiB unary MB/s as a ratio to direct (unary-1mib)", rateRatio("unary-1mib")},
		{"1 MiB unary MB/s over one connection as a ratio to direct (unary-1mib-1conn)", rateRatio("unary-1mib-1conn")},
		{"Proxy CPU-µs per RPC at c=500 over 100 connections (unary-c500)", proxyCPU("unary-c500")},
		{"Proxy CPU per RPC at c=500 as a ratio to HAProxy's (unary-c500)", cpuRatio("unary-c500", "haproxy")},
		{"p99 at c=500 as a ratio to direct (unary-c500)", func(p string) (string, bool) {
			a, ok := get("unary-c500", p)
			d, dok := get("unary-c500", "direct")
			return fmt.Sprintf("%.2f×", a.p99/d.p99), ok && dok && d.p99 > 0
		}},
		{"QPS at c=500 as a ratio to direct (unary-c500)", rateRatio("unary-c500")},
	}
	var peers []string
	for _, p := range r.opts.peers {
		if p != "direct" {
			peers = append(peers, p)
		}
	}
	if len(peers) == 0 {
		return
	}
	b.WriteString("\n## Headline\n\n| |")
	for _, p := range peers {
		fmt.Fprintf(b, " %s |", p)
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", len(peers)) + "\n")
	for _, l := range lines {
		cells := make([]string, len(peers))
		any := false
		for i, p := range peers {
			c, ok := l.cell(p)
			if !ok {
				c = "—"
			}
			any = any || ok
			cells[i] = c
		}
		if any {
			fmt.Fprintf(b, "| %s | %s |\n", l.title, strings.Join(cells, " | "))
		}
	}
}

// get is one peer's medians in one workload of this run.
func (r *report) get(wname, peer string) (agg, bool) {
	for _, w := range r.opts.workloads {
		if w.name == wname {
			return aggregate(w, r.runs[wname][peer])
		}
	}
	return agg{}, false
}

func renderProfile(b *strings.Builder, p *profileResult) {
	name := p.peer
	if name == "" {
		name = "healthgate"
	}
	fmt.Fprintf(b, "\n## %s CPU profile (%s)\n\n", name, or(p.workload, "unary-c50"))
	if p.err != nil {
		fmt.Fprintf(b, "Not captured: %s\n", oneLine(p.err.Error()))
		return
	}
	fmt.Fprintf(b, "Taken through %s. `go tool pprof -http=: %s` to explore; the top of `-top`:\n\n```\n", p.how, p.path)
	lines := strings.Split(p.top, "\n")
	if len(lines) > 22 {
		lines = lines[:22]
	}
	b.WriteString(strings.Join(lines, "\n"))
	b.WriteString("\n```\n")
}

func pick(cur, v float64, better func(a, b float64) float64) float64 {
	if math.IsNaN(v) {
		return cur
	}
	if math.IsNaN(cur) {
		return v
	}
	return better(cur, v)
}

// num prints three significant digits or the integer part, whichever is
// longer: enough to compare peers, not more than the noise allows.
func num(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "—"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n    | ", " / ")
	return strings.ReplaceAll(s, "\n", " ")
}
