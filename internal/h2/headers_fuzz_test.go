package h2

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// frames writes a header block as HEADERS and CONTINUATION frames cut at
// the given sizes, then a PING, so that a reader stops where it should.
func frames(t testing.TB, block []byte, cuts []byte) []byte {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	first := true
	for len(block) > 0 || first {
		n := len(block)
		if len(cuts) > 0 {
			n = min(n, int(cuts[0])+1)
			cuts = cuts[1:]
		}
		frag := block[:n]
		block = block[n:]
		var err error
		if first {
			err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: frag, EndHeaders: len(block) == 0})
			first = false
		} else {
			err = fr.WriteContinuation(1, len(block) == 0, frag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.WritePing(false, [8]byte{}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// errClass names what a reader's error makes the connection do.
func errClass(err error) string {
	var se http2.StreamError
	var ge goAwayError
	var ce http2.ConnectionError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &se):
		return "stream " + se.Code.String()
	case errors.As(err, &ge):
		return "conn " + ge.code.String()
	case errors.As(err, &ce):
		return "conn " + http2.ErrCode(ce).String()
	}
	return "other"
}

// FuzzHeaderReader holds the relay's own header block reader to x/net's
// Framer.ReadMetaHeaders: for any block, cut into any CONTINUATIONs, both
// give the same fields, the same truncation and the same kind of error.
func FuzzHeaderReader(f *testing.F) {
	var enc bytes.Buffer
	e := hpack.NewEncoder(&enc)
	for _, hf := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":path", Value: "/a.B/C"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "x"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
		{Name: "trailer", Value: "a, b"}, {Name: "x-big", Value: string(make([]byte, 300))},
	} {
		_ = e.WriteField(hf)
	}
	f.Add(enc.Bytes(), []byte{}, uint16(1024))
	f.Add(enc.Bytes(), []byte{3, 0, 10}, uint16(100))
	f.Add([]byte{0x82, 0x84, 0x40, 0x01, 'A', 0x01, 'b'}, []byte{1}, uint16(4096))
	f.Add([]byte{0x40, 0x01, 'a', 0x01, 'b', 0x82}, []byte{}, uint16(4096))
	f.Fuzz(func(t *testing.T, block, cuts []byte, max uint16) {
		maxList := uint32(max) + 1
		wire := frames(t, block, cuts)

		ref := http2.NewFramer(nil, bytes.NewReader(wire))
		ref.MaxHeaderListSize = maxList
		ref.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		rf, rerr := ref.ReadFrame()

		own := http2.NewFramer(nil, bytes.NewReader(wire))
		own.MaxHeaderListSize = maxList
		hr := newHeaderReader(maxList)
		of, oerr := own.ReadFrame()
		var mh *http2.MetaHeadersFrame
		if oerr == nil {
			mh, oerr = hr.read(own, of.(*http2.HeadersFrame))
		}

		if rc, oc := errClass(rerr), errClass(oerr); rc != oc {
			t.Fatalf("x/net: %s (%v); ours: %s (%v)", rc, rerr, oc, oerr)
		}
		if rerr != nil {
			return
		}
		want := rf.(*http2.MetaHeadersFrame)
		if !slices.Equal(want.Fields, mh.Fields) || want.Truncated != mh.Truncated {
			t.Fatalf("x/net: %v truncated %v; ours: %v truncated %v", want.Fields, want.Truncated, mh.Fields, mh.Truncated)
		}
		// Both stop at the block's end.
		if _, err := own.ReadFrame(); err != nil {
			t.Fatalf("after the block: %v", err)
		}
	})
}
