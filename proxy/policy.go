package proxy

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// The forwarding policy: what every engine does to a call's metadata on its
// way to the backend. See the README's "Forwarding policy".

// dropped are request keys the backend connection sets for itself, or that
// describe the client's hop only; forwarding them would send them twice or
// lie about the second hop. :authority becomes x-forwarded-host.
var dropped = [...]string{":authority", "user-agent", "grpc-accept-encoding", "grpc-encoding", "te", "content-type", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}

// forwardPolicy is the forwarding policy as it applies to one client: the
// one rule both engines apply, the grpc engine to a metadata.MD
// (outgoingMD), the relay to a header list. x-forwarded-for ends with the
// client's address and x-forwarded-host names the :authority the client
// called; both replace what the client sent unless the client is a
// trusted proxy, whose own values are kept (and appended to).
type forwardPolicy struct {
	// peer is the client's address; nil when unknown.
	peer    net.Addr
	trusted bool
	// clientHost is the client's IP when known (hasClient).
	clientHost string
	hasClient  bool
}

// policyFor is the policy for a client at from (nil when unknown).
func policyFor(from net.Addr, trusted []netip.Prefix) forwardPolicy {
	if _, ok := from.(internalAddr); ok {
		return forwardPolicy{peer: from, trusted: true}
	}
	fp := forwardPolicy{peer: from, trusted: isTrusted(from, trusted)}
	if from != nil {
		host := from.String()
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		fp.clientHost, fp.hasClient = host, true
	}
	return fp
}

// keep reports whether the request header k reaches the backend as the
// client sent it.
func (fp forwardPolicy) keep(k string) bool {
	if slices.Contains(dropped[:], k) {
		return false
	}
	return fp.trusted || (k != "x-forwarded-for" && k != "x-forwarded-host")
}

// added calls add for each header the gateway sets: x-forwarded-host,
// unless a trusted client sent its own (hasXFH), and the client's address
// at the end of x-forwarded-for.
func (fp forwardPolicy) added(authority string, hasXFH bool, add func(k, v string)) {
	if authority != "" && !(fp.trusted && hasXFH) {
		add("x-forwarded-host", authority)
	}
	if fp.hasClient {
		add("x-forwarded-for", fp.clientHost)
	}
}

// outgoingMD is the client's request metadata md (which it edits) as the
// backend gets it, by the forwarding policy. from is the client's address;
// nil when unknown.
func outgoingMD(md metadata.MD, from net.Addr, trusted []netip.Prefix) metadata.MD {
	if md == nil {
		md = metadata.MD{}
	}
	fp := policyFor(from, trusted)
	var authority string
	if a := md[":authority"]; len(a) > 0 {
		authority = a[0]
	}
	for k := range md {
		if !fp.keep(k) {
			delete(md, k)
		}
	}
	fp.added(authority, len(md["x-forwarded-host"]) > 0, func(k, v string) {
		if k == "x-forwarded-host" {
			md[k] = []string{v}
			return
		}
		md[k] = append(md[k], v)
	})
	return md
}

// isTrusted reports whether the client at from is one of the trusted
// proxies.
func isTrusted(from net.Addr, trusted []netip.Prefix) bool {
	if from == nil || len(trusted) == 0 {
		return false
	}
	ap, err := netip.ParseAddrPort(from.String())
	if err != nil {
		return false
	}
	// A link-local peer carries its interface as a zone, which no prefix
	// contains: the address is what trusted_proxies names.
	a := ap.Addr().WithZone("").Unmap()
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// requestMD is the client's request metadata, a copy the caller may edit,
// and the client's address.
func requestMD(ctx context.Context) (metadata.MD, net.Addr) {
	md, _ := metadata.FromIncomingContext(ctx)
	var from net.Addr
	if pr, ok := peer.FromContext(ctx); ok {
		from = pr.Addr
	}
	return md, from
}

// clientIdentity is the identity a client proved with its TLS certificate,
// verified against the listener's client CA: the first URI SAN (a SPIFFE
// ID), else the first DNS SAN, else the subject's common name. Empty without
// a verified certificate.
func clientIdentity(ctx context.Context) string {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	ti, ok := pr.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return ""
	}
	leaf := ti.State.VerifiedChains[0][0]
	switch {
	case len(leaf.URIs) > 0:
		return leaf.URIs[0].String()
	case len(leaf.DNSNames) > 0:
		return leaf.DNSNames[0]
	}
	return leaf.Subject.CommonName
}

// contentSubtype is the subtype of a gRPC content-type:
// "application/grpc+xyz" is "xyz"; plain "application/grpc" (with or without
// parameters) and anything else has none.
func contentSubtype(contentType string) string {
	rest, ok := strings.CutPrefix(contentType, "application/grpc")
	if !ok {
		return ""
	}
	sub, ok := strings.CutPrefix(rest, "+")
	if !ok {
		return ""
	}
	if i := strings.IndexByte(sub, ';'); i >= 0 {
		sub = sub[:i]
	}
	return strings.TrimSpace(sub)
}

// upstreamCode is the code a client gets for a call that failed between the
// gateway and the backend rather than in the backend's application: the
// client did not cancel, so CANCELED would be a lie, and INTERNAL would
// blame a service that never answered. UNAVAILABLE says what happened and
// lets the client retry.
func upstreamCode(c codes.Code) codes.Code {
	switch c {
	case codes.Canceled, codes.Internal, codes.Unknown:
		return codes.Unavailable
	}
	return c
}
