package grpcweb

import (
	"bytes"
	"encoding/base64"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"google.golang.org/grpc/codes"
)

func TestTextDecoder(t *testing.T) {
	enc := base64.StdEncoding.EncodeToString
	long := bytes.Repeat([]byte("0123456789"), 2000)
	for _, tc := range []struct {
		name string
		in   string
		want []byte
		// code is the status that ends the stream; OK: it decodes whole.
		code codes.Code
	}{
		{"empty", "", nil, codes.OK},
		{"one chunk", enc([]byte("hello")), []byte("hello"), codes.OK},
		{"chunks padded each", enc([]byte("a")) + enc([]byte("bc")) + enc([]byte("def")) + enc([]byte("g")), []byte("abcdefg"), codes.OK},
		{"longer than the buffer", enc(long), long, codes.OK},
		{"bad character", "AAAA*AAA", nil, codes.InvalidArgument},
		{"line break", "AAAA\nAAA", nil, codes.InvalidArgument},
		{"unfinished quantum", "AAAAAA", nil, codes.InvalidArgument},
		{"padding alone", "====", nil, codes.InvalidArgument},
		{"url alphabet", "-_-_", nil, codes.InvalidArgument},
	} {
		for _, split := range []bool{false, true} {
			name := tc.name
			if split {
				name += "/byte by byte"
			}
			t.Run(name, func(t *testing.T) {
				var r io.Reader = strings.NewReader(tc.in)
				if split {
					r = iotest.OneByteReader(r)
				}
				got, err := io.ReadAll(newTextDecoder(r))
				if tc.code == codes.OK {
					if err != nil || !bytes.Equal(got, tc.want) {
						t.Fatalf("got %d bytes %q, %v; want %q", len(got), got[:min(len(got), 40)], err, tc.want[:min(len(tc.want), 40)])
					}
					return
				}
				if se, ok := err.(*statusError); !ok || se.code != tc.code {
					t.Fatalf("got %v, want a %v status", err, tc.code)
				}
			})
		}
	}
}

// TestTextDecoderPassesReadErrors: a broken connection is not a bad body.
func TestTextDecoderPassesReadErrors(t *testing.T) {
	_, err := io.ReadAll(newTextDecoder(io.MultiReader(strings.NewReader("AAAA"), iotest.ErrReader(io.ErrUnexpectedEOF))))
	if err != io.ErrUnexpectedEOF {
		t.Fatalf("got %v, want the reader's error", err)
	}
}
