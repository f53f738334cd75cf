package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/healthgate/healthgate/bench/internal/result"
)

func workloadNamed(t *testing.T, name string) workload {
	t.Helper()
	for _, w := range allWorkloads {
		if w.name == name {
			return w
		}
	}
	t.Fatalf("no workload %s", name)
	return workload{}
}

// targetRun is one run with the figures the targets read.
func targetRun(rate, mbps, p50, p99, proxy float64) result.Run {
	r := result.Run{Rate: rate, RespMBps: mbps, P50Us: p50, P99Us: p99, CPU: map[string]result.CPU{"backend": {UsPerOp: 10}}}
	if proxy > 0 {
		r.CPU["proxy"] = result.CPU{UsPerOp: proxy}
	}
	return r
}

func TestTargets(t *testing.T) {
	var ws []workload
	for _, n := range []string{"unary-c1", "unary-c50", "stream-c50", "unary-1mib", "policy-c50"} {
		ws = append(ws, workloadNamed(t, n))
	}
	one := func(r result.Run) []result.Run { return []result.Run{r} }
	rep := &report{
		opts: options{mode: "quick", reps: 1, peers: []string{"direct", "healthgate-relay", "healthgate-grpc", "healthgate-relay-policy", "nginx", "haproxy"}, workloads: ws},
		meta: map[string]any{},
		runs: map[string]map[string][]result.Run{
			// Added p50: relay +60 µs, nginx +80 µs: 0.75×, PASS.
			"unary-c1": {
				"direct":           one(targetRun(5000, 0, 100, 200, 0)),
				"healthgate-relay": one(targetRun(4000, 0, 160, 300, 30)),
				"healthgate-grpc":  one(targetRun(3000, 0, 200, 400, 40)),
				"nginx":            one(targetRun(3500, 0, 180, 300, 20)),
			},
			// CPU: relay 22 µs, HAProxy 20 µs: 1.10×, MISS. p99: relay
			// 1140 µs, direct 1000 µs: 1.14×, PASS (limit 1.15).
			"unary-c50": {
				"direct":           one(targetRun(20000, 0, 400, 1000, 0)),
				"healthgate-relay": one(targetRun(18000, 0, 450, 1140, 22)),
				"healthgate-grpc":  one(targetRun(12000, 0, 600, 2000, 40)),
				"haproxy":          one(targetRun(17000, 0, 450, 1200, 20)),
			},
			// Policies, loaded at once with the relay: 23.1 µs against its
			// 22 µs: 1.05×, on the limit, PASS.
			"policy-c50": {
				"healthgate-relay":        one(targetRun(9000, 0, 460, 1150, 22)),
				"healthgate-relay-policy": one(targetRun(8750, 0, 460, 1150, 23.1)),
			},
			// msg/s: 0.90× is on the limit: PASS.
			"stream-c50": {
				"direct":           one(targetRun(50000, 0, 100, 200, 0)),
				"healthgate-relay": one(targetRun(45000, 0, 120, 300, 10)),
			},
			// MB/s (RespMBps, not Rate): 0.85×, MISS.
			"unary-1mib": {
				"direct":           one(targetRun(1, 1000, 100, 200, 0)),
				"healthgate-relay": one(targetRun(1000, 850, 120, 300, 10)),
			},
		},
		notes: map[string]map[string][]string{},
	}

	want := map[string]struct {
		ratio float64
		pass  bool
	}{
		"proxy CPU per unary RPC at c=50":   {1.10, false},
		"added p50 at c=1 (p50 − direct's)": {0.75, true},
		"bidi msg/s":                        {0.90, true},
		"p99 at c=50":                       {1.14, true},
		"1 MiB unary MB/s":                  {0.85, false},
		"cost of retries and limits (retry, max_in_flight, rate), loaded at once with the relay": {1.05, true},
	}
	if len(targets) != len(want) {
		t.Fatalf("%d targets, want %d", len(targets), len(want))
	}
	for _, tg := range targets {
		w, ok := want[tg.title]
		if !ok {
			t.Errorf("unexpected target %q", tg.title)
			continue
		}
		got := tg.evaluate(func(p string) (agg, bool) { return rep.get(tg.workload, p) }, tg.subject())
		if !got.ok || math.Abs(got.ratio-w.ratio) > 1e-9 || got.pass != w.pass {
			t.Errorf("%s: ratio %v pass %v ok %v, want ratio %v pass %v", tg.title, got.ratio, got.pass, got.ok, w.ratio, w.pass)
		}
	}

	out := rep.render()
	for _, want := range []string{
		"## Targets (healthgate-relay)",
		"| target | workload | wanted | healthgate-relay | verdict | healthgate-grpc, for reference |",
		"| proxy CPU per unary RPC at c=50 | unary-c50 | ≤ 1.00× HAProxy | 1.10× (22.0 vs 20.0 CPU-µs) | MISS | 2.00× (40.0 vs 20.0 CPU-µs) |",
		"| added p50 at c=1 (p50 − direct's) | unary-c1 | ≤ 1.00× nginx | 0.75× (+60.0 vs +80.0 µs) | PASS | 1.25× (+100 vs +80.0 µs) |",
		"| bidi msg/s | stream-c50 | ≥ 0.90× direct | 0.90× (45000 vs 50000 msg/s) | PASS | — |",
		"| p99 at c=50 | unary-c50 | ≤ 1.15× direct | 1.14× (1140 vs 1000 µs) | PASS | 2.00× (2000 vs 1000 µs) |",
		"| 1 MiB unary MB/s | unary-1mib | ≥ 0.90× direct | 0.85× (850 vs 1000 MB/s) | MISS | — |",
		// The policy peer against the relay; healthgate-grpc has no policy
		// twin, so no reference.
		"| cost of retries and limits (retry, max_in_flight, rate), loaded at once with the relay | policy-c50 | ≤ 1.05× healthgate-relay | 1.05× paired (1.05; medians 23.1 vs 22.0 CPU-µs) | PASS | — |",
		"- 4 of 6 targets met.",
		"- cost of retries and limits (retry, max_in_flight, rate), loaded at once with the relay: healthgate-relay-policy's value, in the healthgate-relay column, against healthgate-relay's.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "NOISE") {
		t.Errorf("quiet runs reported as NOISE:\n%s", out)
	}
}

func TestTargetsMissingAndNoisy(t *testing.T) {
	w := workloadNamed(t, "unary-c50")
	noisy := targetRun(20000, 0, 400, 1000, 0)
	noisy.OtherCPUPercent = 40
	rep := &report{
		opts: options{mode: "quick", reps: 1, peers: []string{"direct", "healthgate-relay", "haproxy"}, workloads: []workload{w}},
		meta: map[string]any{},
		runs: map[string]map[string][]result.Run{w.name: {
			"direct":           {noisy},
			"healthgate-relay": {targetRun(18000, 0, 450, 1200, 20)},
		}},
		notes: map[string]map[string][]string{},
	}
	rep.missing(w.name, "haproxy", "not installed")
	out := rep.render()
	for _, want := range []string{
		"| proxy CPU per unary RPC at c=50 | unary-c50 | ≤ 1.00× HAProxy | — | n/a |\n",
		"| p99 at c=50 | unary-c50 | ≤ 1.15× direct | 1.20× (1200 vs 1000 µs) | MISS |\n",
		"- 0 of 1 targets met; not measured in this run (workload or peer missing): unary-c50, unary-c1, stream-c50, unary-1mib.",
		"- NOISE under unary-c50: ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}

	if strings.Contains(out, "cost of the traffic policies") {
		t.Errorf("policies' target without %s among the peers:\n%s", policyPeer, out)
	}

	// Asked for but missing, the policy peer's target is n/a, not absent:
	// a policy config healthgate refuses must not pass unseen.
	rep.opts.peers = []string{"direct", "healthgate-relay", "healthgate-relay-policy", "haproxy"}
	rep.missing(w.name, policyPeer, "did not start: exited during start-up")
	out = rep.render()
	for _, want := range []string{
		"| cost of retries and limits (retry, max_in_flight, rate), loaded at once with the relay | policy-c50 | ≤ 1.05× healthgate-relay | — | n/a |\n",
		"- 0 of 1 targets met;",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}

	// Without the relay among the peers there is no targets table.
	rep.opts.peers = []string{"direct", "haproxy"}
	if out := rep.render(); strings.Contains(out, "## Targets") {
		t.Errorf("targets table without %s:\n%s", targetPeer, out)
	}
}

// An added p50 that nginx does not add (≤ 0) gives no ratio, but still a
// verdict.
func TestTargetAddedLatencyWithoutRatio(t *testing.T) {
	var tg target
	for _, x := range targets {
		if x.workload == "unary-c1" {
			tg = x
		}
	}
	aggs := map[string]agg{"direct": {p50: 100}, "nginx": {p50: 100}, targetPeer: {p50: 120}}
	get := func(p string) (agg, bool) { a, ok := aggs[p]; return a, ok }
	got := tg.evaluate(get, targetPeer)
	if !got.ok || !math.IsNaN(got.ratio) || got.pass {
		t.Errorf("got %+v, want no ratio and MISS", got)
	}
	if c := got.cell(tg); c != "— (+20.0 vs +0.00 µs)" {
		t.Errorf("cell %q", c)
	}
}

func TestParsePeersAlias(t *testing.T) {
	got, err := parsePeers("-peers", "nginx,healthgate,direct,healthgate-grpc")
	if err != nil {
		t.Fatal(err)
	}
	if want := "direct,healthgate-relay,healthgate-grpc,nginx"; strings.Join(got, ",") != want {
		t.Errorf("parsePeers = %v, want %s", got, want)
	}
	// The policy peer is not in the healthgate alias, is named on its
	// own, and comes after the engines.
	got, err = parsePeers("-peers", "healthgate-relay-policy,healthgate")
	if err != nil {
		t.Fatal(err)
	}
	if want := "healthgate-relay,healthgate-grpc,healthgate-relay-policy"; strings.Join(got, ",") != want {
		t.Errorf("parsePeers = %v, want %s", got, want)
	}
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := "direct,tcp-splice,healthgate-relay,healthgate-grpc,healthgate-relay-policy,grpc-proxy,nginx,haproxy"; strings.Join(o.peers, ",") != want {
		t.Errorf("default peers %v, want %s", o.peers, want)
	}
	if _, err := parsePeers("-peers", "healthgate-x"); err == nil {
		t.Error("unknown peer accepted")
	}
	o, err = parseFlags([]string{"-peers", "direct,healthgate", "-profile"})
	if err != nil {
		t.Fatal(err)
	}
	if want := "healthgate-relay,healthgate-grpc"; strings.Join(o.profilePeers, ",") != want {
		t.Errorf("-profile profiles %v, want %s", o.profilePeers, want)
	}
	o, err = parseFlags([]string{"-peers", "direct,healthgate", "-profile-peers", "healthgate-relay"})
	if err != nil {
		t.Fatal(err)
	}
	if !o.profile || strings.Join(o.profilePeers, ",") != "healthgate-relay" {
		t.Errorf("-profile-peers: profile %v peers %v", o.profile, o.profilePeers)
	}
	if _, err := parseFlags([]string{"-peers", "direct,nginx", "-profile-peers", "healthgate-relay"}); err == nil {
		t.Error("-profile-peers accepted a peer not among -peers")
	}
}

// The policy peer's config is the relay's with the policies added to its
// route, and nothing else: the ratio of the two prices the policies alone.
// (That healthgate accepts it is shown by the peer starting in a run: a
// config it refuses makes the peer MISSING with healthgate's message.)
func TestPolicyPeerConfig(t *testing.T) {
	relay := healthgateConfig("127.0.0.1:1", "127.0.0.1:2", healthgatePeers[targetPeer], nil)
	policy := healthgateConfig("127.0.0.1:1", "127.0.0.1:2", healthgatePeers[policyPeer], nil)
	if got := strings.Replace(policy, policyRoute, "", 1); got != relay {
		t.Errorf("without its policies the policy peer's config is\n%s\nwant the relay's\n%s", got, relay)
	}
	// Each retry and limit of the issue is on, under the route (indented as
	// its keys); no timeout is (see policyRoute).
	for _, key := range []string{"    retry:\n      codes: [UNAVAILABLE]\n", "    max_in_flight: 100000\n", "    rate: {per_second: 10000000, burst: 10000000}\n"} {
		if !strings.Contains(policy, "    health_service: \"\"\n"+policyRoute) || !strings.Contains(policyRoute, key) {
			t.Errorf("policy peer's config lacks %q under its route:\n%s", key, policy)
		}
	}
	if strings.Contains(policyRoute, "timeout") {
		t.Errorf("policy peer's route sets a timeout, which prices a deadline, not the policies:\n%s", policyRoute)
	}
}

// A paired target judges each repetition's two windows against each
// other: with the machine's speed drifting between repetitions, the ratio
// of the medians can miss where every pairing but one passes. These are
// the figures of a real run whose ratio of medians was 1.20×.
func TestPairedTarget(t *testing.T) {
	run := func(rep int, us float64) result.Run {
		return result.Run{Rep: rep, CPU: map[string]result.CPU{"proxy": {UsPerOp: us}}}
	}
	relay := []result.Run{run(1, 16.5), run(2, 23.6), run(3, 27.6)}
	policy := []result.Run{run(1, 16.4), run(2, 28.5), run(3, 28.3), {Rep: 4, Error: "failed"}}
	pairs := pairedCPU(policy, relay)
	if len(pairs) != 3 {
		t.Fatalf("pairs %v, want one per repetition both peers measured", pairs)
	}
	var tg target
	for _, x := range targets {
		if x.paired {
			tg = x
		}
	}
	res := targetResult{v: 28.3, ref: 23.6, ratio: 28.3 / 23.6, ok: true}.pair(tg, pairs)
	if got := fmt.Sprintf("%.2f", res.ratio); got != "1.03" || !res.pass {
		t.Errorf("paired ratio %s pass %v, want the median pairing 1.03 and a pass", got, res.pass)
	}
	if cell := res.cell(tg); !strings.Contains(cell, "1.03× paired (0.99, 1.21, 1.03; medians 28.3 vs 23.6 CPU-µs)") {
		t.Errorf("cell %q", cell)
	}
}

// policy-c50 loads its two peers at once and no other; the policy peer runs
// in no other workload; without both peers the workload is left out, or
// refused when named.
func TestTogetherWorkload(t *testing.T) {
	w := workloadNamed(t, policyWorkload)
	all := []string{"direct", "healthgate-relay", "healthgate-grpc", "healthgate-relay-policy", "haproxy"}
	if got, want := strings.Join(w.peersOf(all), ","), "healthgate-relay,healthgate-relay-policy"; got != want {
		t.Errorf("%s measures %s, want %s", w.name, got, want)
	}
	if got, want := strings.Join(workloadNamed(t, "unary-c50").peersOf(all), ","), "direct,healthgate-relay,healthgate-grpc,haproxy"; got != want {
		t.Errorf("unary-c50 measures %s, want %s", got, want)
	}

	names := func(ws []workload) []string {
		var out []string
		for _, w := range ws {
			out = append(out, w.name)
		}
		return out
	}
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(names(o.workloads), policyWorkload) {
		t.Errorf("default workloads %v lack %s", names(o.workloads), policyWorkload)
	}
	o, err = parseFlags([]string{"-peers", "direct,healthgate"})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(names(o.workloads), policyWorkload) {
		t.Errorf("workloads %v hold %s without %s", names(o.workloads), policyWorkload, policyPeer)
	}
	if _, err := parseFlags([]string{"-peers", "healthgate", "-workloads", policyWorkload}); err == nil || !strings.Contains(err.Error(), policyPeer) {
		t.Errorf("%s named without %s: err %v, want one naming it", policyWorkload, policyPeer, err)
	}
	if _, err := parseFlags([]string{"-profile-workload", policyWorkload}); err == nil {
		t.Errorf("-profile-workload %s accepted", policyWorkload)
	}
}

// tcp-splice is a reference: its ratios fill a column of the targets
// table, it is never a workload's ×best, and it is left out where the
// peers terminate TLS.
func TestSpliceFloor(t *testing.T) {
	w := workloadNamed(t, "stream-c50")
	one := func(r result.Run) []result.Run { return []result.Run{r} }
	rep := &report{
		opts: options{mode: "quick", reps: 1, peers: []string{"direct", splicePeer, "healthgate-relay"}, workloads: []workload{w}},
		meta: map[string]any{},
		runs: map[string]map[string][]result.Run{w.name: {
			"direct":           one(targetRun(50000, 0, 100, 200, 0)),
			splicePeer:         one(targetRun(37000, 0, 120, 300, 2)),
			"healthgate-relay": one(targetRun(43000, 0, 130, 300, 10)),
		}},
		notes: map[string]map[string][]string{},
	}
	out := rep.render()
	for _, want := range []string{
		"| target | workload | wanted | healthgate-relay | verdict | tcp-splice, the floor |",
		"| bidi msg/s | stream-c50 | ≥ 0.90× direct | 0.86× (43000 vs 50000 msg/s) | MISS | 0.74× (37000 vs 50000 msg/s) |",
		// The relay is the best proxy on rate, though the splice's CPU
		// is lower: ×best compares proxies only.
		"| healthgate-relay | 43000 | 0.86 | 1.00 |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	all := []string{"direct", splicePeer, "healthgate-relay"}
	if got := workloadNamed(t, "unary-c50-tls").peersOf(all); slices.Contains(got, splicePeer) {
		t.Errorf("unary-c50-tls measures %v: %s cannot terminate TLS", got, splicePeer)
	}
	if got := workloadNamed(t, "unary-c50").peersOf(all); !slices.Contains(got, splicePeer) {
		t.Errorf("unary-c50 measures %v, without %s", got, splicePeer)
	}
}
