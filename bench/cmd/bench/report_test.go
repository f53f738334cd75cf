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
		opts: options{mode: "quick", reps: 3, peers: []string{"direct", "healthgate-relay", "healthgate-grpc", "nginx", "haproxy"}, workloads: []workload{w}},
		meta: map[string]any{},
		runs: map[string]map[string][]result.Run{w.name: {
			// Medians: direct 20000 QPS, healthgate 10000 QPS and 40 µs of proxy CPU.
			"direct":           {run(19000, 100, 300, 0), run(20000, 100, 300, 0), run(21000, 100, 300, 0)},
			"healthgate-relay": {run(10000, 300, 900, 40), run(9000, 300, 900, 50), run(11000, 300, 900, 30)},
			"healthgate-grpc":  {run(8000, 400, 1200, 60), run(8000, 400, 1200, 60), run(8000, 400, 1200, 60)},
			"haproxy":          {run(15000, 200, 600, 20), run(15000, 200, 600, 20), run(15000, 200, 600, 20)},
		}},
		notes: map[string]map[string][]string{},
	}
	rep.missing(w.name, "nginx", "not installed")
	out := rep.render()

	for _, want := range []string{
		"| direct | 20000 | 1.00 | 1.33 | 100 | 1.00 | 0.50 | 300 | 1.00 | 0.50 |",
		"| healthgate-relay | 10000 | 0.50 | 0.67 | 300 | 3.00 | 1.50 | 900 | 3.00 | 1.50 | 0.00 | 40.0 | 2.00 | 10.0 | 0 |",
		"| healthgate-grpc | 8000 | 0.40 | 0.53 | 400 | 4.00 | 2.00 | 1200 | 4.00 | 2.00 | 0.00 | 60.0 | 3.00 | 10.0 | 0 |",
		"| haproxy | 15000 | 0.75 | 1.00 | 200 | 2.00 | 1.00 | 600 | 2.00 | 1.00 | 0.00 | 20.0 | 1.00 | 10.0 | 0 |",
		"| nginx | MISSING |",
		"- nginx: MISSING: not installed",
		"| | healthgate-relay | healthgate-grpc | nginx | haproxy |",
		"| Proxy CPU-µs per RPC at c=50 (unary-c50) | 40.0 | 60.0 | — | 20.0 |",
		"| Proxy CPU per RPC at c=50 as a ratio to HAProxy's (unary-c50) | 2.00× | 3.00× | — | 1.00× |",
		"| p99 at c=50 as a ratio to direct (unary-c50) | 3.00× | 4.00× | — | 2.00× |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

func TestRenderTLSWorkload(t *testing.T) {
	plain, tlsW := allWorkloads[1], allWorkloads[2]
	if plain.name != "unary-c50" || tlsW.name != "unary-c50-tls" {
		t.Fatalf("workloads are %s and %s, want unary-c50 and unary-c50-tls", plain.name, tlsW.name)
	}
	const suite = "TLS 1.3 TLS_AES_128_GCM_SHA256 X25519 ALPN h2"
	run := func(proxy float64, tls string) result.Run {
		r := result.Run{Rate: 10000, P50Us: 100, P99Us: 300, TLS: tls, CPU: map[string]result.CPU{"backend": {UsPerOp: 10}}}
		if proxy > 0 {
			r.CPU["proxy"] = result.CPU{UsPerOp: proxy}
		}
		return r
	}
	rep := &report{
		opts: options{mode: "quick", reps: 1, peers: []string{"direct", "healthgate-relay", "healthgate-grpc", "nginx", "haproxy"}, workloads: []workload{plain, tlsW}},
		meta: map[string]any{},
		runs: map[string]map[string][]result.Run{
			plain.name: {
				"healthgate-relay": {run(40, "")},
				"healthgate-grpc":  {run(50, "")},
				"nginx":            {run(25, "")},
				"haproxy":          {run(20, "")},
			},
			tlsW.name: {
				"direct":           {run(0, suite)},
				"healthgate-relay": {run(60, suite)},
				"healthgate-grpc":  {run(80, suite)},
				"nginx":            {run(40, suite)},
				"haproxy":          {run(30, suite)},
			},
		},
		notes: map[string]map[string][]string{},
	}
	out := rep.render()
	for _, want := range []string{
		"## unary-c50-tls: ",
		"| healthgate-relay | 10000 | 1.00 | 1.00 | 100 | 1.00 | 1.00 | 300 | 1.00 | 1.00 | 0.00 | 60.0 | 2.00 | 10.0 | 0 |",
		"| healthgate-grpc | 10000 | 1.00 | 1.00 | 100 | 1.00 | 1.00 | 300 | 1.00 | 1.00 | 0.00 | 80.0 | 2.67 | 10.0 | 0 |",
		"| haproxy | 10000 | 1.00 | 1.00 | 100 | 1.00 | 1.00 | 300 | 1.00 | 1.00 | 0.00 | 30.0 | 1.00 | 10.0 | 0 |",
		"- TLS negotiated by every peer: " + suite,
		"| Proxy CPU-µs per RPC at c=50, terminating TLS (unary-c50-tls) | 60.0 | 80.0 | 40.0 | 30.0 |",
		"| Proxy CPU per RPC terminating TLS as a ratio to nginx's (unary-c50-tls) | 1.50× | 2.00× | 1.00× | 0.75× |",
		"| Proxy CPU per RPC terminating TLS as a ratio to HAProxy's (unary-c50-tls) | 2.00× | 2.67× | 1.33× | 1.00× |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "TLS negotiated"); n != 1 {
		t.Errorf("%d TLS lines, want 1 (the plaintext table has none):\n%s", n, out)
	}
}

func TestNegotiatedTLSNamesPeersThatDiffer(t *testing.T) {
	runs := map[string][]result.Run{
		"direct":  {{TLS: "TLS 1.3 A"}},
		"haproxy": {{TLS: "TLS 1.3 B"}},
	}
	got := negotiatedTLS([]string{"direct", "healthgate-relay", "haproxy"}, runs)
	if want := "TLS negotiated: direct TLS 1.3 A; haproxy TLS 1.3 B"; got != want {
		t.Errorf("negotiatedTLS = %q, want %q", got, want)
	}
}

// The policies' cost is the median of the repetitions' ratios of the
// policy peer's CPU to the relay's, both loaded at once, shown in the
// policy peer's column only, and only when both ran.
func TestHeadlinePolicyCost(t *testing.T) {
	w := workloadNamed(t, "policy-c50")
	const line = "| Proxy CPU per RPC with retries and limits on, as a ratio to healthgate-relay's loaded at the same time (policy-c50, median of the repetitions' ratios) |"
	run := func(rep int, cpu float64) result.Run {
		r := targetRun(10000, 0, 300, 900, cpu)
		r.Rep = rep
		return r
	}
	rep := &report{
		opts: options{mode: "full", reps: 3, peers: []string{"direct", "healthgate-relay", "healthgate-relay-policy", "haproxy"}, workloads: []workload{w}},
		meta: map[string]any{},
		runs: map[string]map[string][]result.Run{w.name: {
			// Ratios 1.04, 1.10, 0.90: median 1.04, where the ratio of
			// the medians (21 over 20) would be 1.05.
			"healthgate-relay":        {run(1, 25), run(2, 20), run(3, 20)},
			"healthgate-relay-policy": {run(1, 26), run(2, 22), run(3, 18)},
		}},
		notes: map[string]map[string][]string{},
	}
	out := rep.render()
	if want := line + " — | 1.04× | — |\n"; !strings.Contains(out, want) {
		t.Errorf("report lacks %q:\n%s", want, out)
	}
	// Loaded at once, the two are the workload's only rows.
	if strings.Contains(out, "\n| haproxy |") || strings.Contains(out, "\n| direct |") {
		t.Errorf("policy-c50 lists peers it does not load:\n%s", out)
	}

	// The relay failed every run: no ratio, so no line.
	delete(rep.runs[w.name], "healthgate-relay")
	if out := rep.render(); strings.Contains(out, line) {
		t.Errorf("policies' cost without the relay's figures:\n%s", out)
	}
	// Without the policy peer neither.
	rep.runs[w.name]["healthgate-relay"] = []result.Run{run(1, 20)}
	rep.opts.peers = []string{"direct", "healthgate-relay", "haproxy"}
	if out := rep.render(); strings.Contains(out, line) {
		t.Errorf("policies' cost without %s:\n%s", policyPeer, out)
	}
}
