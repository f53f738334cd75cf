package balancercfg

import (
	"errors"
	"fmt"
	"strings"
)

// Routing narrows a call to a subset of its route's backends by the call's
// metadata (Match) or by weight (Split). The zero value routes every call
// over the whole route, and costs nothing per call.
//
// A call goes to the subset of the first Match rule its headers satisfy;
// a call that none takes is split by weight across Split's subsets; with
// no Split it goes to the whole route. Health gating applies inside every
// subset: only the route's routable backends are in it.
type Routing struct {
	// Match rules, tried in order; the first that matches wins.
	Match []Match `yaml:"match"`
	// Split shares the calls that no Match rule took between subsets, in
	// proportion to their weights.
	Split []Split `yaml:"split"`
	// OnEmptySubset says where a call goes when its subset has no routable
	// backend: "fallback" (the zero value) sends it to the whole route,
	// "fail" ends it UNAVAILABLE.
	OnEmptySubset EmptySubset `yaml:"on_empty_subset"`
}

// Enabled reports whether r routes by subsets at all.
func (r Routing) Enabled() bool { return len(r.Match) > 0 || len(r.Split) > 0 }

// Subset is the route's routable backends that carry every one of Tags
// (Consul tags, or the tags of a static backend in the config file).
type Subset struct {
	Tags []string `yaml:"tags"`
}

// Name is how errors and logs name the subset: [tag1 tag2].
func (s Subset) Name() string { return "[" + strings.Join(s.Tags, " ") + "]" }

// Match sends the calls whose header Header satisfies it to Subset. Exactly
// one of Value, Prefix and Present is set.
type Match struct {
	// Header is the metadata key, lowercase as gRPC sends it.
	Header string `yaml:"header"`
	// Value matches a header whose first value is exactly this.
	Value string `yaml:"value"`
	// Prefix matches a header whose first value starts with this.
	Prefix string `yaml:"prefix"`
	// Present matches a header with a non-empty first value.
	Present bool   `yaml:"present"`
	Subset  Subset `yaml:"subset"`
}

// Matches reports whether v, the first value of the call's Header ("" when
// it has none), satisfies m.
func (m *Match) Matches(v string) bool {
	switch {
	case v == "":
		return false
	case m.Present:
		return true
	case m.Prefix != "":
		return strings.HasPrefix(v, m.Prefix)
	}
	return v == m.Value
}

// Split is one share of a weighted split.
type Split struct {
	Subset Subset `yaml:"subset"`
	// Weight is the subset's share relative to the others'; 0 takes no
	// calls (a subset on its way in or out).
	Weight int `yaml:"weight"`
}

// MaxSplitWeight bounds one weight: large enough for any percentage with
// decimals, small enough that no sum of them overflows.
const MaxSplitWeight = 1_000_000

// EmptySubset says what becomes of a call whose subset has no routable
// backend.
type EmptySubset string

const (
	// Fallback sends the call to the whole route, as if the route had no
	// subsets: a canary that is down takes nothing from its users.
	Fallback EmptySubset = "fallback"
	// Fail ends the call UNAVAILABLE, naming the subset: for subsets that
	// must never spill over (a tenant's dedicated backends).
	Fail EmptySubset = "fail"
)

// Validate reports the first setting that cannot be used, by its path
// below the route (split[0].weight: ...).
func (r Routing) Validate() error {
	for i, m := range r.Match {
		f := fmt.Sprintf("match[%d]", i)
		if err := validHeader(m.Header); err != nil {
			return fmt.Errorf("%s.header: %w", f, err)
		}
		set := 0
		for _, on := range []bool{m.Value != "", m.Prefix != "", m.Present} {
			if on {
				set++
			}
		}
		if set != 1 {
			return fmt.Errorf("%s: set exactly one of value, prefix and present: true", f)
		}
		if err := m.Subset.validate(); err != nil {
			return fmt.Errorf("%s.subset.%w", f, err)
		}
	}
	total := 0
	for i, s := range r.Split {
		f := fmt.Sprintf("split[%d]", i)
		if s.Weight < 0 || s.Weight > MaxSplitWeight {
			return fmt.Errorf("%s.weight: %d is not between 0 and %d", f, s.Weight, MaxSplitWeight)
		}
		total += s.Weight
		if err := s.Subset.validate(); err != nil {
			return fmt.Errorf("%s.subset.%w", f, err)
		}
	}
	if len(r.Split) > 0 && total == 0 {
		return errors.New("split: every weight is 0, so the split would take no call; give one subset a weight")
	}
	switch r.OnEmptySubset {
	case "", Fallback, Fail:
	default:
		return fmt.Errorf("on_empty_subset: %q is not %q or %q", string(r.OnEmptySubset), Fallback, Fail)
	}
	return nil
}

func (s Subset) validate() error {
	if len(s.Tags) == 0 {
		return errors.New("tags: missing: a subset is the backends carrying all its tags, at least one")
	}
	for i, t := range s.Tags {
		if t == "" {
			return fmt.Errorf("tags[%d]: empty", i)
		}
	}
	return nil
}

// validHeader holds a header name to what both forwarding engines read
// alike: gRPC sends metadata keys in lowercase; pseudo-headers are not
// metadata; a -bin value is bytes that one engine sees decoded and the
// other in base64.
func validHeader(h string) error {
	switch {
	case h == "":
		return errors.New("missing")
	case h != strings.ToLower(h):
		return fmt.Errorf("%q: gRPC metadata keys are lowercase; write %q", h, strings.ToLower(h))
	case strings.HasPrefix(h, ":"):
		return fmt.Errorf("%q: pseudo-headers are not metadata", h)
	case strings.HasSuffix(h, "-bin"):
		return fmt.Errorf("%q: binary metadata cannot be matched", h)
	}
	return nil
}
