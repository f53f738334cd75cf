package gateway_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
)

// refusingBackend is an HTTP/2 server that answers its health Watches
// SERVING, so that the gateway routes to it, and refuses every other
// stream, once its request has ended, with RST_STREAM(REFUSED_STREAM): a
// backend that never processed the call, as one at its stream limit says.
type refusingBackend struct {
	addr string

	mu      sync.Mutex // guards the field below
	refused int
}

func startRefusingBackend(t *testing.T) *refusingBackend {
	t.Helper()
	lis := listenOn(t, "127.0.0.1:0")
	r := &refusingBackend{addr: lis.Addr().String()}
	var (
		wg      sync.WaitGroup
		connsMu sync.Mutex
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

func (r *refusingBackend) serve(c net.Conn) {
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

func (r *refusingBackend) refuse(fr *http2.Framer, id uint32) {
	r.mu.Lock()
	r.refused++
	r.mu.Unlock()
	fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
}

func (r *refusingBackend) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refused
}

// TestB13_RefusedStreamGoesToAnotherBackendThroughGateway: a routable
// backend that refuses the stream (REFUSED_STREAM: it never processed the
// call) has the call sent to the other backend of its route, every request
// message included, byte-identical; the client sees no error.
func TestB13_RefusedStreamGoesToAnotherBackendThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		good, ref := testutil.StartBackend(t), startRefusingBackend(t)
		h := e.start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{ref.addr, good.Addr}}}})
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		parts := [][]byte{[]byte("one "), {}, bytes.Repeat([]byte("x"), 1000)}
		want := bytes.Join(parts, nil)
		// Round robin starts anywhere: within a few calls some go to the
		// refusing backend first.
		for i := 0; i < 10 || ref.count() == 0; i++ {
			if i == 100 {
				t.Fatal("100 calls and not one was sent to the refusing backend")
			}
			cs, err := testutil.RawStream(ctxT(t), cc, "/test.Svc/Collect")
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range parts {
				if err := cs.SendMsg(&m); err != nil {
					t.Fatal(err)
				}
			}
			cs.CloseSend()
			var got []byte
			if err := cs.RecvMsg(&got); err != nil {
				t.Fatalf("call %d (%d refused so far): %v", i, ref.count(), err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("call %d: the backend got %d bytes, want the %d sent", i, len(got), len(want))
			}
			if err := cs.RecvMsg(&got); !errors.Is(err, io.EOF) {
				t.Fatalf("call %d: end of call: %v", i, err)
			}
			if c := good.NextCall(t); len(c.Messages) != 3 {
				t.Fatalf("call %d: the backend got %d messages, want 3", i, len(c.Messages))
			}
		}
		t.Logf("%d streams refused, every call answered by the other backend", ref.count())
	})
}
