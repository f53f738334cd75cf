package gateway_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
)

// TestB16_NonUTF8MethodWithStockClient is the crash B16 was written for: a
// method name that is not UTF-8 on a routed service reached the metrics
// labels, which panic on it, and the panic took the whole gateway down.
func TestB16_NonUTF8MethodWithStockClient(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		h := e.start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}}})
		h.routable(t, testutil.TestService, 1)
		cc := testutil.Dial(t, h.addr)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()

		_, err := testutil.Unary(ctx, cc, "/test.Svc/\xff", []byte("x"))
		if _, ok := status.FromError(err); !ok || err == nil {
			t.Fatalf("non-UTF-8 method: got %v, want a gRPC status", err)
		}
		if got, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("still here")); err != nil || string(got) != "still here" {
			t.Fatalf("a normal call after it: got %q, %v", got, err)
		}
	})
}

// h2conn is a client that speaks HTTP/2 frame by frame, so that a test can
// send what no gRPC library would.
type h2conn struct {
	t    *testing.T
	nc   net.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	buf  bytes.Buffer
	next uint32 // the next client stream id
	// broken is set when a write failed: the gateway has closed the
	// connection, which is an answer in itself.
	broken bool
}

// h2Deadline bounds every case: a gateway that neither answers nor ends the
// connection by then hangs, which B16 forbids.
const h2Deadline = 10 * time.Second

func dialH2(t *testing.T, addr string) *h2conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if err := nc.SetDeadline(time.Now().Add(h2Deadline)); err != nil {
		t.Fatal(err)
	}
	c := &h2conn{t: t, nc: nc, fr: http2.NewFramer(nc, nc), next: 1}
	c.fr.AllowIllegalWrites = true
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.buf)
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	c.check(c.fr.WriteSettings())
	return c
}

func (c *h2conn) check(err error) {
	if err != nil && !c.broken {
		c.t.Logf("write: %v", err)
		c.broken = true
	}
}

func (c *h2conn) stream() uint32 {
	id := c.next
	c.next += 2
	return id
}

// headers sends one header block, split into CONTINUATION frames when it is
// over the default maximum frame size.
func (c *h2conn) headers(id uint32, fields []hpack.HeaderField, endStream bool) {
	c.buf.Reset()
	for _, f := range fields {
		c.check(c.enc.WriteField(f))
	}
	block := c.buf.Bytes()
	const maxFrame = 16 << 10
	first := block[:min(len(block), maxFrame)]
	block = block[len(first):]
	c.check(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: endStream, EndHeaders: len(block) == 0}))
	for len(block) > 0 {
		chunk := block[:min(len(block), maxFrame)]
		block = block[len(chunk):]
		c.check(c.fr.WriteContinuation(id, len(block) == 0, chunk))
	}
}

func (c *h2conn) data(id uint32, endStream bool, p []byte) { c.check(c.fr.WriteData(id, endStream, p)) }

// request is a valid gRPC request's header block for path, with extra
// fields added.
func request(path string, extra ...hpack.HeaderField) []hpack.HeaderField {
	return append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "http"},
		{Name: ":path", Value: path},
		{Name: ":authority", Value: "healthgate.test"},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"},
	}, extra...)
}

// message is a gRPC length-prefixed message that claims length bytes and
// carries payload.
func message(compressed bool, length uint32, payload []byte) []byte {
	b := make([]byte, 5, 5+len(payload))
	if compressed {
		b[0] = 1
	}
	binary.BigEndian.PutUint32(b[1:], length)
	return append(b, payload...)
}

func validMessage(s string) []byte { return message(false, uint32(len(s)), []byte(s)) }

// h2Result is how the gateway answered on one connection.
type h2Result struct {
	status map[uint32]string        // grpc-status per stream
	rst    map[uint32]http2.ErrCode // RST_STREAM per stream
	goAway *http2.GoAwayFrame
	// closed is the read error when the connection ended without a
	// GOAWAY: grpc-go closes it at once on some connection errors (a
	// WINDOW_UPDATE of 0 on stream 0).
	closed error
}

// connError reports whether the gateway ended the whole connection.
func (r *h2Result) connError() bool { return r.goAway != nil || r.closed != nil }

func (r *h2Result) String() string {
	s := fmt.Sprintf("statuses %v, resets %v", r.status, r.rst)
	if r.goAway != nil {
		s += fmt.Sprintf(", GOAWAY %v %q", r.goAway.ErrCode, r.goAway.DebugData())
	}
	if r.closed != nil {
		s += fmt.Sprintf(", connection closed (%v)", r.closed)
	}
	return s
}

// read takes frames until every stream in watch has ended, or the
// connection has: whichever comes first. The connection's deadline turns a
// hang into a failure.
func (c *h2conn) read(watch ...uint32) *h2Result {
	c.t.Helper()
	r := &h2Result{status: map[uint32]string{}, rst: map[uint32]http2.ErrCode{}}
	open := map[uint32]bool{}
	for _, id := range watch {
		open[id] = true
	}
	for len(open) > 0 {
		f, err := c.fr.ReadFrame()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			c.t.Fatalf("the gateway hung: within %s it neither ended streams %v nor the connection; so far %v", h2Deadline, watch, r)
		}
		if err != nil {
			r.closed = err
			return r
		}
		id := f.Header().StreamID
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.check(c.fr.WriteSettingsAck())
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.check(c.fr.WritePing(true, f.Data))
			}
		case *http2.MetaHeadersFrame:
			if v := f.PseudoValue("status"); v != "" && v != "200" {
				c.t.Logf("stream %d: HTTP status %s", id, v)
			}
			for _, hf := range f.Fields {
				if hf.Name == "grpc-status" {
					r.status[id] = hf.Value
				}
			}
			if f.StreamEnded() {
				delete(open, id)
			}
		case *http2.DataFrame:
			if f.StreamEnded() {
				delete(open, id)
			}
		case *http2.RSTStreamFrame:
			r.rst[id] = f.ErrCode
			delete(open, id)
		case *http2.GoAwayFrame:
			r.goAway = f
			return r
		}
	}
	return r
}

func TestB16_RawHTTP2MalformedRequests(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		h := e.start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}}})
		h.routable(t, testutil.TestService, 1)
		cc := testutil.Dial(t, h.addr)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("warm up")); err != nil {
			t.Fatal(err)
		}
		baseline := runtime.NumGoroutine()

		// long is a name far over the metrics' 128-byte label bound that still
		// fits the default 16 KiB header list; huge is over that list limit,
		// which the gateway advertises and enforces (B64).
		long := strings.Repeat("m", 12<<10)
		huge := strings.Repeat("m", 64<<10)
		// send writes a case's frames and returns the streams whose answer the
		// case waits for; a stream the gateway may rightly ignore is not one.
		type sendFunc func(c *h2conn) []uint32
		// call is a request on a new stream: headers, then each message in its
		// own DATA frame, the last one ending the stream.
		call := func(fields []hpack.HeaderField, msgs ...[]byte) sendFunc {
			return func(c *h2conn) []uint32 {
				id := c.stream()
				c.headers(id, fields, len(msgs) == 0)
				for i, m := range msgs {
					c.data(id, i == len(msgs)-1, m)
				}
				return []uint32{id}
			}
		}
		timeout := func(v string) sendFunc {
			return call(request("/test.Svc/Echo", hpack.HeaderField{Name: "grpc-timeout", Value: v}), validMessage("x"))
		}
		tests := []struct {
			name string
			send sendFunc
			// wantStatus: the request is well-formed HTTP/2, so the gateway
			// must answer it with a gRPC status rather than reset it or drop
			// the connection.
			wantStatus bool
		}{
			{"method not UTF-8 on a routed service", call(request("/test.Svc/\xff\xfe"), validMessage("x")), true},
			{"service not UTF-8", call(request("/te\xffst.Svc/Echo"), validMessage("x")), true},
			{"path without leading slash", call(request("test.Svc/Echo"), validMessage("x")), true},
			{"path without method", call(request("/test.Svc"), validMessage("x")), true},
			{"path with empty method", call(request("/test.Svc/"), validMessage("x")), true},
			// An empty :path is malformed HTTP/2 (RFC 9113 8.3.1): a
			// stream error is as clear an answer as a gRPC status.
			{"empty path", call(request(""), validMessage("x")), false},
			{"12 KiB method on a routed service", call(request("/test.Svc/"+long), validMessage("x")), true},
			{"12 KiB path without slashes", call(request(long), validMessage("x")), true},
			// Over the advertised MAX_HEADER_LIST_SIZE: an HTTP/2 error, stream
			// or connection, is the answer.
			{"64 KiB method, over the header list limit", call(request("/test.Svc/"+huge), validMessage("x")), false},
			{"grpc-timeout abc", timeout("abc"), true},
			{"grpc-timeout 99999999999H", timeout("99999999999H"), true},
			{"grpc-timeout -1S", timeout("-1S"), true},
			{"grpc-timeout 1n", timeout("1n"), true},
			{"grpc-timeout empty", timeout(""), true},
			{"content-type not grpc", call(append(request("/test.Svc/Echo")[:4], hpack.HeaderField{Name: "content-type", Value: "text/html"}), validMessage("x")), true},
			// No END_STREAM: the gateway must answer from the prefix alone,
			// not wait for the 5 MiB.
			{"length prefix over the max message size", call(request("/test.Svc/Echo"), message(false, 5<<20, []byte("abc"))), true},
			{"length prefix longer than the data, then END_STREAM", call(request("/test.Svc/Echo"), message(false, 100, []byte("only ten b"))), true},
			{"half a length prefix, then END_STREAM", call(request("/test.Svc/Echo"), []byte{0, 0}), true},
			{"compressed flag without grpc-encoding", call(request("/test.Svc/Echo"), message(true, 3, []byte("abc"))), true},
			{"unknown grpc-encoding", call(request("/test.Svc/Echo", hpack.HeaderField{Name: "grpc-encoding", Value: "nope"}), message(true, 3, []byte("abc"))), true},
			{"DATA before HEADERS", func(c *h2conn) []uint32 {
				c.data(c.stream(), true, validMessage("x"))
				return nil
			}, false},
			{"HEADERS on an even stream id", func(c *h2conn) []uint32 {
				c.headers(2, request("/test.Svc/Echo"), false)
				c.data(2, true, validMessage("x"))
				return []uint32{2}
			}, false},
			{"RST_STREAM right after HEADERS", func(c *h2conn) []uint32 {
				id := c.stream()
				c.headers(id, request("/test.Svc/Block"), false)
				c.check(c.fr.WriteRSTStream(id, http2.ErrCodeCancel))
				return nil
			}, false},
			{"WINDOW_UPDATE of 0 on the connection", func(c *h2conn) []uint32 {
				c.check(c.fr.WriteWindowUpdate(0, 0))
				return nil
			}, false},
			{"WINDOW_UPDATE of 0 on a stream", func(c *h2conn) []uint32 {
				id := c.stream()
				c.headers(id, request("/test.Svc/Echo"), false)
				c.check(c.fr.WriteWindowUpdate(id, 0))
				return []uint32{id}
			}, false},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				c := dialH2(t, h.addr)
				watch := tt.send(c)
				// A valid call on the same connection: it must be served
				// unless the gateway ended the connection.
				probe := c.stream()
				c.headers(probe, request("/test.Svc/Echo"), false)
				c.data(probe, true, validMessage("probe"))
				r := c.read(append(watch, probe)...)
				t.Logf("answer: %v", r)
				if r.connError() {
					if tt.wantStatus {
						t.Fatalf("the gateway ended the connection over a well-formed HTTP/2 request: %v", r)
					}
					return
				}
				for _, id := range watch {
					_, gotStatus := r.status[id]
					_, gotRST := r.rst[id]
					if tt.wantStatus && !gotStatus {
						t.Fatalf("stream %d ended without a grpc-status: %v", id, r)
					}
					if !gotStatus && !gotRST {
						t.Fatalf("stream %d ended with neither a grpc-status nor RST_STREAM: %v", id, r)
					}
				}
				if got := r.status[probe]; got != "0" {
					t.Fatalf("the valid call after it on the same connection: grpc-status %q, want 0; %v", got, r)
				}
			})
		}

		if got, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("still here")); err != nil || string(got) != "still here" {
			t.Fatalf("a normal call after the malformed ones: got %q, %v", got, err)
		}
		// Every raw connection is closed by its subtest's cleanup; what the
		// gateway ran for them must end too.
		testutil.WaitFor(t, 10*time.Second, fmt.Sprintf("goroutines to return to %d", baseline), func() bool {
			return runtime.NumGoroutine() <= baseline
		})
	})
}
