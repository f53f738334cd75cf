package metrics

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/healthgate/healthgate/proxy"
)

// TestRouteRetrySeries: a route's attempts, retries and budget refusals
// are counted per route, and the access log line says them.
func TestRouteRetrySeries(t *testing.T) {
	var buf bytes.Buffer
	m := New(slog.New(slog.NewTextHandler(&buf, nil)))
	for _, c := range []proxy.CallInfo{
		{FullMethod: "/a.S/M", Routed: true, Route: "a.S", Attempts: 1, Code: codes.OK},
		{FullMethod: "/a.S/M", Routed: true, Route: "a.S", Attempts: 3, Retries: 2, Code: codes.OK},
		{FullMethod: "/a.S/M", Routed: true, Route: "a.S", Attempts: 2, Retries: 1, RetryBudgetExhausted: true, Code: codes.Unavailable},
		{FullMethod: "/b.S/M", Routed: true, Route: "b.S", Attempts: 1, Code: codes.OK},
		{FullMethod: "/c.S/M", Routed: false, Code: codes.Unimplemented},
	} {
		m.CallStarted()
		m.CallFinished(c)
	}
	for _, w := range []struct {
		name, route string
		want        float64
	}{
		{"attempts", "a.S", 6}, {"retries", "a.S", 3}, {"exhausted", "a.S", 1},
		{"attempts", "b.S", 1}, {"retries", "b.S", 0},
	} {
		var got float64
		switch w.name {
		case "attempts":
			got = value(t, m.attempts.WithLabelValues(w.route))
		case "retries":
			got = value(t, m.retries.WithLabelValues(w.route))
		case "exhausted":
			got = value(t, m.exhausted.WithLabelValues(w.route))
		}
		if got != w.want {
			t.Errorf("%s{route=%q} = %v, want %v", w.name, w.route, got, w.want)
		}
	}
	if n := series(t, m, "healthgate_route_attempts_total"); n != 2 {
		t.Errorf("%d attempts series, want 2 (a call without a route has none)", n)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d access log lines, want 5", len(lines))
	}
	for i, want := range []string{"", "attempts=3 retries=2", "attempts=2 retries=1 retry_budget_exhausted=true"} {
		if !strings.Contains(lines[i], want) || (want == "" && strings.Contains(lines[i], "retries")) {
			t.Errorf("access line %d: %s, want %q", i, lines[i], want)
		}
	}
}

// TestRouteSeriesAreBounded: past MaxMethods routes, the rest share
// "other".
func TestRouteSeriesAreBounded(t *testing.T) {
	m := New(nil)
	for i := range MaxMethods + 10 {
		m.CallStarted()
		m.CallFinished(proxy.CallInfo{FullMethod: "/a.S/M", Routed: true, Route: fmt.Sprintf("r%d", i), Attempts: 1})
	}
	if n := series(t, m, "healthgate_route_attempts_total"); n != MaxMethods+1 {
		t.Fatalf("%d attempts series, want %d (the cap and other)", n, MaxMethods+1)
	}
	if got := value(t, m.attempts.WithLabelValues("other")); got != 10 {
		t.Fatalf("other = %v, want the 10 calls past the cap", got)
	}
}
