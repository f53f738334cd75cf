package proxy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

type noPicker struct{}

func (noPicker) Route(string, Headers) (Route, error) { return Route{}, errors.New("no routes") }

func TestCallTimeout(t *testing.T) {
	const none = time.Duration(-1)
	cases := []struct {
		name     string
		dflt     time.Duration
		policy   *RoutePolicy
		client   time.Duration // none: no grpc-timeout
		want     time.Duration // none: no deadline
		limiting bool
	}{
		{"nothing set", 0, nil, none, none, false},
		{"client's own", 0, nil, 5 * time.Second, 5 * time.Second, false},
		{"default_timeout", 3 * time.Second, nil, none, 3 * time.Second, true},
		{"route timeout over default", 3 * time.Second, &RoutePolicy{Timeout: time.Second}, none, time.Second, true},
		{"route timeout leaves the client's", 0, &RoutePolicy{Timeout: time.Second}, time.Minute, time.Minute, true},
		{"max_timeout caps the client's", 0, &RoutePolicy{MaxTimeout: 2 * time.Second}, time.Minute, 2 * time.Second, true},
		{"max_timeout keeps a shorter one", 0, &RoutePolicy{MaxTimeout: 2 * time.Second}, time.Second, time.Second, true},
		{"max_timeout bounds no deadline", 0, &RoutePolicy{MaxTimeout: 2 * time.Second}, none, 2 * time.Second, true},
		{"max_timeout caps default_timeout", time.Hour, &RoutePolicy{MaxTimeout: 2 * time.Second}, none, 2 * time.Second, true},
		{"idle only", 0, &RoutePolicy{IdleTimeout: time.Second}, none, none, false},
	}
	for _, tc := range cases {
		p, err := New(Config{Settings: Settings{DefaultTimeout: tc.dflt}}, noPicker{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		rt := &Route{Name: "r", Policy: tc.policy}
		if got := p.limitsDeadline(rt); got != tc.limiting {
			t.Errorf("%s: limitsDeadline = %v, want %v", tc.name, got, tc.limiting)
		}
		d, ok, capped := p.callTimeout(rt, max(tc.client, 0), tc.client != none)
		if !ok {
			d = none
		}
		if d != tc.want {
			t.Errorf("%s: callTimeout = %v, want %v", tc.name, d, tc.want)
		}
		if wantCapped := strings.HasPrefix(tc.name, "max_timeout") && tc.name != "max_timeout keeps a shorter one"; capped != wantCapped {
			t.Errorf("%s: capped = %v, want %v", tc.name, capped, wantCapped)
		}
	}
}

func TestRoutePolicyValidateNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		p    RoutePolicy
		want string
	}{
		{RoutePolicy{Timeout: -1}, "timeout:"},
		{RoutePolicy{MaxTimeout: -1}, "max_timeout:"},
		{RoutePolicy{IdleTimeout: -1}, "idle_timeout:"},
		{RoutePolicy{Timeout: 2 * time.Second, MaxTimeout: time.Second}, "timeout: 2s is longer than max_timeout 1s"},
	} {
		if err := tc.p.Validate(); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error starting %q", tc.p, err, tc.want)
		}
	}
	if err := (RoutePolicy{Timeout: time.Second, MaxTimeout: time.Second, IdleTimeout: time.Minute}).Validate(); err != nil {
		t.Fatalf("valid policy: %v", err)
	}
}

// TestIdleTimerFiresOnlyWhenQuiet: touches keep the timer from firing
// past many periods, without being reset for each; once they stop, it
// fires within about one period of the last; a stopped timer never fires.
func TestIdleTimerFiresOnlyWhenQuiet(t *testing.T) {
	// Long beside the touches' spacing, so that a busy machine's stalls
	// do not make a quiet spell.
	const idle = 500 * time.Millisecond
	fired := make(chan time.Time, 1)
	it := newIdleTimer(idle, func() { fired <- time.Now() })
	defer it.stop()
	tick := time.NewTicker(idle / 20)
	busyUntil := time.After(3 * idle)
busy:
	for {
		select {
		case <-tick.C:
			it.touch()
		case <-busyUntil:
			break busy
		case at := <-fired:
			t.Fatalf("fired at %v while touched every %v", at, idle/20)
		}
	}
	tick.Stop()
	it.touch()
	last := time.Now()
	select {
	case at := <-fired:
		if quiet := at.Sub(last); quiet < idle {
			t.Fatalf("fired %v after the last touch, before the idle timeout of %v", quiet, idle)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("did not fire within 10s of the last touch")
	}

	stopped := newIdleTimer(time.Millisecond, func() { t.Error("a stopped idle timer fired") })
	stopped.stop()
	// Its first period passes; fire must not run after stop returned.
	probe := newIdleTimer(20*time.Millisecond, func() { fired <- time.Now() })
	defer probe.stop()
	<-fired
}
