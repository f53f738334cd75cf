package config

import (
	"strings"
	"testing"
	"time"

	"github.com/healthgate/healthgate/proxy/proxycfg"
)

func TestRouteRetryParses(t *testing.T) {
	c, err := Parse([]byte(`routes:
- service: a.B
  backends: ['h:1']
  retry:
    codes: [UNAVAILABLE, resource_exhausted]
    max_attempts: 4
    per_try_timeout: 300ms
    backoff: 10ms..1s
    budget: {ratio: 0.5, min_per_second: 0}
    buffer_bytes: 128KiB
`))
	if err != nil {
		t.Fatal(err)
	}
	r := c.Routes[0].Traffic.Retry
	if len(r.Codes) != 2 || r.MaxAttempts != 4 || r.PerTryTimeout != 300*time.Millisecond ||
		r.Backoff != (proxycfg.Backoff{Base: 10 * time.Millisecond, Max: time.Second}) ||
		r.Budget.EffectiveRatio() != 0.5 || r.Budget.EffectivePerSecond() != 0 || r.BufferBytes != 128<<10 {
		t.Fatalf("retry read as %+v", r)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"retry: {codes: [UNAVAILEBLE]}", "routes[0].retry.codes[0]"},
		{"retry: {max_attempts: -1}", "routes[0].retry.max_attempts"},
		{"retry: {budget: {ratio: -1}}", "routes[0].retry.budget.ratio"},
		{"retry: {backoff: 25ms}", "routes[0].retry.backoff"},
		{"retry: {buffer_bytes: lots}", "routes[0].retry.buffer_bytes"},
	} {
		_, err := Parse([]byte("routes:\n- service: a.B\n  backends: ['h:1']\n  " + tc.yaml + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %s", tc.yaml, err, tc.want)
		}
	}
}
