package metrics

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc/codes"

	"github.com/healthgate/healthgate/proxy"
)

// FuzzMethodLabels feeds CallFinished what a client controls (:path) and
// what discovery does (the upstream address): B16 says neither may crash
// the gateway, and a scrape must still succeed afterwards.
func FuzzMethodLabels(f *testing.F) {
	for _, s := range []struct {
		method, upstream string
		routed           bool
		code             uint32
	}{
		{"/test.Svc/Echo", "127.0.0.1:50051", true, 0},
		{"/test.Svc/\xff\xfe", "127.0.0.1:50051", true, 13},
		{"/\xc3/M", "", true, 2},
		{"/test.Svc/M\xe2\x82", "[::1]:1", true, 4},
		{"", "", false, 12},
		{"/", "", true, 0},
		{"//", "x", true, 0},
		{"no-slash", "\x00", true, 99},
		{"/a.S/" + strings.Repeat("m", MaxLabelBytes), "", true, 0},
		{"/a.S/" + strings.Repeat("m", MaxLabelBytes+1), "", true, 0},
		{"/" + strings.Repeat("s", 4096) + "/M", "", true, 1},
		{"/a.S/\u2028\ufeff\U0010ffff", "\xed\xa0\x80", true, 16},
		{"/other\"}\n/M", "a\"b", false, 17},
	} {
		f.Add(s.method, s.upstream, s.routed, s.code)
	}
	f.Fuzz(func(t *testing.T, method, upstream string, routed bool, code uint32) {
		// The access log formats the same client bytes; the code picks
		// the handler because the two escape differently.
		access := slog.New(slog.NewJSONHandler(io.Discard, nil))
		if code%2 == 1 {
			access = slog.New(slog.NewTextHandler(io.Discard, nil))
		}
		m := New(access)
		// The runtime's collectors take no client input and make up most
		// of a Gather's time; without them the fuzzer runs several times
		// more inputs.
		for _, c := range []prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
			if !m.Registry.Unregister(c) {
				t.Fatalf("%T was not registered", c)
			}
		}
		m.CallStarted()
		m.CallFinished(proxy.CallInfo{FullMethod: method, Upstream: upstream, Routed: routed, Code: codes.Code(code), Duration: time.Millisecond})
		checkLabels(t, m)
		if got := series(t, m, "healthgate_proxy_handled_total"); got != 1 {
			t.Fatalf("%d handled series after one call, want 1", got)
		}
	})
}
