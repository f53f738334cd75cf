package proxy

import "testing"

func TestTraceIDOf(t *testing.T) {
	for _, tc := range []struct{ tp, want string }{
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "4bf92f3577b34da6a3ce929d0e0e4736"},
		// A later version may carry more fields after a dash.
		{"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what", "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what", ""},
		{"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", ""},
		{"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", ""},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", ""},
		{"", ""},
	} {
		if got := traceIDOf(tc.tp); got != tc.want {
			t.Errorf("traceIDOf(%q) = %q, want %q", tc.tp, got, tc.want)
		}
	}
}

// TestUntracedCallTraceCostsNothing: with no Tracer, a call's trace does
// nothing and allocates nothing.
func TestUntracedCallTraceCostsNothing(t *testing.T) {
	p := &Proxy{}
	up := testUpstream{}
	allocs := testing.AllocsPerRun(100, func() {
		tr := p.startTrace("/a.S/M", mdHeaders(nil), nil)
		tr.attempt("a.S", up, 0)
		tr.done(up, Outcome{})
		tr.end("a.S", 0)
		_ = tr.traceID("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	})
	if allocs != 0 {
		t.Fatalf("an untraced call's trace allocates %v times, want 0", allocs)
	}
}

type testUpstream struct{}

func (testUpstream) Addr() string { return "b:1" }
func (testUpstream) Done(Outcome) {}
