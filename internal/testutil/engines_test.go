package testutil

import (
	"fmt"
	"runtime"
	"slices"
	"testing"
)

// fatalRecorder is a testing.TB whose Fatalf ends the goroutine and keeps
// the message, so that a test can see Engines refuse a value.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}
func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestEngines(t *testing.T) {
	for _, tc := range []struct {
		env     string
		want    []string
		wantErr bool
	}{
		{"", DefaultEngines(), false},
		{"  ", DefaultEngines(), false},
		{"grpc", []string{"grpc"}, false},
		{"relay", []string{"relay"}, false},
		{"grpc,relay", []string{"grpc", "relay"}, false},
		{" relay , grpc ", []string{"relay", "grpc"}, false},
		{"grpc,grpc", nil, true},
		{"grcp", nil, true},
		{"grpc,", nil, true},
	} {
		t.Run(fmt.Sprintf("%q", tc.env), func(t *testing.T) {
			t.Setenv(EnginesEnv, tc.env)
			rec := &fatalRecorder{TB: t}
			var got []string
			done := make(chan struct{})
			go func() {
				defer close(done)
				got = Engines(rec)
			}()
			<-done
			if tc.wantErr {
				if rec.msg == "" {
					t.Fatalf("%s=%q: got %q, want a failure", EnginesEnv, tc.env, got)
				}
				return
			}
			if rec.msg != "" || !slices.Equal(got, tc.want) {
				t.Fatalf("%s=%q: got %q (failure %q), want %q", EnginesEnv, tc.env, got, rec.msg, tc.want)
			}
		})
	}
}
