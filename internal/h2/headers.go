package h2

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headerReader turns HEADERS and their CONTINUATION frames into
// MetaHeadersFrames, with the checks x/net's Framer.ReadMetaHeaders makes
// (field names and values, pseudo-headers first and known, the header
// list size, a CONTINUATION flood) but without its allocations per block:
// one emit function for the connection's life, and the frame and its
// first fields in one allocation. A relayed call decodes three header
// blocks, so this is on the hot path.
type headerReader struct {
	dec *hpack.Decoder
	max uint32

	// The block being decoded.
	mh                  *http2.MetaHeadersFrame
	remain, trailRemain uint32
	sawRegular          bool
	invalid             error
}

// metaFrame is a MetaHeadersFrame with room for the fields of a usual
// gRPC header block.
type metaFrame struct {
	mh  http2.MetaHeadersFrame
	arr [12]hpack.HeaderField
}

func newHeaderReader(maxList uint32) *headerReader {
	r := &headerReader{max: maxList}
	r.dec = hpack.NewDecoder(4096, r.emit)
	r.dec.SetMaxStringLength(int(maxList))
	return r
}

func (r *headerReader) emit(hf hpack.HeaderField) {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		// The value stays out of the error: it may be a secret.
		r.invalid = fmt.Errorf("invalid header field value for %q", hf.Name)
	}
	if strings.HasPrefix(hf.Name, ":") {
		if r.sawRegular {
			r.invalid = errors.New("pseudo header field after regular")
		}
	} else {
		r.sawRegular = true
		if !validFieldName(hf.Name) {
			r.invalid = fmt.Errorf("invalid header field name %q", hf.Name)
		}
	}
	if r.invalid != nil {
		r.dec.SetEmitEnabled(false)
		return
	}
	remain := &r.remain
	size := hf.Size()
	if hf.Name == "trailer" {
		// Counted as the fields it announces, as x/net counts it.
		remain = &r.trailRemain
		n := uint32(strings.Count(hf.Value, ",") + 1)
		size = uint32(len(hf.Value)) - n + 1 + n*hpack.HeaderField{}.Size()
	}
	if size > *remain {
		r.dec.SetEmitEnabled(false)
		r.mh.Truncated = true
		r.remain, r.trailRemain = 0, 0
		return
	}
	*remain -= size
	r.mh.Fields = append(r.mh.Fields, hf)
}

// validFieldName: a token, in lower case, as HTTP/2 requires on the wire.
func validFieldName(v string) bool {
	if v == "" {
		return false
	}
	for _, r := range v {
		if !httpguts.IsTokenRune(r) || ('A' <= r && r <= 'Z') {
			return false
		}
	}
	return true
}

// read decodes the header block that hf starts, reading its CONTINUATION
// frames from fr. Its errors are those of x/net's: a connection error
// (goAwayError) for a broken block, an http2.StreamError for fields the
// stream cannot have.
func (r *headerReader) read(fr *http2.Framer, hf *http2.HeadersFrame) (*http2.MetaHeadersFrame, error) {
	m := &metaFrame{}
	m.mh.HeadersFrame = hf
	m.mh.Fields = m.arr[:0]
	r.mh, r.remain, r.trailRemain, r.sawRegular, r.invalid = &m.mh, r.max, r.max, false, nil
	defer func() { r.mh = nil }()
	r.dec.SetEmitEnabled(true)
	frag, ended := hf.HeaderBlockFragment(), hf.HeadersEnded()
	for {
		// A block far over the limit, or going on after an invalid field
		// (whose size is no longer counted), is not decoded: the
		// connection ends, as a CONTINUATION flood must.
		if int64(len(frag)) > 2*int64(r.remain+r.trailRemain) {
			return nil, connError(http2.ErrCodeProtocol, "header list too large")
		}
		if r.invalid != nil {
			return nil, connError(http2.ErrCodeProtocol, "CONTINUATION after an invalid header field: "+r.invalid.Error())
		}
		if _, err := r.dec.Write(frag); err != nil {
			return nil, connError(http2.ErrCodeCompression, "header block: "+err.Error())
		}
		if ended {
			break
		}
		f, err := fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		// The framer allows nothing but the block's CONTINUATION here.
		cf := f.(*http2.ContinuationFrame)
		frag, ended = cf.HeaderBlockFragment(), cf.HeadersEnded()
	}
	if err := r.dec.Close(); err != nil {
		return nil, connError(http2.ErrCodeCompression, "header block: "+err.Error())
	}
	if r.invalid != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: r.invalid}
	}
	if err := checkPseudos(m.mh.PseudoFields()); err != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	return &m.mh, nil
}

// checkPseudos: known pseudo-headers, each once, of a request or of a
// response but not both.
func checkPseudos(pf []hpack.HeaderField) error {
	var req, resp bool
	for i, hf := range pf {
		switch hf.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			req = true
		case ":status":
			resp = true
		default:
			return fmt.Errorf("invalid pseudo-header %q", hf.Name)
		}
		for _, prev := range pf[:i] {
			if prev.Name == hf.Name {
				return fmt.Errorf("duplicate pseudo-header %q", hf.Name)
			}
		}
	}
	if req && resp {
		return errors.New("mix of request and response pseudo headers")
	}
	return nil
}
