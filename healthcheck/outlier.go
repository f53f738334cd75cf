package healthcheck

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
)

// OutlierConfig is passive failure detection: a backend whose calls keep
// failing at the backend itself, although its health check says SERVING,
// is ejected for a while. The zero value is on, with the defaults below.
type OutlierConfig struct {
	// Disabled turns passive failure detection off.
	Disabled bool
	// ConsecutiveFailures is the failures in a row that eject. Zero means 5.
	ConsecutiveFailures int
	// Ejection is how long the first ejection lasts; each next one before a
	// call succeeds lasts as long again, up to 10 times. Zero means 30s. An
	// ejection ends early when the backend reconnects and reports SERVING.
	Ejection time.Duration
	// MaxEjectionPercent caps the share of a route's backends that may be
	// ejected at once, rounded down: at 50 a route of one backend never
	// loses it to ejection. Zero means 50; 100 lets every backend go.
	MaxEjectionPercent int
	// Codes are statuses sent by the backend's application that count as
	// failures too. None by default: a backend that answers, even
	// UNAVAILABLE, is answering, and counting its answers would let any
	// client eject every backend by calling a method that fails.
	Codes []codes.Code
}

// Validate reports the first field that cannot be used.
func (c OutlierConfig) Validate() error {
	switch {
	case c.ConsecutiveFailures < 0:
		return fmt.Errorf("consecutive_failures: must not be negative, got %d", c.ConsecutiveFailures)
	case c.Ejection < 0:
		return fmt.Errorf("ejection: must not be negative, got %s", c.Ejection)
	case c.MaxEjectionPercent < 0 || c.MaxEjectionPercent > 100:
		return fmt.Errorf("max_ejection_percent: must be within 0-100, got %d", c.MaxEjectionPercent)
	}
	for _, code := range c.Codes {
		if code == codes.OK {
			return errors.New("codes: OK is not a failure")
		}
	}
	return nil
}

func (c OutlierConfig) withDefaults() OutlierConfig {
	if c.ConsecutiveFailures == 0 {
		c.ConsecutiveFailures = 5
	}
	if c.Ejection == 0 {
		c.Ejection = 30 * time.Second
	}
	if c.MaxEjectionPercent == 0 {
		c.MaxEjectionPercent = 50
	}
	return c
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
	case o.Origin == Local || (o.Origin == FromBackend && slices.Contains(cfg.Codes, o.Code)):
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
func (c *Checker) eject(b *Handle, cfg *OutlierConfig, reason string) {
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
