package grpcweb

import (
	"bytes"
	"encoding/base64"
	"io"
	"testing"
	"testing/iotest"
)

// FuzzTextDecoder: whatever a client sends as grpc-web-text, the decoder
// ends with the standard decoder's bytes (quantum by quantum) or a status,
// never a panic, and the same bytes or the same failure however the body is split into reads.
func FuzzTextDecoder(f *testing.F) {
	for _, s := range []string{"", "AAAA", "YQ==YmM=", "AAAA*AAA", "AA", "====", "YQ==\n"} {
		f.Add([]byte(s), uint8(1))
	}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		whole, werr := io.ReadAll(newTextDecoder(bytes.NewReader(in)))
		var r io.Reader = bytes.NewReader(in)
		if chunk%2 == 1 {
			r = iotest.OneByteReader(r)
		} else {
			r = iotest.HalfReader(r)
		}
		split, serr := io.ReadAll(newTextDecoder(r))
		// On an error, how much came before it depends on the reads.
		if (werr == nil) != (serr == nil) || werr == nil && !bytes.Equal(whole, split) {
			t.Fatalf("read whole: %q, %v; split: %q, %v", whole, werr, split, serr)
		}
		if werr != nil {
			if _, ok := werr.(*statusError); !ok {
				t.Fatalf("error %v is not a status", werr)
			}
			return
		}
		// The reference: each 4-character quantum on its own.
		var want []byte
		for i := 0; i+4 <= len(in); i += 4 {
			b, err := base64.StdEncoding.DecodeString(string(in[i : i+4]))
			if err != nil {
				t.Fatalf("decoded %q, which the standard decoder refuses at %d: %v", in, i, err)
			}
			want = append(want, b...)
		}
		if len(in)%4 != 0 || !bytes.Equal(whole, want) {
			t.Fatalf("decoded %q to %q, want %q", in, whole, want)
		}
	})
}

// FuzzFrameChecker: any request stream is passed whole or ended with a
// status, never a panic; what passes is made of whole frames within the
// limit with flags 0 or 1.
func FuzzFrameChecker(f *testing.F) {
	f.Add(msgFrame(0, []byte("abc")), uint16(8))
	f.Add(msgFrame(0x80, nil), uint16(8))
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0xff}, uint16(8))
	f.Add(append(msgFrame(1, []byte("ab")), 0, 0), uint16(2))
	f.Fuzz(func(t *testing.T, in []byte, max uint16) {
		got, err := io.ReadAll(newFrameChecker(iotest.HalfReader(bytes.NewReader(in)), int(max)))
		if err != nil {
			if _, ok := err.(*statusError); !ok {
				t.Fatalf("error %v is not a status", err)
			}
			return
		}
		if !bytes.Equal(got, in) {
			t.Fatalf("passed %x, not the %x sent", got, in)
		}
		for p := in; len(p) > 0; {
			if len(p) < 5 || p[0] > 1 {
				t.Fatalf("passed a bad prefix: %x", p)
			}
			n := int(p[1])<<24 | int(p[2])<<16 | int(p[3])<<8 | int(p[4])
			if n > int(max) || n > len(p)-5 {
				t.Fatalf("passed a frame of %d bytes (limit %d, %d left)", n, max, len(p)-5)
			}
			p = p[5+n:]
		}
	})
}
