package balancer

import (
	"strings"
	"testing"
)

// FuzzServiceOf checks that routing never panics on a client's :path and
// that the service it routes by is the part of :path before the method:
// what comes back is always a piece of the input, never a rewrite of it.
func FuzzServiceOf(f *testing.F) {
	for _, s := range []struct{ svc, method string }{
		{"pkg.Service", "Method"},
		{"test.Svc", "\xff\xfe"},
		{"", ""},
		{"/", ""},
		{"a/b/c", "M"},
		{"\x00", "\x00"},
		{strings.Repeat("s", 1<<12), strings.Repeat("m", 1<<12)},
		{"grpc.health.v1.Health", "Watch"},
	} {
		f.Add(s.svc, s.method)
	}
	f.Fuzz(func(t *testing.T, svc, method string) {
		for _, full := range []string{svc, "/" + svc, svc + "/" + method, "/" + svc + "/" + method} {
			got := serviceOf(full)
			rest := strings.TrimPrefix(full, "/")
			if !strings.HasPrefix(rest, got) {
				t.Fatalf("serviceOf(%q) = %q, not a prefix of %q", full, got, rest)
			}
			if after := rest[len(got):]; after != "" && (after[0] != '/' || strings.Contains(after[1:], "/")) {
				t.Fatalf("serviceOf(%q) = %q leaves %q, want \"\" or one /method", full, got, after)
			}
		}
		if !strings.Contains(method, "/") {
			if got := serviceOf("/" + svc + "/" + method); got != svc {
				t.Fatalf("serviceOf(%q) = %q, want %q", "/"+svc+"/"+method, got, svc)
			}
		}
	})
}
