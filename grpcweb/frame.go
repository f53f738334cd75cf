package grpcweb

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
)

// The message framing of gRPC and gRPC-Web is the same: each message is a
// flag byte, a 4-byte big-endian length and that many bytes. gRPC-Web adds
// one frame of its own, last in a response: flag 0x80 (trailers), whose
// payload is the trailers as HTTP/1 header lines ("grpc-status: 0\r\n").

const (
	// flagCompressed marks a message compressed with the call's
	// grpc-encoding.
	flagCompressed = 0x01
	// flagTrailers marks gRPC-Web's trailer frame.
	flagTrailers = 0x80
	prefixLen    = 5
)

// statusError is a call's end that the bridge decides itself.
type statusError struct {
	code codes.Code
	msg  string
}

func (e *statusError) Error() string { return fmt.Sprintf("grpcweb: %s: %s", e.code, e.msg) }

func errorf(c codes.Code, format string, args ...any) *statusError {
	return &statusError{code: c, msg: fmt.Sprintf(format, args...)}
}

// frameChecker passes a client's message stream through and checks each
// message's prefix as it goes by: the flag must be 0 or 1 (a request has
// no trailer frame) and the length at most max. It keeps no message, so a
// client cannot make it hold more than the read at hand. The first
// violation ends the stream with a status the bridge answers with; a stream
// that ends inside a frame is one too.
type frameChecker struct {
	r   io.Reader
	max int
	hdr [prefixLen]byte
	// have is how many bytes of hdr have been read.
	have int
	// remain is how many bytes of the current message are still to come.
	remain uint32

	mu  sync.Mutex // guards err: the transport reads, the handler asks
	err *statusError
}

func newFrameChecker(r io.Reader, max int) *frameChecker {
	return &frameChecker{r: r, max: max}
}

func (c *frameChecker) Read(p []byte) (int, error) {
	if err := c.failed(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	if ferr := c.feed(p[:n]); ferr != nil {
		c.fail(ferr)
		return 0, ferr
	}
	if err == io.EOF && (c.have > 0 || c.remain > 0) {
		ferr := errorf(codes.InvalidArgument, "grpc-web: the request ended inside a message")
		c.fail(ferr)
		return n, ferr
	}
	if err != nil && err != io.EOF {
		// The client's connection broke, or its body did not decode.
		var se *statusError
		if e, ok := err.(*statusError); ok {
			se = e
		} else {
			se = errorf(codes.Canceled, "grpc-web: reading the request: %v", err)
		}
		c.fail(se)
		return n, se
	}
	return n, err
}

// feed checks the prefixes in p.
func (c *frameChecker) feed(p []byte) *statusError {
	for len(p) > 0 {
		if c.remain > 0 {
			n := min(uint32(len(p)), c.remain)
			c.remain -= n
			p = p[n:]
			continue
		}
		n := copy(c.hdr[c.have:], p)
		c.have += n
		p = p[n:]
		if c.have < prefixLen {
			return nil
		}
		c.have = 0
		if f := c.hdr[0]; f&^flagCompressed != 0 {
			return errorf(codes.InvalidArgument, "grpc-web: a request message has flags 0x%02x; only 0x00 and 0x01 (compressed) are allowed", f)
		}
		l := binary.BigEndian.Uint32(c.hdr[1:])
		if int64(l) > int64(c.max) {
			return errorf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", l, c.max)
		}
		c.remain = l
	}
	return nil
}

func (c *frameChecker) fail(err *statusError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
	}
}

// failed is the status the request stream ended with, or nil.
func (c *frameChecker) failed() *statusError {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// trailerFrame is gRPC-Web's trailer frame: the status and the other
// trailers as "name: value\r\n" lines, names in lower case, in a frame
// flagged 0x80.
func trailerFrame(code codes.Code, msg string, trailers http.Header) []byte {
	var b strings.Builder
	b.WriteString("grpc-status: ")
	b.WriteString(strconv.Itoa(int(code)))
	b.WriteString("\r\n")
	if msg != "" {
		b.WriteString("grpc-message: ")
		b.WriteString(msg)
		b.WriteString("\r\n")
	}
	names := make([]string, 0, len(trailers))
	for k := range trailers {
		names = append(names, k)
	}
	// Sorted, so that the same trailers make the same bytes.
	sort.Strings(names)
	for _, k := range names {
		lk := strings.ToLower(k)
		if lk == "grpc-status" || lk == "grpc-message" {
			continue
		}
		for _, v := range trailers[k] {
			b.WriteString(lk)
			b.WriteString(": ")
			b.WriteString(v)
			b.WriteString("\r\n")
		}
	}
	out := make([]byte, prefixLen, prefixLen+b.Len())
	out[0] = flagTrailers
	binary.BigEndian.PutUint32(out[1:], uint32(b.Len()))
	return append(out, b.String()...)
}
