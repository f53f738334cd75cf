package proxycfg

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Retry is a route's retry policy, the routes[].retry: section: which
// answers of a backend the gateway sends to another backend, how often and
// how soon. The zero value retries nothing.
//
// A call is retried only while nothing of the backend's answer has reached
// the client (a trailers-only answer, or a failure before any response
// header) and every request byte sent so far is kept (BufferBytes), and
// only within the client's deadline and the route's budget.
type Retry struct {
	// Codes are the gRPC status codes, by name (UNAVAILABLE), that the
	// call is retried on. A stream the backend reset or a connection that
	// broke before any response header counts as UNAVAILABLE. Empty means
	// no retries.
	Codes []string `yaml:"codes"`
	// MaxAttempts bounds the backends one call is sent to, the first
	// included. Zero means 3; 1 means no retries.
	MaxAttempts int `yaml:"max_attempts"`
	// PerTryTimeout bounds how long one attempt may take to answer with
	// its response headers (or a trailers-only status); past it the
	// attempt is reset and ends as DEADLINE_EXCEEDED, retried only when
	// Codes lists DEADLINE_EXCEEDED. It does not bound a response once
	// its headers went to the client. Zero means none.
	PerTryTimeout time.Duration `yaml:"per_try_timeout"`
	// Backoff is the wait before retry n: a random duration between zero
	// and min(base×2^(n-1), max), as gRPC's own retries (A6). A backend's
	// grpc-retry-pushback-ms replaces it. Zero means 25ms..250ms.
	Backoff Backoff `yaml:"backoff"`
	// Budget bounds the route's retries against its calls.
	Budget RetryBudget `yaml:"budget"`
	// BufferBytes bounds the request bytes a call keeps to send again; a
	// call whose request grew past it is not retried. Zero means 64 KiB.
	BufferBytes Bytes `yaml:"buffer_bytes"`
}

// RetryBudget bounds a route's retries so that failing backends do not get
// a multiple of the load (a retry storm): a retry is allowed while the
// retries of the last RetryWindow stay within Ratio of the calls in it, and
// beyond that up to MinPerSecond retries in any second.
type RetryBudget struct {
	// Ratio of retries to calls. Nil means 0.2; 0 allows only the floor.
	Ratio *float64 `yaml:"ratio"`
	// MinPerSecond retries are allowed each second whatever the ratio, so
	// that a route with few calls can retry at all. Nil means 10.
	MinPerSecond *int `yaml:"min_per_second"`
}

// RetryWindow is how far back the budget counts calls and retries.
const RetryWindow = 10 * time.Second

// Retry defaults.
const (
	DefaultRetryAttempts    = 3
	DefaultRetryBufferBytes = 64 << 10
	DefaultRetryRatio       = 0.2
	DefaultRetryPerSecond   = 10
)

// DefaultBackoff is the retry backoff when none is set.
var DefaultBackoff = Backoff{Base: 25 * time.Millisecond, Max: 250 * time.Millisecond}

// Enabled reports whether the policy retries anything.
func (r *Retry) Enabled() bool { return len(r.Codes) > 0 && r.MaxAttempts != 1 }

// Attempts is MaxAttempts with its default.
func (r *Retry) Attempts() int {
	if r.MaxAttempts == 0 {
		return DefaultRetryAttempts
	}
	return r.MaxAttempts
}

// Buffer is BufferBytes with its default.
func (r *Retry) Buffer() int {
	if r.BufferBytes == 0 {
		return DefaultRetryBufferBytes
	}
	return int(r.BufferBytes)
}

// BackoffRange is Backoff with its default.
func (r *Retry) BackoffRange() Backoff {
	if r.Backoff == (Backoff{}) {
		return DefaultBackoff
	}
	return r.Backoff
}

// EffectiveRatio is Ratio with its default.
func (b RetryBudget) EffectiveRatio() float64 {
	if b.Ratio == nil {
		return DefaultRetryRatio
	}
	return *b.Ratio
}

// EffectivePerSecond is MinPerSecond with its default.
func (b RetryBudget) EffectivePerSecond() int {
	if b.MinPerSecond == nil {
		return DefaultRetryPerSecond
	}
	return *b.MinPerSecond
}

// Retries reports whether the policy lists code (a gRPC code number).
func (r *Retry) Retries(code uint32) bool {
	if int(code) >= len(codeNames) {
		return false
	}
	name := codeNames[code]
	for _, c := range r.Codes {
		if strings.EqualFold(c, name) {
			return true
		}
	}
	return false
}

// codeNames are the gRPC codes' canonical names, by number; the package
// does not import grpc-go (see the package doc).
var codeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
	"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

// Validate reports the first field that cannot be used, by its YAML key.
func (r Retry) Validate() error {
	for i, c := range r.Codes {
		known := false
		for _, n := range codeNames[1:] {
			known = known || strings.EqualFold(c, n)
		}
		if !known {
			return fmt.Errorf("codes[%d]: %q is not a gRPC status code name other than OK (UNAVAILABLE, RESOURCE_EXHAUSTED, ...)", i, c)
		}
	}
	switch {
	case r.MaxAttempts < 0:
		return fmt.Errorf("max_attempts: must not be negative, got %d", r.MaxAttempts)
	case r.MaxAttempts > 10:
		return fmt.Errorf("max_attempts: at most 10, got %d", r.MaxAttempts)
	case r.PerTryTimeout < 0:
		return fmt.Errorf("per_try_timeout: must not be negative, got %s", r.PerTryTimeout)
	case r.BufferBytes < 0:
		return fmt.Errorf("buffer_bytes: must be a size of 0 or more bytes (65536, 64KiB, 1MiB)")
	case r.Backoff.invalid != "":
		return fmt.Errorf("backoff: %s", r.Backoff.invalid)
	case r.Backoff != (Backoff{}) && (r.Backoff.Base <= 0 || r.Backoff.Max < r.Backoff.Base):
		return fmt.Errorf("backoff: base must be positive and max at least base, got %s..%s", r.Backoff.Base, r.Backoff.Max)
	case r.BufferBytes > 16<<20:
		return fmt.Errorf("buffer_bytes: at most 16MiB, got %d", r.BufferBytes)
	case r.Budget.Ratio != nil && (*r.Budget.Ratio < 0 || *r.Budget.Ratio > 10 || *r.Budget.Ratio != *r.Budget.Ratio):
		return fmt.Errorf("budget.ratio: must be between 0 and 10, got %v", *r.Budget.Ratio)
	case r.Budget.MinPerSecond != nil && *r.Budget.MinPerSecond < 0:
		return fmt.Errorf("budget.min_per_second: must not be negative, got %d", *r.Budget.MinPerSecond)
	}
	return nil
}

// Backoff is a range of retry waits, written base..max ("25ms..250ms").
type Backoff struct {
	Base, Max time.Duration
	// invalid is why the text it was read from is not a range: kept for
	// Validate, which names the field, where yaml would not.
	invalid string
}

// ParseBackoff reads "base..max": two positive durations, base ≤ max.
func ParseBackoff(s string) (Backoff, error) {
	lo, hi, ok := strings.Cut(s, "..")
	if !ok {
		return Backoff{}, fmt.Errorf("%q is not base..max (25ms..250ms)", s)
	}
	base, err := time.ParseDuration(strings.TrimSpace(lo))
	if err != nil {
		return Backoff{}, fmt.Errorf("%q: base: %w", s, err)
	}
	mx, err := time.ParseDuration(strings.TrimSpace(hi))
	if err != nil {
		return Backoff{}, fmt.Errorf("%q: max: %w", s, err)
	}
	switch {
	case base <= 0:
		return Backoff{}, fmt.Errorf("%q: base must be positive", s)
	case mx < base:
		return Backoff{}, fmt.Errorf("%q: max is below base", s)
	}
	return Backoff{Base: base, Max: mx}, nil
}

// UnmarshalText reads the YAML value. Text that is not a range is kept
// as such for Validate to report, with the field's path.
func (b *Backoff) UnmarshalText(text []byte) error {
	v, err := ParseBackoff(string(text))
	if err != nil {
		*b = Backoff{invalid: err.Error()}
		return nil
	}
	*b = v
	return nil
}

// MarshalText writes what UnmarshalText reads; the zero value is "".
func (b Backoff) MarshalText() ([]byte, error) {
	if b == (Backoff{}) {
		return nil, nil
	}
	return []byte(b.Base.String() + ".." + b.Max.String()), nil
}

// Bytes is a size in bytes, written as a number or with a binary unit
// (64KiB, 1MiB).
type Bytes int64

// ParseBytes reads a size: digits, optionally followed by B, KiB, MiB or
// GiB (KB, MB and GB are read as the binary units too).
func ParseBytes(s string) (Bytes, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("%q is not a size (65536, 64KiB, 1MiB)", s)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", s, errors.Unwrap(err))
	}
	var unit int64
	switch strings.ToLower(strings.TrimSpace(t[i:])) {
	case "", "b":
		unit = 1
	case "kib", "kb", "k":
		unit = 1 << 10
	case "mib", "mb", "m":
		unit = 1 << 20
	case "gib", "gb", "g":
		unit = 1 << 30
	default:
		return 0, fmt.Errorf("%q: unknown unit %q (B, KiB, MiB, GiB)", s, t[i:])
	}
	if n > (1<<63-1)/unit {
		return 0, fmt.Errorf("%q: too large", s)
	}
	return Bytes(n * unit), nil
}

// UnmarshalText reads the YAML value. Text that is not a size reads as
// -1, for Validate to report with the field's path, where yaml would not.
func (b *Bytes) UnmarshalText(text []byte) error {
	v, err := ParseBytes(string(text))
	if err != nil {
		v = -1
	}
	*b = v
	return nil
}
