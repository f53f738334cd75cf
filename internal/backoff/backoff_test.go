package backoff

import (
	"context"
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	for attempt, want := range []time.Duration{time.Second, 1600 * time.Millisecond, 2560 * time.Millisecond} {
		for range 100 {
			got := Delay(time.Second, time.Minute, attempt)
			if got < want*8/10 || got > want*12/10 {
				t.Fatalf("attempt %d: %v, want %v ±20%%", attempt, got, want)
			}
		}
	}
	for range 100 {
		if got := Delay(time.Second, 5*time.Second, 50); got > 6*time.Second {
			t.Fatalf("attempt 50: %v, above the cap with its jitter", got)
		}
	}
}

// Sleep reports a live context after the wait, and a cancelled one at once.
func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), 0) || !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep on a live context reported it ended")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) || Sleep(ctx, 0) {
		t.Fatal("Sleep on a cancelled context reported it live")
	}
}
