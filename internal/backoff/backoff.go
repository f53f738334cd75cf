// Package backoff is the one retry schedule of healthgate's own loops
// (health Watch streams, the relay's backend connections): grpc-go's
// connection backoff, so that both behave as a grpc-go client would; and
// Sleep, the wait between tries that a cancelled context cuts short.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Delay is base * 1.6^attempt, capped at max, with ±20% jitter so that
// many backends failing together do not retry together.
func Delay(base, max time.Duration, attempt int) time.Duration {
	d := float64(base)
	for range attempt {
		d *= 1.6
		if d >= float64(max) {
			d = float64(max)
			break
		}
	}
	d *= 0.8 + 0.4*rand.Float64()
	return time.Duration(d)
}

// Sleep waits d, or until ctx ends; it reports whether ctx is still live.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
