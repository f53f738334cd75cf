package grpcweb

import (
	"bytes"
	"encoding/binary"
	"io"
	"net/http"
	"testing"
	"testing/iotest"

	"google.golang.org/grpc/codes"

	"github.com/healthgate/healthgate/internal/grpcwire"
)

func msgFrame(flag byte, msg []byte) []byte {
	out := make([]byte, 5, 5+len(msg))
	out[0] = flag
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg)))
	return append(out, msg...)
}

func TestFrameCheckerPassesStreamsAndRefusesBadFrames(t *testing.T) {
	good := bytes.Join([][]byte{msgFrame(0, nil), msgFrame(0, []byte("abc")), msgFrame(1, bytes.Repeat([]byte{7}, 16))}, nil)
	for _, tc := range []struct {
		name string
		in   []byte
		// code is the status the stream ends with; OK: it passes whole.
		code codes.Code
	}{
		{"empty stream", nil, codes.OK},
		{"messages, one compressed", good, codes.OK},
		{"at the limit", msgFrame(0, make([]byte, 16)), codes.OK},
		{"over the limit", msgFrame(0, make([]byte, 17)), codes.ResourceExhausted},
		{"length over the limit, body never sent", msgFrame(0, nil)[:1:1], codes.InvalidArgument},
		{"trailer flag", msgFrame(0x80, nil), codes.InvalidArgument},
		{"unknown flag", msgFrame(0x02, nil), codes.InvalidArgument},
		{"ends inside a prefix", good[:len(good)-18], codes.InvalidArgument},
		{"ends inside a message", good[:len(good)-1], codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// One byte at a time: prefixes split over reads.
			c := newFrameChecker(iotest.OneByteReader(bytes.NewReader(tc.in)), 16)
			got, err := io.ReadAll(c)
			if tc.code == codes.OK {
				if err != nil || !bytes.Equal(got, tc.in) {
					t.Fatalf("got %d bytes, %v; want the %d sent", len(got), err, len(tc.in))
				}
				if c.failed() != nil {
					t.Fatalf("failed() = %v after a good stream", c.failed())
				}
				return
			}
			se, ok := err.(*statusError)
			if !ok || se.code != tc.code {
				t.Fatalf("got %v, want a %v status", err, tc.code)
			}
			if c.failed() != se {
				t.Fatalf("failed() = %v, want the error Read returned", c.failed())
			}
			if n, err := c.Read(make([]byte, 10)); n != 0 || err != se {
				t.Fatalf("Read after the failure: %d, %v", n, err)
			}
		})
	}
}

func TestFrameCheckerOversizeBeforeTheBody(t *testing.T) {
	// The prefix alone is refused: nothing of a 4 GiB message is waited for.
	c := newFrameChecker(bytes.NewReader([]byte{0, 0xff, 0xff, 0xff, 0xff}), 4<<20)
	_, err := io.ReadAll(c)
	if se, ok := err.(*statusError); !ok || se.code != codes.ResourceExhausted || se.msg != "grpc: received message larger than max (4294967295 vs. 4194304)" {
		t.Fatalf("got %v", err)
	}
}

func TestTrailerFrame(t *testing.T) {
	got := trailerFrame(codes.Unavailable, "no%20way", http.Header{"X-B": {"2", "3"}, "X-A": {"1"}, "Grpc-Status": {"0"}})
	want := "grpc-status: 14\r\ngrpc-message: no%20way\r\nx-a: 1\r\nx-b: 2\r\nx-b: 3\r\n"
	if got[0] != 0x80 || int(binary.BigEndian.Uint32(got[1:5])) != len(want) || string(got[5:]) != want {
		t.Fatalf("got %q, want flag 0x80 and %q", got, want)
	}
	if got := trailerFrame(codes.OK, "", nil); string(got[5:]) != "grpc-status: 0\r\n" {
		t.Fatalf("OK without message: %q", got[5:])
	}
}

func TestEncodeGrpcMessage(t *testing.T) {
	if got, want := grpcwire.EncodeMessage("bad ü 100%\n"), "bad %C3%BC 100%25%0A"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
