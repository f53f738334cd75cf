package proxy

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/healthgate/healthgate/internal/grpcwire"
)

// FuzzGRPCTimeout gives the relay's grpc-timeout reader any value: it
// must never panic, never return a negative duration, and read back what
// encodeTimeout writes (rounded up to the unit it chose).
func FuzzGRPCTimeout(f *testing.F) {
	for _, s := range []string{"1S", "100m", "99999999H", "0n", "", "abc", "-1S", "1", "99999999999H", "5u"} {
		f.Add(s, int64(time.Second))
	}
	f.Fuzz(func(t *testing.T, v string, d int64) {
		frame := &http2.MetaHeadersFrame{Fields: []hpack.HeaderField{{Name: "grpc-timeout", Value: v}}}
		got, ok, err := grpcTimeout(frame)
		if err == nil && ok && got < 0 {
			t.Fatalf("grpc-timeout %q read as %v", v, got)
		}
		if err != nil && ok {
			t.Fatalf("grpc-timeout %q: both an error and a value", v)
		}
		if d <= 0 {
			return
		}
		enc := encodeTimeout(time.Duration(d))
		back, ok, err := grpcTimeout(&http2.MetaHeadersFrame{Fields: []hpack.HeaderField{{Name: "grpc-timeout", Value: enc}}})
		if err != nil || !ok || back < time.Duration(d) {
			t.Fatalf("encodeTimeout(%v) = %q, read back as %v, %v, %v", time.Duration(d), enc, back, ok, err)
		}
	})
}

// FuzzMsgLimit feeds the relay's message-prefix reader a stream cut into
// any pieces: wherever the cuts fall, it must find the same oversized
// message (or none) and count the same payload bytes as reading the
// stream whole.
func FuzzMsgLimit(f *testing.F) {
	msg := func(n uint32) []byte {
		b := make([]byte, 5+int(min(n, 64)))
		binary.BigEndian.PutUint32(b[1:], n)
		return b
	}
	f.Add(append(msg(3), msg(10)...), []byte{1, 2, 3}, 16)
	f.Add(msg(1<<30), []byte{4}, 1<<20)
	f.Add([]byte{0, 0}, []byte{1}, 10)
	f.Fuzz(func(t *testing.T, stream, cuts []byte, max int) {
		if max < 0 {
			max = -max
		}
		var whole msgLimit
		wantOver, wantPayload := whole.feed(stream, max)
		var pieces msgLimit
		var over uint32
		payload := 0
		rest := stream
		for i := 0; len(rest) > 0 && over == 0; i++ {
			n := len(rest)
			if i < len(cuts) {
				n = min(n, int(cuts[i])+1)
			}
			o, p := pieces.feed(rest[:n], max)
			over, payload = o, payload+p
			rest = rest[n:]
		}
		if over != wantOver {
			t.Fatalf("in pieces: oversized message %d, whole: %d", over, wantOver)
		}
		if over == 0 && payload != wantPayload {
			t.Fatalf("in pieces: %d payload bytes, whole: %d", payload, wantPayload)
		}
	})
}

// FuzzGrpcMessage: grpc-message as the relay writes it is printable ASCII
// whatever the status message holds.
func FuzzGrpcMessage(f *testing.F) {
	f.Add("bad input: ü 100% \n second line")
	f.Fuzz(func(t *testing.T, msg string) {
		enc := grpcwire.EncodeMessage(msg)
		if strings.ContainsFunc(enc, func(r rune) bool { return r < ' ' || r > '~' }) {
			t.Fatalf("grpc-message %q for %q is not printable ASCII", enc, msg)
		}
	})
}

// TestResetPolicy: cancelling calls at a client's pace is fine, resetting
// them as fast as frames can be written is not, and answered streams never
// count.
func TestResetPolicy(t *testing.T) {
	p := newResetPolicy(100)
	for i := range 100 {
		if !p.allow(false) {
			t.Fatalf("reset %d of the first 100 refused: the burst is as large as the stream limit", i)
		}
	}
	refused := false
	for range 1000 {
		if !p.allow(false) {
			refused = true
			break
		}
	}
	if !refused {
		t.Fatal("1,100 resets before an answer, back to back, all allowed")
	}
	q := newResetPolicy(100)
	for range 10000 {
		if !q.allow(true) {
			t.Fatal("a stream reset after its answer counted against the client")
		}
	}
}
