// Package balancercfg is the balancer's part of the config file, the policy
// key of a routes: item.
//
// It belongs to balancer, which re-exports Policy and its values. It is a
// package of its own only so that the config file's schema does not pull
// in grpc-go, which balancer itself needs: it imports the standard library
// alone, and config's imports test holds it to that.
package balancercfg

import "fmt"

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
