// Package tracingcfg is tracing's part of the config file, the tracing:
// section: pure data with its YAML keys, documented zero values, defaults
// and validation.
//
// It belongs to tracing, which applies its defaults. It is a package of its
// own only so that the config file's schema does not pull in the
// OpenTelemetry SDK and grpc-go, which tracing itself needs: it imports the
// standard library alone, and config's imports test holds it to that.
package tracingcfg

import (
	"fmt"
	"math"
	"net"
	"time"
)

// Defaults of the fields whose zero value means "the default".
const (
	DefaultServiceName   = "healthgate"
	DefaultExportTimeout = 10 * time.Second
	DefaultBatchTimeout  = 5 * time.Second
)

// Config traces proxied calls with OpenTelemetry and exports the spans
// over OTLP/gRPC. The zero value traces nothing and costs nothing.
type Config struct {
	// OTLPEndpoint is the host:port of an OTLP/gRPC receiver (an
	// OpenTelemetry Collector, Jaeger, Tempo, ... usually on port 4317).
	// Empty turns tracing off.
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// SampleRatio is the share of new traces (calls whose client sent no
	// trace context) that are recorded, from 0 to 1. Calls that continue
	// a client's trace follow the client's sampled flag whatever the
	// ratio. Unset means 1: every call.
	SampleRatio *float64 `yaml:"sample_ratio"`
	// Insecure exports over plaintext h2c instead of TLS, as a collector
	// beside the gateway (a sidecar, the same host) usually listens.
	Insecure bool `yaml:"insecure"`
	// CAFile verifies the receiver's certificate with this PEM bundle
	// instead of the system roots; only with TLS.
	CAFile string `yaml:"ca_file"`
	// ServiceName is the service.name of the gateway's spans. Empty means
	// DefaultServiceName.
	ServiceName string `yaml:"service_name"`
	// Headers are sent with every export (an API key, a tenant).
	Headers map[string]string `yaml:"headers"`
	// BatchTimeout is how long finished spans wait to be sent with
	// others. Zero means DefaultBatchTimeout.
	BatchTimeout time.Duration `yaml:"batch_timeout"`
	// ExportTimeout bounds one export. Zero means DefaultExportTimeout.
	ExportTimeout time.Duration `yaml:"export_timeout"`
}

// Enabled reports whether calls are traced.
func (c Config) Enabled() bool { return c.OTLPEndpoint != "" }

// Ratio is the sample ratio in force.
func (c Config) Ratio() float64 {
	if c.SampleRatio == nil {
		return 1
	}
	return *c.SampleRatio
}

// WithDefaults fills the zero fields that have defaults.
func (c Config) WithDefaults() Config {
	if c.ServiceName == "" {
		c.ServiceName = DefaultServiceName
	}
	if c.BatchTimeout == 0 {
		c.BatchTimeout = DefaultBatchTimeout
	}
	if c.ExportTimeout == 0 {
		c.ExportTimeout = DefaultExportTimeout
	}
	return c
}

// Validate reports the first field that cannot be used, by its YAML key.
func (c Config) Validate() error {
	if !c.Enabled() {
		if c.SampleRatio != nil || c.Insecure || c.CAFile != "" || c.ServiceName != "" || len(c.Headers) > 0 || c.BatchTimeout != 0 || c.ExportTimeout != 0 {
			return fmt.Errorf("otlp_endpoint: must be set for the other tracing fields to apply")
		}
		return nil
	}
	if _, port, err := net.SplitHostPort(c.OTLPEndpoint); err != nil || port == "" {
		return fmt.Errorf("otlp_endpoint: %q is not host:port", c.OTLPEndpoint)
	}
	if r := c.Ratio(); math.IsNaN(r) || r < 0 || r > 1 {
		return fmt.Errorf("sample_ratio: must be between 0 and 1, got %v", r)
	}
	if c.Insecure && c.CAFile != "" {
		return fmt.Errorf("ca_file: set with insecure: true, which sends no TLS")
	}
	if c.BatchTimeout < 0 {
		return fmt.Errorf("batch_timeout: must not be negative, got %s", c.BatchTimeout)
	}
	if c.ExportTimeout < 0 {
		return fmt.Errorf("export_timeout: must not be negative, got %s", c.ExportTimeout)
	}
	return nil
}
