package metrics

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/healthgate/healthgate/proxy"
)

func TestB16_MetricLabelsNeverPanic(t *testing.T) {
	long := strings.Repeat("m", 64<<10)
	atLimit := strings.Repeat("a", MaxLabelBytes)
	tests := []struct {
		name       string
		fullMethod string
		// wantSvc and wantMethod label the call's series.
		wantSvc, wantMethod string
	}{
		{"method not UTF-8", "/test.Svc/\xff\xfe", "invalid", "invalid"},
		{"service not UTF-8", "/te\xc3st.Svc/M", "invalid", "invalid"},
		{"truncated rune", "/test.Svc/M\xe2\x82", "invalid", "invalid"},
		{"no slash, not UTF-8", "\xff", "invalid", "invalid"},
		{"64 KiB method", "/test.Svc/" + long, "invalid", "invalid"},
		{"64 KiB service", "/" + long + "/M", "invalid", "invalid"},
		{"method one byte too long", "/test.Svc/" + atLimit + "x", "invalid", "invalid"},
		{"method at the limit", "/test.Svc/" + atLimit, "test.Svc", atLimit},
		{"multi-byte UTF-8", "/test.Svc/Grüße", "test.Svc", "Grüße"},
		{"empty", "", "unknown", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(nil)
			m.CallStarted()
			m.CallFinished(proxy.CallInfo{FullMethod: tt.fullMethod, Routed: true, Code: codes.Internal, Duration: time.Millisecond})
			if got := value(t, m.handled.WithLabelValues(tt.wantSvc, tt.wantMethod, "Internal")); got != 1 {
				t.Fatalf("handled{%q, %.20q} = %v, want 1", tt.wantSvc, tt.wantMethod, got)
			}
			checkLabels(t, m)
		})
	}

	// Junk must not use up the budget of real method names.
	m := New(nil)
	for i := range MaxMethods {
		m.CallStarted()
		m.CallFinished(proxy.CallInfo{FullMethod: fmt.Sprintf("/a.S/\xff%d", i), Routed: true, Code: codes.OK})
	}
	m.CallStarted()
	m.CallFinished(proxy.CallInfo{FullMethod: "/a.S/Real", Routed: true, Code: codes.OK})
	if got := value(t, m.handled.WithLabelValues("a.S", "Real", "OK")); got != 1 {
		t.Fatalf("a valid method after %d invalid ones: handled = %v, want 1 under its own name", MaxMethods, got)
	}
	if got := value(t, m.handled.WithLabelValues("invalid", "invalid", "OK")); got != MaxMethods {
		t.Fatalf("invalid = %v, want %d", got, MaxMethods)
	}
}

// checkLabels gathers m and fails if any label value is one Prometheus
// or a scraper could choke on.
func checkLabels(t *testing.T, m *Metrics) {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			for _, l := range mt.GetLabel() {
				if v := l.GetValue(); !utf8.ValidString(v) || len(v) > MaxLabelBytes {
					t.Fatalf("%s{%s=%.40q...} (%d bytes) exported", f.GetName(), l.GetName(), v, len(v))
				}
			}
		}
	}
}

// seriesWith counts the gathered series that carry label name=value, and
// all series.
func seriesWith(t *testing.T, m *Metrics, name, value string) (with, all int) {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			all++
			for _, l := range mt.GetLabel() {
				if l.GetName() == name && l.GetValue() == value {
					with++
				}
			}
		}
	}
	return with, all
}

func TestB36_ForgetBackendRemovesSeries(t *testing.T) {
	m := New(nil)
	report := func(addr string) {
		m.WatchStarted(addr, "")
		m.WatchStarted(addr, "test.Svc")
		m.HealthChanged(addr, "test.Svc", healthpb.HealthCheckResponse_UNKNOWN, healthpb.HealthCheckResponse_SERVING)
		m.HealthChanged(addr, "test.Svc", healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING)
		m.BackendEjected(addr)
	}
	const stays = "10.0.0.1:50051"
	report(stays)
	_, baseline := seriesWith(t, m, "backend", stays)

	for i := range 200 {
		addr := fmt.Sprintf("10.1.%d.%d:50051", i/250, i%250)
		report(addr)
		// Two watch starts, two transitions, one ejection.
		if with, _ := seriesWith(t, m, "backend", addr); with != 5 {
			t.Fatalf("cycle %d: %d series for %s before ForgetBackend, want 5", i, with, addr)
		}
		m.ForgetBackend(addr)
		if with, all := seriesWith(t, m, "backend", addr); with != 0 || all != baseline {
			t.Fatalf("cycle %d: after ForgetBackend(%s), %d of its series remain and %d series in all, want 0 and %d", i, addr, with, all, baseline)
		}
	}
	if with, _ := seriesWith(t, m, "backend", stays); with != 5 {
		t.Fatalf("a backend that stayed has %d series, want its 5", with)
	}
}
