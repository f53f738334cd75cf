// Package grpcwire holds the rules of gRPC over HTTP/2 that more than one
// part of the gateway applies to what it sends or receives: the relay, the
// gRPC-Web bridge and the relay's own gRPC client. One rule, one place.
package grpcwire

import (
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
)

// HTTPStatusCode is the gRPC code of an HTTP response that carries no
// grpc-status, as the gRPC spec's http-grpc-status-mapping says: what an
// HTTP server or proxy in the way answered.
func HTTPStatusCode(httpStatus int) codes.Code {
	switch httpStatus {
	case 400:
		return codes.Internal
	case 401:
		return codes.Unauthenticated
	case 403:
		return codes.PermissionDenied
	case 404:
		return codes.Unimplemented
	case 429, 502, 503, 504:
		return codes.Unavailable
	}
	return codes.Unknown
}

// EncodeMessage percent-encodes what the gRPC spec says grpc-message must
// not carry as is: bytes outside printable ASCII, and '%' itself.
func EncodeMessage(msg string) string {
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c >= ' ' && c <= '~' && c != '%' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}
