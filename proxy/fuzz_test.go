package proxy

import (
	"context"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// everyone is a trusted-proxies list that trusts every client.
var everyone = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}

// forward rewrites the call's metadata as the proxy does.
func forward(ctx context.Context, trustAll bool) metadata.MD {
	md, from := requestMD(ctx)
	var trusted []netip.Prefix
	if trustAll {
		trusted = everyone
	}
	return outgoingMD(md, from, trusted)
}

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
		f.Add(s.raw, s.ip, s.port, s.zone, true, false)
		f.Add(s.raw, s.ip, s.port, s.zone, true, true)
	}
	f.Add("x-forwarded-for: 1.2.3.4", []byte(nil), uint16(0), "", false, false)
	f.Fuzz(func(t *testing.T, raw string, ip []byte, port uint16, zone string, withPeer, trustAll bool) {
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

		out := forward(ctx, trustAll)
		// Only a parseable peer address can be trusted.
		_, perr := netip.ParseAddrPort(addr.String())
		trusted := trustAll && withPeer && perr == nil

		for _, k := range []string{":authority", "user-agent", "te", "content-type", "grpc-accept-encoding", "grpc-encoding"} {
			if v, ok := out[k]; ok {
				t.Fatalf("%q = %q reaches the backend; the backend connection sets it", k, v)
			}
		}
		wantHost := sent[":authority"]
		if len(wantHost) > 1 {
			wantHost = wantHost[:1]
		}
		if len(wantHost) == 1 && wantHost[0] == "" {
			// An empty :authority names no host: none is added.
			wantHost = nil
		}
		if trusted && len(sent["x-forwarded-host"]) > 0 {
			wantHost = sent["x-forwarded-host"]
		}
		if !slices.Equal(out["x-forwarded-host"], wantHost) {
			t.Fatalf("x-forwarded-host = %q, want %q (trusted %v)", out["x-forwarded-host"], wantHost, trusted)
		}
		xff := out["x-forwarded-for"]
		switch {
		case withPeer && trusted:
			if want := append(slices.Clone(sent["x-forwarded-for"]), host); !slices.Equal(xff, want) {
				t.Fatalf("x-forwarded-for = %q, want a trusted proxy's %q with the peer appended", xff, sent["x-forwarded-for"])
			}
		case withPeer:
			if !slices.Equal(xff, []string{host}) {
				t.Fatalf("x-forwarded-for = %q, want only the peer's host %q: an untrusted client's value is replaced (B17)", xff, host)
			}
		default:
			if len(xff) != 0 {
				t.Fatalf("x-forwarded-for = %q without a peer, want none", xff)
			}
		}
		if again, _ := metadata.FromIncomingContext(ctx); !maps.EqualFunc(again, sent, slices.Equal) {
			t.Fatalf("outgoingMD changed the call's incoming metadata: %v, was %v", again, sent)
		}
	})
}
