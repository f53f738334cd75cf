package balancer

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/balancer/balancercfg"
)

// Routing narrows a route's calls to subsets of its backends; see
// balancercfg for why it is defined there.
type Routing = balancercfg.Routing

// NoSubsetUpstreamError: the subset a call was routed to has no routable
// backend, and the route says to fail rather than fall back.
type NoSubsetUpstreamError struct {
	Route  string
	Subset string // as balancercfg.Subset.Name writes it: [tag ...]
}

func (e *NoSubsetUpstreamError) Error() string {
	return fmt.Sprintf("no healthy upstream in subset %s of route %q", e.Subset, e.Route)
}

// GRPCStatus makes the error UNAVAILABLE, as for a route with no routable
// backend.
func (e *NoSubsetUpstreamError) GRPCStatus() *status.Status {
	return status.New(codes.Unavailable, "healthgate: "+e.Error())
}

// selector chooses a call's subset of a route. Like the Route that holds
// it, it never changes after it is built: choosing is a few header lookups
// and at most one random number, and allocates nothing.
type selector struct {
	matches []matcher
	// split holds the subsets of positive weight; cum their cumulative
	// weights, total the last of them. total is 0 without a split.
	split []*Route
	cum   []uint64
	total uint64
	// rest takes the calls that no rule matched when there is no split:
	// the whole route.
	rest *Route
}

type matcher struct {
	rule  balancercfg.Match
	route *Route
}

// choose is the route of a call whose request headers are h (nil: none).
func (s *selector) choose(h Headers) *Route {
	if h != nil {
		for i := range s.matches {
			m := &s.matches[i]
			if m.rule.Matches(h.Get(m.rule.Header)) {
				return m.route
			}
		}
	}
	if s.total == 0 {
		return s.rest
	}
	n := rand.Uint64N(s.total)
	// Splits are a handful of entries: a scan beats a binary search.
	for i, c := range s.cum {
		if n < c {
			return s.split[i]
		}
	}
	return s.split[len(s.split)-1]
}

// subsetsBuilder makes the subsets of one route from its routable backends,
// each distinct tag set once.
type subsetsBuilder struct {
	keys   []key
	cfg    Routing
	whole  *Route
	mk     func([]key) *Route
	byTags map[string]*Route
}

// newSelector builds the subsets of whole, the route made of keys, as cfg
// says; mk makes a route of the same settings from some of keys.
func newSelector(whole *Route, keys []key, cfg Routing, mk func([]key) *Route) *selector {
	sb := subsetsBuilder{keys: keys, cfg: cfg, whole: whole, mk: mk, byTags: map[string]*Route{}}
	s := &selector{rest: whole}
	for _, m := range cfg.Match {
		s.matches = append(s.matches, matcher{rule: m, route: sb.subset(m.Subset)})
	}
	for _, sp := range cfg.Split {
		if sp.Weight == 0 {
			continue
		}
		s.total += uint64(sp.Weight)
		s.split = append(s.split, sb.subset(sp.Subset))
		s.cum = append(s.cum, s.total)
	}
	return s
}

// subset is the route of the backends carrying every tag of sub; when
// there are none, the whole route or a route that fails, as configured.
func (sb *subsetsBuilder) subset(sub balancercfg.Subset) *Route {
	id := strings.Join(sub.Tags, "\x00")
	if r, ok := sb.byTags[id]; ok {
		return r
	}
	var keys []key
	for _, k := range sb.keys {
		if hasAll(k.tags, sub.Tags) {
			keys = append(keys, k)
		}
	}
	var r *Route
	switch {
	case len(keys) > 0:
		r = sb.mk(keys)
	case sb.cfg.OnEmptySubset == balancercfg.Fail:
		r = sb.mk(nil)
		r.noUpstream = &NoSubsetUpstreamError{Route: sb.whole.route, Subset: sub.Name()}
	default:
		r = sb.whole
	}
	sb.byTags[id] = r
	return r
}

func hasAll(tags, want []string) bool {
	for _, t := range want {
		if !slices.Contains(tags, t) {
			return false
		}
	}
	return true
}
