// Package balancercfg is the balancer's part of the config file, the policy
// key of a routes: item.
//
// It belongs to balancer, which re-exports Policy and its values. It is a
// package of its own only so that the config file's schema does not pull
// in grpc-go, which balancer itself needs: it imports the standard library
// alone, and config's imports test holds it to that.
package balancercfg

import (
	"fmt"
	"math"
)

// Policy chooses among a route's routable backends. The zero value ""
// means RoundRobin.
type Policy string

const (
	// RoundRobin spreads calls in turn, each backend as often as its
	// weight says, starting at a random backend so that many gateways do
	// not all hit the same one first.
	RoundRobin Policy = "round_robin"
	// LeastRequest picks the less busy of two backends chosen at random
	// (power of two choices): it follows load without a global scan.
	LeastRequest Policy = "least_request"
)

// Validate reports whether p is a known policy; "" means RoundRobin.
func (p Policy) Validate() error {
	switch p {
	case "", RoundRobin, LeastRequest:
		return nil
	}
	return fmt.Errorf("unknown policy %q (want %q or %q)", string(p), RoundRobin, LeastRequest)
}

// Limits are the load a route lets through: the max_in_flight and rate
// keys of a routes: item. The zero value limits nothing.
type Limits struct {
	// MaxInFlight is how many calls a backend of the route may have at
	// once (circuit breaking): a full backend is skipped, and a call that
	// finds every backend full fails at once with UNAVAILABLE, never
	// queued. A backend's calls are counted across every route that uses
	// it: the limit protects the backend, which serves them all. Zero
	// means no limit.
	MaxInFlight int `yaml:"max_in_flight"`
	// Rate is the route's token bucket.
	Rate Rate `yaml:"rate"`
}

// Rate is a token bucket: a call takes a token, PerSecond tokens come
// back each second, and at most Burst are kept. A call that finds none
// fails with RESOURCE_EXHAUSTED. The zero value is no limit.
type Rate struct {
	// PerSecond is the sustained rate of calls; zero means no limit.
	PerSecond float64 `yaml:"per_second"`
	// Burst is how many calls may come at once after a quiet spell. Zero
	// means PerSecond rounded up (at least 1).
	Burst int `yaml:"burst"`
}

// Enabled reports whether the rate limits anything.
func (r Rate) Enabled() bool { return r.PerSecond > 0 }

// BurstOrDefault is Burst with its zero value replaced by what it means.
func (r Rate) BurstOrDefault() int {
	if r.Burst > 0 {
		return r.Burst
	}
	return max(1, int(math.Ceil(r.PerSecond)))
}

// Validate reports the first field that cannot be used, by its YAML key.
func (l Limits) Validate() error {
	switch {
	case l.MaxInFlight < 0:
		return fmt.Errorf("max_in_flight: must not be negative, got %d", l.MaxInFlight)
	case l.Rate.PerSecond < 0 || math.IsNaN(l.Rate.PerSecond) || math.IsInf(l.Rate.PerSecond, 0):
		return fmt.Errorf("rate.per_second: must be a number of calls per second, not negative, got %v", l.Rate.PerSecond)
	case l.Rate.Burst < 0:
		return fmt.Errorf("rate.burst: must not be negative, got %d", l.Rate.Burst)
	case l.Rate.Burst > 0 && l.Rate.PerSecond == 0:
		return fmt.Errorf("rate.burst: needs rate.per_second")
	}
	return nil
}
