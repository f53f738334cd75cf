// Package healthcheckcfg is health checking's part of the config file: pure
// data with its YAML keys, documented zero values, defaults and validation.
//
// It belongs to healthcheck, which re-exports its types (healthcheck.Settings,
// OutlierConfig, LivenessConfig, RouteConfig) and applies its defaults in
// New. It is a package of its own only so that the config file's schema
// does not pull in grpc-go, which healthcheck itself needs: it imports the
// standard library alone, and config's imports test holds it to that.
package healthcheckcfg

import (
	"fmt"
	"strings"
	"time"
)

// Settings tunes backend health checking: the health: section.
type Settings struct {
	// BackoffBase and BackoffMax bound the jittered exponential backoff
	// between attempts of a failed Watch. Zero means 1s and 2m, the
	// connection backoff A17 reuses; a BackoffMax below BackoffBase is
	// raised to it.
	BackoffBase time.Duration `yaml:"backoff_base"`
	BackoffMax  time.Duration `yaml:"backoff_max"`
	// DrainGrace is how long a backend that discovery no longer lists keeps
	// its connection for the calls still in flight on it, and how long a
	// route that discovery no longer lists keeps answering UNAVAILABLE
	// before its calls become UNIMPLEMENTED. Zero means 10s.
	DrainGrace time.Duration `yaml:"drain_grace"`
	// Liveness is the probe that finds a backend that stopped answering on
	// an open connection.
	Liveness Liveness `yaml:"liveness"`
}

// Validate reports the first field that cannot be used, by its YAML key
// within the section.
func (s Settings) Validate() error {
	switch {
	case s.BackoffBase < 0:
		return fmt.Errorf("backoff_base: must not be negative, got %s", s.BackoffBase)
	case s.BackoffMax < 0:
		return fmt.Errorf("backoff_max: must not be negative, got %s", s.BackoffMax)
	case s.DrainGrace < 0:
		return fmt.Errorf("drain_grace: must not be negative, got %s", s.DrainGrace)
	}
	if err := s.Liveness.Validate(); err != nil {
		return fmt.Errorf("liveness.%w", err)
	}
	return nil
}

// WithDefaults is s with every zero value replaced by what it means.
func (s Settings) WithDefaults() Settings {
	if s.BackoffBase == 0 {
		s.BackoffBase = time.Second
	}
	if s.BackoffMax == 0 {
		s.BackoffMax = 2 * time.Minute
	}
	if s.BackoffMax < s.BackoffBase {
		s.BackoffMax = s.BackoffBase
	}
	if s.DrainGrace == 0 {
		s.DrainGrace = 10 * time.Second
	}
	s.Liveness = s.Liveness.WithDefaults()
	return s
}

// Liveness tunes the probe on every backend connection: a grpc.health.v1
// Check every Interval that must be answered (with anything) within
// Timeout, or the backend is "not responding": it leaves the rotation and
// its connection is cut, so that its calls in flight fail at once.
type Liveness struct {
	// Interval is the time between the starts of two probes of a backend
	// that has had calls since the last probe: where a hang would hold
	// calls. Probes never overlap: one that is still waiting delays the
	// next. Zero means 1s.
	Interval time.Duration `yaml:"interval"`
	// IdleInterval is the time between probes of a backend that has had no
	// call since the last: a hang there holds nothing yet, and a probe per
	// second of each of thousands of idle backends would cost a core's
	// share for nothing. The first call picked for it makes the next tick
	// probe. Zero means 10s; never below Interval.
	IdleInterval time.Duration `yaml:"idle_interval"`
	// Timeout is how long a probe waits for an answer before the backend
	// counts as not responding. Zero means 2s. A backend that hangs is
	// found within about Interval+Timeout.
	Timeout time.Duration `yaml:"timeout"`
	// Disabled turns the probe off; a hung backend then stays routable
	// until its connection fails by itself.
	Disabled bool `yaml:"disabled"`
}

// Validate reports the first field that cannot be used.
func (l Liveness) Validate() error {
	switch {
	case l.Interval < 0:
		return fmt.Errorf("interval: must not be negative, got %s", l.Interval)
	case l.Timeout < 0:
		return fmt.Errorf("timeout: must not be negative, got %s", l.Timeout)
	case l.IdleInterval < 0:
		return fmt.Errorf("idle_interval: must not be negative, got %s", l.IdleInterval)
	}
	return nil
}

// WithDefaults is l with every zero value replaced by what it means; a
// disabled probe keeps its durations, so that turning it on again needs no
// other change.
func (l Liveness) WithDefaults() Liveness {
	if l.Interval == 0 {
		l.Interval = time.Second
	}
	if l.Timeout == 0 {
		l.Timeout = 2 * time.Second
	}
	if l.IdleInterval == 0 {
		l.IdleInterval = 10 * time.Second
	}
	l.IdleInterval = max(l.IdleInterval, l.Interval)
	return l
}

// Outlier is passive failure detection, the outlier_detection: section: a
// backend whose calls keep failing at the backend itself (connection
// refused or reset, stream reset, no response header before the deadline),
// although its health check says SERVING, is ejected for a while. The zero
// value is on, with the defaults below.
type Outlier struct {
	// ConsecutiveFailures is the failures in a row that eject. Zero means 5.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// Ejection is how long the first ejection lasts; each next one before a
	// call succeeds lasts as long again, up to 10 times. Zero means 30s. An
	// ejection ends early when the backend reconnects and reports SERVING.
	Ejection time.Duration `yaml:"ejection"`
	// MaxEjectionPercent caps the share of a route's backends that may be
	// ejected at once, rounded down: at 50 a route of one backend never
	// loses it to ejection. Zero means 50; 100 lets every backend go.
	MaxEjectionPercent int `yaml:"max_ejection_percent"`
	// Codes are statuses sent by the backend's application that count as
	// failures too, by name (UNAVAILABLE, any case). None by default: a
	// backend that answers, even UNAVAILABLE, is answering, and counting its
	// answers would let any client eject every backend by calling a method
	// that fails.
	Codes []string `yaml:"codes"`
	// Disabled turns passive failure detection off.
	Disabled bool `yaml:"disabled"`
}

// Validate reports the first field that cannot be used.
func (o Outlier) Validate() error {
	switch {
	case o.ConsecutiveFailures < 0:
		return fmt.Errorf("consecutive_failures: must not be negative, got %d", o.ConsecutiveFailures)
	case o.Ejection < 0:
		return fmt.Errorf("ejection: must not be negative, got %s", o.Ejection)
	case o.MaxEjectionPercent < 0 || o.MaxEjectionPercent > 100:
		return fmt.Errorf("max_ejection_percent: must be within 0-100, got %d", o.MaxEjectionPercent)
	}
	_, err := o.CodeNumbers()
	return err
}

// WithDefaults is o with every zero value replaced by what it means.
func (o Outlier) WithDefaults() Outlier {
	if o.ConsecutiveFailures == 0 {
		o.ConsecutiveFailures = 5
	}
	if o.Ejection == 0 {
		o.Ejection = 30 * time.Second
	}
	if o.MaxEjectionPercent == 0 {
		o.MaxEjectionPercent = 50
	}
	return o
}

// CodeNumbers is Codes as gRPC status code numbers.
func (o Outlier) CodeNumbers() ([]uint32, error) {
	out := make([]uint32, 0, len(o.Codes))
	for i, name := range o.Codes {
		n := codeNumber(name)
		if n <= 0 {
			return nil, fmt.Errorf("codes[%d]: %q is not a gRPC status code name other than OK (UNAVAILABLE, DEADLINE_EXCEEDED, ...)", i, name)
		}
		out = append(out, uint32(n))
	}
	return out, nil
}

// codeNumber is the number of the gRPC status code named name, by the
// names grpc-go reads (its JSON form: "CANCELLED" [sic]), or -1.
// healthcheck's tests hold the table to grpc-go's.
func codeNumber(name string) int {
	names := [...]string{
		"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
		"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
		"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
		"INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
	}
	name = strings.ToUpper(name)
	for i, n := range names {
		if n == name {
			return i
		}
	}
	return -1
}

// RouteConfig is one route's health settings: the health_service and
// min_healthy keys of a routes: item.
type RouteConfig struct {
	// HealthService, when set, is the grpc.health.v1 name watched on every
	// backend of the route; set it to "" to check the backends' overall
	// health. Nil means the instance's own choice (its
	// healthgate_health_service meta or tag) if it makes one, else the
	// route's own name ("" for the default route).
	HealthService *string `yaml:"health_service"`
	// MinHealthy is how many routable backends the route needs to report
	// SERVING in the gateway's own health. Zero means 1.
	MinHealthy int `yaml:"min_healthy"`
	// BackendTLS, when set, dials the route's backends with TLS (and a
	// client certificate for mTLS); the health Watch and the liveness probe
	// use the same connection. An instance may also ask for TLS itself
	// with the service meta healthgate_tls=true (and
	// healthgate_tls_server_name).
	BackendTLS *BackendTLS `yaml:"backend_tls"`
	// Connect dials every backend of the route with Consul Connect mTLS:
	// the gateway's Connect certificate, and the backend's checked against
	// the Connect CA and its service identity; intentions then decide. A
	// Consul instance registered Connect-native is dialled so without it.
	Connect bool `yaml:"connect"`
	// ConnectService is the Consul service whose Connect identity the
	// backends must present. Empty means each instance's own Consul
	// service; static backends need it set.
	ConnectService string `yaml:"connect_service"`
}

// BackendTLS is TLS from the gateway to a backend.
type BackendTLS struct {
	// CAFile verifies the backend's certificate; empty means the system's
	// roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the gateway's client certificate, for
	// backends that require mTLS.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name the backend's certificate must carry; empty
	// means the host of its address.
	ServerName string `yaml:"server_name"`
}

// Validate reports the first field that cannot be used.
func (t BackendTLS) Validate() error {
	if (t.CertFile == "") != (t.KeyFile == "") {
		return fmt.Errorf("cert_file and key_file go together")
	}
	return nil
}

// Validate reports the first field that cannot be used.
func (r RouteConfig) Validate() error {
	if r.MinHealthy < 0 {
		return fmt.Errorf("min_healthy: must not be negative, got %d", r.MinHealthy)
	}
	if r.BackendTLS != nil {
		if err := r.BackendTLS.Validate(); err != nil {
			return fmt.Errorf("backend_tls.%w", err)
		}
	}
	if r.Connect && r.BackendTLS != nil {
		return fmt.Errorf("connect: a Connect route's TLS comes from Consul; drop backend_tls")
	}
	if r.ConnectService != "" && !r.Connect {
		return fmt.Errorf("connect_service: set only with connect: true")
	}
	return nil
}

// WithDefaults is r with every zero value replaced by what it means.
func (r RouteConfig) WithDefaults() RouteConfig {
	if r.MinHealthy == 0 {
		r.MinHealthy = 1
	}
	return r
}
