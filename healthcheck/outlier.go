package healthcheck

import (
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/healthgate/healthgate/healthcheck/healthcheckcfg"
)

// OutlierConfig is passive failure detection, the outlier_detection:
// section of the config file.
type OutlierConfig = healthcheckcfg.Outlier

// outlierPolicy is the OutlierConfig in force, its codes parsed once: every
// call's Done reads it.
type outlierPolicy struct {
	OutlierConfig
	codes []codes.Code
}

// newOutlierPolicy is the policy of a validated o.
func newOutlierPolicy(o OutlierConfig) *outlierPolicy {
	p := &outlierPolicy{OutlierConfig: o}
	nums, _ := o.CodeNumbers()
	for _, n := range nums {
		p.codes = append(p.codes, codes.Code(n))
	}
	return p
}

// Outcome is how a call sent to a backend ended, as passive failure
// detection sees it.
type Outcome struct {
	// Code is the status the call ended with.
	Code codes.Code
	// Origin says who ended the call that way.
	Origin Origin
}

// Origin is who ended a call.
type Origin uint8

const (
	// FromBackend: the backend's application answered, with Code.
	FromBackend Origin = iota
	// FromClient: the client cancelled, its deadline passed while the
	// backend was answering, or it sent what the gateway refused. It says
	// nothing about the backend.
	FromClient
	// Local: the backend failed the call itself: the connection was refused
	// or broke, the stream was reset, or the deadline passed before the
	// backend sent any response header.
	Local
)

// Done ends a call counted by Begin and feeds passive failure detection.
func (b *Handle) Done(o Outcome) {
	b.inflight.Add(-1)
	cfg := b.c.outlier.Load()
	if cfg.Disabled {
		return
	}
	switch {
	case o.Origin == Local || (o.Origin == FromBackend && slices.Contains(cfg.codes, o.Code)):
		n := b.failures.Add(1)
		if n < int32(cfg.ConsecutiveFailures) {
			return
		}
		// Of the calls that failed together past the threshold, the one
		// that resets the count ejects; the others see a count that moved.
		if !b.failures.CompareAndSwap(n, 0) {
			return
		}
		b.c.eject(b, cfg, fmt.Sprintf("%d calls in a row failed at the backend (last: %s)", cfg.ConsecutiveFailures, o.Code))
	case o.Origin == FromBackend:
		// Loads first: the common case writes nothing shared.
		if b.failures.Load() != 0 {
			b.failures.Store(0)
		}
		if o.Code == codes.OK && b.ejectionsInRow.Load() != 0 {
			b.ejectionsInRow.Store(0)
		}
	}
}

// eject takes b out of rotation for the ejection time, unless it is out
// already, no route lists it any more, or a route it serves would be left
// with more than its share of ejected backends.
func (c *Checker) eject(b *Handle, cfg *outlierPolicy, reason string) {
	st := c.latest.Load()
	now := time.Now()
	c.ejectMu.Lock()
	if b.ejectedLocked(now) {
		c.ejectMu.Unlock()
		return
	}
	// A backend that is leaving, or already closed and forgotten, takes no
	// new calls: ejecting it would change nothing but report an ejection
	// (a metric series) for a backend whose series are gone. Its calls cut
	// at the end of its drain are what fail here.
	listed := false
	if st != nil {
		for _, r := range st.Routes {
			total, out, member := 0, 0, false
			for _, m := range r.Backends {
				if m.Leaving {
					continue
				}
				total++
				switch {
				case m.Handle == b:
					member = true
				case m.Handle.ejectedLocked(now):
					out++
				}
			}
			listed = listed || member
			if member && (out+1)*100 > total*cfg.MaxEjectionPercent {
				c.ejectMu.Unlock()
				b.log.Warn("backend keeps failing but is not ejected: its route is at max_ejection_percent",
					"route", r.Name, "ejected", out, "backends", total, "max_ejection_percent", cfg.MaxEjectionPercent, "failures", reason)
				return
			}
		}
	}
	if !listed {
		c.ejectMu.Unlock()
		return
	}
	n := min(b.ejectionsInRow.Add(1), 10)
	d := cfg.Ejection * time.Duration(n)
	b.ejectedAt, b.ejectedUntil, b.ejectReason = now, now.Add(d), reason
	c.ejected[b] = struct{}{}
	c.ejectMu.Unlock()
	b.log.Warn("backend ejected", "for", d, "reason", reason)
	if ev := c.cfg.Events; ev != nil {
		ev.BackendEjected(b.addr)
	}
	c.markDirty(b.addr)
}

// ejectedLocked reports whether b is ejected at now; the checker's ejectMu
// is held.
func (b *Handle) ejectedLocked(now time.Time) bool {
	return !b.ejectedUntil.IsZero() && now.Before(b.ejectedUntil)
}
