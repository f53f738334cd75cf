package grpcwire

import (
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestHTTPStatusCode(t *testing.T) {
	for status, want := range map[int]codes.Code{400: codes.Internal, 401: codes.Unauthenticated, 403: codes.PermissionDenied, 404: codes.Unimplemented, 429: codes.Unavailable, 502: codes.Unavailable, 503: codes.Unavailable, 504: codes.Unavailable, 200: codes.Unknown, 500: codes.Unknown} {
		if got := HTTPStatusCode(status); got != want {
			t.Errorf("HTTPStatusCode(%d) = %v, want %v", status, got, want)
		}
	}
}

func TestEncodeMessage(t *testing.T) {
	if got, want := EncodeMessage("bad ü 100%\n"), "bad %C3%BC 100%25%0A"; got != want {
		t.Errorf("EncodeMessage = %q, want %q", got, want)
	}
}
