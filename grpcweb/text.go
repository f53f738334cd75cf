package grpcweb

import (
	"bytes"
	"encoding/base64"
	"io"

	"google.golang.org/grpc/codes"
)

// textDecoder decodes the body of a grpc-web-text request, base64, as it
// arrives. A client may send the stream in chunks each padded on its own
// ("AA==" in the middle of the body), so padding may end any 4-character
// quantum and decoding goes on after it. It holds at most one read of
// input and its decoding: a client cannot make it buffer more.
type textDecoder struct {
	r io.Reader
	// in holds base64 read and not yet decoded: in[:n], at most three
	// characters of an unfinished quantum between reads.
	in  [4096]byte
	n   int
	out [3072]byte
	// pending is decoded bytes not yet returned, a slice of out.
	pending []byte
	err     error
}

func newTextDecoder(r io.Reader) *textDecoder { return &textDecoder{r: r} }

func (d *textDecoder) Read(p []byte) (int, error) {
	for len(d.pending) == 0 {
		if d.err != nil {
			return 0, d.err
		}
		m, err := d.r.Read(d.in[d.n:])
		d.n += m
		whole := d.n / 4 * 4
		out, derr := decodeQuanta(d.out[:0], d.in[:whole])
		d.pending = out
		d.n = copy(d.in[:], d.in[whole:d.n])
		switch {
		case derr != nil:
			d.err = derr
		case err == io.EOF && d.n > 0:
			d.err = errorf(codes.InvalidArgument, "grpc-web: the base64 request body ends with %d characters of an unfinished quantum", d.n)
		case err != nil:
			d.err = err
		}
	}
	n := copy(p, d.pending)
	d.pending = d.pending[n:]
	return n, nil
}

// decodeQuanta appends to dst the decoding of src, whole 4-character
// quanta of which any may end in padding.
func decodeQuanta(dst, src []byte) ([]byte, error) {
	// The standard decoder skips line breaks, which would shift the
	// quanta: they are not base64 here.
	if bytes.ContainsAny(src, "\r\n") {
		return dst, errorf(codes.InvalidArgument, "grpc-web: the request body is not base64: it holds a line break")
	}
	for len(src) > 0 {
		// A run up to and including the first padded quantum decodes in
		// one call.
		end := len(src)
		if i := bytes.IndexByte(src, '='); i >= 0 {
			end = (i/4 + 1) * 4
		}
		n := len(dst)
		dst = dst[:n+base64.StdEncoding.DecodedLen(end)]
		k, err := base64.StdEncoding.Decode(dst[n:], src[:end])
		if err != nil {
			return dst[:n], errorf(codes.InvalidArgument, "grpc-web: the request body is not base64: %v", err)
		}
		dst = dst[:n+k]
		src = src[end:]
	}
	return dst, nil
}
