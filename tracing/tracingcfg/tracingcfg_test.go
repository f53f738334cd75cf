package tracingcfg

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ratio(r float64) *float64 { return &r }

func TestValidateNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // "" for valid
	}{
		{"zero is off", Config{}, ""},
		{"endpoint alone", Config{OTLPEndpoint: "otelcol:4317"}, ""},
		{"ratio 0", Config{OTLPEndpoint: "otelcol:4317", SampleRatio: ratio(0)}, ""},
		{"ratio 1", Config{OTLPEndpoint: "otelcol:4317", SampleRatio: ratio(1)}, ""},
		{"no port", Config{OTLPEndpoint: "otelcol"}, "otlp_endpoint:"},
		{"ratio over 1", Config{OTLPEndpoint: "h:4317", SampleRatio: ratio(1.5)}, "sample_ratio:"},
		{"ratio negative", Config{OTLPEndpoint: "h:4317", SampleRatio: ratio(-0.1)}, "sample_ratio:"},
		{"insecure with ca", Config{OTLPEndpoint: "h:4317", Insecure: true, CAFile: "ca.pem"}, "ca_file:"},
		{"negative batch", Config{OTLPEndpoint: "h:4317", BatchTimeout: -time.Second}, "batch_timeout:"},
		{"negative export", Config{OTLPEndpoint: "h:4317", ExportTimeout: -time.Second}, "export_timeout:"},
		{"fields without endpoint", Config{SampleRatio: ratio(0.5)}, "otlp_endpoint: must be set"},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: Validate() = %v, want nil", tc.name, err)
		case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)):
			t.Errorf("%s: Validate() = %v, want an error starting %q", tc.name, err, tc.want)
		}
	}
}

func TestDefaults(t *testing.T) {
	c := Config{OTLPEndpoint: "h:4317"}.WithDefaults()
	if c.ServiceName != DefaultServiceName || c.BatchTimeout != DefaultBatchTimeout || c.ExportTimeout != DefaultExportTimeout {
		t.Errorf("WithDefaults() = %+v", c)
	}
	if got := c.Ratio(); got != 1 {
		t.Errorf("Ratio() of an unset sample_ratio = %v, want 1", got)
	}
	if (Config{}).Enabled() {
		t.Error("the zero Config is enabled")
	}
}
