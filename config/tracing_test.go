package config

import (
	"strings"
	"testing"
	"time"
)

// TestTracingParsesAndNamesTheField: the tracing: section is read from
// YAML, and a bad value names its field under tracing.
func TestTracingParsesAndNamesTheField(t *testing.T) {
	c, err := Parse([]byte("tracing:\n  otlp_endpoint: otelcol:4317\n  sample_ratio: 0.25\n  insecure: true\n  service_name: edge\n  headers: {x-api-key: k}\n  batch_timeout: 1s\n"))
	if err != nil {
		t.Fatal(err)
	}
	tr := c.Tracing
	if tr.OTLPEndpoint != "otelcol:4317" || tr.Ratio() != 0.25 || !tr.Insecure || tr.ServiceName != "edge" || tr.Headers["x-api-key"] != "k" || tr.BatchTimeout != time.Second {
		t.Fatalf("read as %+v", tr)
	}
	if c, err := Parse([]byte("listen: 127.0.0.1:9000\n")); err != nil || c.Tracing.Enabled() {
		t.Fatalf("without a tracing section: %+v, %v; want tracing off", c, err)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"tracing:\n  otlp_endpoint: otelcol\n", "tracing.otlp_endpoint:"},
		{"tracing:\n  otlp_endpoint: h:4317\n  sample_ratio: 2\n", "tracing.sample_ratio:"},
		{"tracing:\n  sample_ratio: 0.5\n", "tracing.otlp_endpoint:"},
		{"tracing:\n  otlp_endpoint: h:4317\n  sample_ratio: half\n", "tracing.sample_ratio"},
	} {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.yaml, err, tc.want)
		}
	}
}
