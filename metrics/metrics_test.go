package metrics

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"

	"github.com/healthgate/healthgate/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMethodLabelsAreBounded(t *testing.T) {
	m := New(nil)
	for i := range MaxMethods + 50 {
		m.CallStarted()
		m.CallFinished(proxy.CallInfo{FullMethod: fmt.Sprintf("/a.S/M%d", i), Routed: true, Code: codes.OK, Duration: time.Millisecond})
	}
	m.CallStarted()
	m.CallFinished(proxy.CallInfo{FullMethod: "/made.Up/X", Routed: false, Code: codes.Unimplemented})
	if got := series(t, m, "healthgate_proxy_handled_total"); got != MaxMethods+2 {
		t.Fatalf("%d handled series, want %d (the cap, other, unknown)", got, MaxMethods+2)
	}
	if got := value(t, m.handled.WithLabelValues("other", "other", "OK")); got != 50 {
		t.Fatalf("other = %v, want the 50 calls past the cap", got)
	}
	if got := value(t, m.handled.WithLabelValues("unknown", "unknown", "Unimplemented")); got != 1 {
		t.Fatalf("unknown = %v, want 1", got)
	}
	if got := value(t, m.inFlight); got != 0 {
		t.Fatalf("in flight = %v after every call finished", got)
	}
}

func series(t *testing.T, m *Metrics, name string) int {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return len(f.GetMetric())
		}
	}
	return 0
}

func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

func BenchmarkCallFinished(b *testing.B) {
	m := New(nil)
	info := proxy.CallInfo{FullMethod: "/a.S/M", Routed: true, Code: codes.OK, Duration: time.Millisecond, RequestBytes: 100, ResponseBytes: 100}
	b.ReportAllocs()
	for b.Loop() {
		m.CallStarted()
		m.CallFinished(info)
	}
}
