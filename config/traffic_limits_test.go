package config

import (
	"strings"
	"testing"
	"time"
)

// TestTimeoutsAndLimitsParseAndNameTheField: routes[].max_timeout,
// idle_timeout, max_in_flight and rate are read from YAML, and a bad value
// names its field.
func TestTimeoutsAndLimitsParseAndNameTheField(t *testing.T) {
	const route = "routes:\n- service: a.B\n  backends: ['h:1']\n"
	c, err := Parse([]byte(route + "  timeout: 1s\n  max_timeout: 5s\n  idle_timeout: 30s\n  max_in_flight: 100\n  rate: {per_second: 50, burst: 10}\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := c.Routes[0]
	if r.Traffic.Timeout != time.Second || r.Traffic.MaxTimeout != 5*time.Second || r.Traffic.IdleTimeout != 30*time.Second ||
		r.Limits.MaxInFlight != 100 || r.Limits.Rate.PerSecond != 50 || r.Limits.Rate.Burst != 10 {
		t.Fatalf("read as %+v", r)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"  max_timeout: -1s\n", "routes[0].max_timeout:"},
		{"  idle_timeout: -1s\n", "routes[0].idle_timeout:"},
		{"  timeout: 10s\n  max_timeout: 5s\n", "routes[0].timeout: 10s is longer than max_timeout 5s"},
		{"  max_in_flight: -1\n", "routes[0].max_in_flight:"},
		{"  rate: {per_second: -1}\n", "routes[0].rate.per_second:"},
		{"  rate: {per_second: 1, burst: -2}\n", "routes[0].rate.burst:"},
		{"  rate: {burst: 5}\n", "routes[0].rate.burst: needs rate.per_second"},
		{"  rate: {per_second: lots}\n", "routes[0].rate.per_second"},
		{"  rate: {per_minute: 5}\n", "field per_minute not found"},
	} {
		_, err := Parse([]byte(route + tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.yaml, err, tc.want)
		}
	}
}
