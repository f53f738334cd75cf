package proxycfg

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseBackoff(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Backoff
		err  string
	}{
		{"25ms..250ms", Backoff{Base: 25 * time.Millisecond, Max: 250 * time.Millisecond}, ""},
		{" 1s .. 1s ", Backoff{Base: time.Second, Max: time.Second}, ""},
		{"25ms", Backoff{}, "base..max"},
		{"250ms..25ms", Backoff{}, "max is below base"},
		{"0s..1s", Backoff{}, "base must be positive"},
		{"-1s..1s", Backoff{}, "base must be positive"},
		{"soon..later", Backoff{}, "base"},
		{"1s..later", Backoff{}, "max"},
	} {
		got, err := ParseBackoff(tc.in)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("ParseBackoff(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseBackoff(%q) = %v, %v; want an error with %q", tc.in, got, err, tc.err)
		}
	}
	b := Backoff{Base: 10 * time.Millisecond, Max: time.Second}
	text, _ := b.MarshalText()
	var back Backoff
	if err := back.UnmarshalText(text); err != nil || back != b {
		t.Fatalf("%v written as %q reads back as %v, %v", b, text, back, err)
	}
}

func TestParseBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Bytes
		ok   bool
	}{
		{"65536", 65536, true}, {"64KiB", 64 << 10, true}, {"64 KiB", 64 << 10, true}, {"1MiB", 1 << 20, true},
		{"2gb", 2 << 30, true}, {"10B", 10, true}, {"0", 0, true},
		{"", 0, false}, {"KiB", 0, false}, {"-1", 0, false}, {"1.5MiB", 0, false}, {"1TiB", 0, false},
		{"99999999999999999999", 0, false}, {"9999999999999GiB", 0, false},
	} {
		got, err := ParseBytes(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestRetryValidateNamesTheField(t *testing.T) {
	neg, big := -1.0, 11.0
	negInt := -1
	for _, tc := range []struct {
		r    Retry
		want string
	}{
		{Retry{Codes: []string{"UNAVAILABLE", "Unavailabel"}}, "codes[1]"},
		{Retry{Codes: []string{"OK"}}, "codes[0]"},
		{Retry{MaxAttempts: -1}, "max_attempts"},
		{Retry{MaxAttempts: 11}, "max_attempts"},
		{Retry{PerTryTimeout: -time.Second}, "per_try_timeout"},
		{Retry{BufferBytes: -1}, "buffer_bytes"},
		{Retry{BufferBytes: 32 << 20}, "buffer_bytes"},
		{Retry{Budget: RetryBudget{Ratio: &neg}}, "budget.ratio"},
		{Retry{Budget: RetryBudget{Ratio: &big}}, "budget.ratio"},
		{Retry{Budget: RetryBudget{MinPerSecond: &negInt}}, "budget.min_per_second"},
	} {
		err := tc.r.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want+":") {
			t.Errorf("Validate(%+v) = %v, want an error naming %s", tc.r, err, tc.want)
		}
	}
	if err := (Retry{Codes: []string{"unavailable", "RESOURCE_EXHAUSTED"}, MaxAttempts: 5}).Validate(); err != nil {
		t.Fatalf("a good policy: %v", err)
	}
}

func TestRetryDefaults(t *testing.T) {
	var r Retry
	if r.Enabled() || r.Attempts() != 3 || r.Buffer() != 64<<10 || r.BackoffRange() != DefaultBackoff ||
		r.Budget.EffectiveRatio() != 0.2 || r.Budget.EffectivePerSecond() != 10 {
		t.Fatalf("the zero policy reads as %+v", r)
	}
	zero, none := 0.0, 0
	r = Retry{Codes: []string{"unavailable"}, MaxAttempts: 1, Budget: RetryBudget{Ratio: &zero, MinPerSecond: &none}}
	if r.Enabled() {
		t.Fatal("max_attempts 1 retries")
	}
	if r.Budget.EffectiveRatio() != 0 || r.Budget.EffectivePerSecond() != 0 {
		t.Fatal("an explicit zero budget reads as the default")
	}
	if !r.Retries(14) || r.Retries(13) || r.Retries(99) {
		t.Fatal("codes: unavailable is 14, and only it")
	}
}

// FuzzParseBackoff: any text either fails or gives a range that writes
// back to the same range.
func FuzzParseBackoff(f *testing.F) {
	for _, s := range []string{"25ms..250ms", "1s..1s", "..", "1h..0s", "-1ns..1ns", "9223372036854775807ns..9223372036854775807ns"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseBackoff(s)
		if err != nil {
			return
		}
		if b.Base <= 0 || b.Max < b.Base {
			t.Fatalf("ParseBackoff(%q) = %v", s, b)
		}
		text, _ := b.MarshalText()
		if back, err := ParseBackoff(string(text)); err != nil || back != b {
			t.Fatalf("%q read as %v, written as %q, read back as %v, %v", s, b, text, back, err)
		}
	})
}

// FuzzParseBytes: any text either fails or gives a size that is not
// negative.
func FuzzParseBytes(f *testing.F) {
	for _, s := range []string{"65536", "64KiB", "1 MiB", "8GiB", "", "-1", "99999999999GiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseBytes(s)
		if err == nil && n < 0 {
			t.Fatalf("ParseBytes(%q) = %d", s, n)
		}
	})
}

// Text that is not a value reads without an error, for Validate to name
// the field.
func TestBadTextIsAValidateError(t *testing.T) {
	var r Retry
	if err := r.Backoff.UnmarshalText([]byte("25ms")); err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err == nil || !strings.HasPrefix(err.Error(), "backoff: ") {
		t.Fatalf("a bad backoff validates as %v", err)
	}
	r = Retry{}
	if err := r.BufferBytes.UnmarshalText([]byte("lots")); err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err == nil || !strings.HasPrefix(err.Error(), "buffer_bytes: ") {
		t.Fatalf("a bad buffer_bytes validates as %v", err)
	}
}
