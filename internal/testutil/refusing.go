package testutil

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// RefusingBackend is an HTTP/2 server that refuses every call, once its
// request has ended, with RST_STREAM(REFUSED_STREAM): a backend that never
// processed the call, as one at its stream limit says. It answers health
// Watches SERVING, whatever the service, so that a gateway routes to it;
// a caller that never watches (proxy's fake pickers) sees only refusals.
type RefusingBackend struct {
	Addr string
	// code is the reset's: REFUSED_STREAM unless StartResettingBackend
	// said otherwise.
	code http2.ErrCode

	mu      sync.Mutex // guards the field below
	refused int
}

// StartRefusingBackend starts a RefusingBackend on a free loopback port and
// stops it, its connections included, at the end of the test.
func StartRefusingBackend(t testing.TB) *RefusingBackend {
	t.Helper()
	return StartResettingBackend(t, http2.ErrCodeRefusedStream)
}

// StartResettingBackend is StartRefusingBackend resetting with code: with a
// code other than REFUSED_STREAM, a backend that read the whole call and
// failed it without an answer. Refused counts those resets.
func StartResettingBackend(t testing.TB, code http2.ErrCode) *RefusingBackend {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("refusing backend listen: %v", err)
	}
	r := &RefusingBackend{Addr: lis.Addr().String(), code: code}
	var (
		wg      sync.WaitGroup
		connsMu sync.Mutex // guards conns
		conns   []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			connsMu.Lock()
			conns = append(conns, c)
			connsMu.Unlock()
			wg.Go(func() { r.serve(c) })
		}
	})
	t.Cleanup(func() {
		lis.Close()
		connsMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
		wg.Wait()
	})
	return r
}

// Refused is how many streams the backend has refused.
func (r *RefusingBackend) Refused() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refused
}

func (r *RefusingBackend) serve(c net.Conn) {
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if fr.WriteSettings() != nil {
		return
	}
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	// watches are the streams of health Watches, answered and kept open.
	watches := map[uint32]bool{}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			if f.PseudoValue("path") == healthpb.Health_Watch_FullMethodName {
				// SERVING, whatever the service, and the stream stays open.
				watches[f.StreamID] = true
				hbuf.Reset()
				enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: hbuf.Bytes(), EndHeaders: true})
				// A HealthCheckResponse{status: SERVING}, length-prefixed.
				fr.WriteData(f.StreamID, false, []byte{0, 0, 0, 0, 2, 0x08, byte(healthpb.HealthCheckResponse_SERVING)})
				continue
			}
			if f.StreamEnded() {
				r.refuse(fr, f.StreamID)
			}
		case *http2.DataFrame:
			// Refused once the whole request has arrived: every message
			// was read from the client and must be sent again.
			if f.StreamEnded() && !watches[f.StreamID] {
				r.refuse(fr, f.StreamID)
			}
		}
	}
}

func (r *RefusingBackend) refuse(fr *http2.Framer, id uint32) {
	r.mu.Lock()
	r.refused++
	r.mu.Unlock()
	fr.WriteRSTStream(id, r.code)
}
