package proxy

import (
	"context"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// forward is the one place that calls outgoingMD, so that a change of its
// signature (trusted proxies, B17) changes one line of this test.
func forward(ctx context.Context) metadata.MD { return outgoingMD(ctx) }

// FuzzOutgoingMD sends arbitrary client metadata through the rewrite that
// every proxied call's headers go through. raw is "key: value" lines, so
// that the fuzzer can vary the number of pairs as well as their bytes.
func FuzzOutgoingMD(f *testing.F) {
	for _, s := range []struct {
		raw  string
		ip   []byte
		port uint16
		zone string
	}{
		{"x-custom: v\n:authority: gw.example:443", []byte{10, 0, 0, 1}, 40000, ""},
		{"x-forwarded-for: 1.2.3.4\nx-forwarded-for: 10.0.0.1", []byte{10, 0, 0, 1}, 1, ""},
		{"User-Agent: evil\nTE: gzip\nContent-Type: text/plain\nGrpc-Accept-Encoding: br\ngrpc-encoding: gzip", net.ParseIP("::1"), 443, ""},
		{":authority: \xff\xfe\n:authority: second", net.ParseIP("fe80::1"), 8080, "eth0"},
		{"x-forwarded-host: spoofed\nx-forwarded-for: ", nil, 0, ""},
		{"\x00: \x00\n: \nkey-bin: \x80\x81", []byte{127, 0, 0, 1}, 65535, ""},
		{"", []byte{1, 2, 3}, 0, ""},
		{"\xff\xff\n\xb0\xff\n\xb0\xff", []byte{0xc0}, 499, ""},
	} {
		f.Add(s.raw, s.ip, s.port, s.zone, true)
	}
	f.Add("x-forwarded-for: 1.2.3.4", []byte(nil), uint16(0), "", false)
	f.Fuzz(func(t *testing.T, raw string, ip []byte, port uint16, zone string, withPeer bool) {
		in := metadata.MD{}
		for line := range strings.SplitSeq(raw, "\n") {
			k, v, _ := strings.Cut(line, ": ")
			// HTTP/2 delivers lowercase names. Left as they are, two
			// names that lowercase alike (invalid UTF-8 becomes U+FFFD)
			// would make FromIncomingContext keep either one's values.
			k = strings.ToLower(k)
			in[k] = append(in[k], v)
		}
		ctx := metadata.NewIncomingContext(context.Background(), in)
		addr := &net.TCPAddr{IP: net.IP(ip), Port: int(port), Zone: zone}
		host, _, err := net.SplitHostPort(addr.String())
		if err != nil {
			host = addr.String()
		}
		if withPeer {
			ctx = peer.NewContext(ctx, &peer.Peer{Addr: addr})
		}
		// What the client sent, as the gateway reads it (keys lowercased).
		sent, _ := metadata.FromIncomingContext(ctx)

		out := forward(ctx)

		for _, k := range []string{":authority", "user-agent", "te", "content-type", "grpc-accept-encoding", "grpc-encoding"} {
			if v, ok := out[k]; ok {
				t.Fatalf("%q = %q reaches the backend; the backend connection sets it", k, v)
			}
		}
		if a := sent[":authority"]; len(a) > 0 && !slices.Equal(out["x-forwarded-host"], a) {
			t.Fatalf("x-forwarded-host = %q, want the client's :authority %q", out["x-forwarded-host"], a)
		}
		xff := out["x-forwarded-for"]
		if withPeer {
			if len(xff) == 0 || xff[len(xff)-1] != host {
				t.Fatalf("x-forwarded-for = %q, want it to end with the peer's host %q", xff, host)
			}
			if len(xff) > len(sent["x-forwarded-for"])+1 {
				t.Fatalf("x-forwarded-for = %q from the client's %q: more than the peer added", xff, sent["x-forwarded-for"])
			}
		}
		if again, _ := metadata.FromIncomingContext(ctx); !maps.EqualFunc(again, sent, slices.Equal) {
			t.Fatalf("outgoingMD changed the call's incoming metadata: %v, was %v", again, sent)
		}
	})
}
