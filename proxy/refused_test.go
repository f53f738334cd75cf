package proxy_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy"
)

// refuser is an HTTP/2 server that answers every stream, once its request
// has ended, with RST_STREAM(REFUSED_STREAM): a backend that never
// processed the call, as one at its stream limit says.
type refuser struct {
	lis net.Listener
	wg  sync.WaitGroup
	mu  sync.Mutex
	// refused counts the streams refused.
	refused int
}

func startRefuser(t *testing.T) *refuser {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &refuser{lis: lis}
	var conns []net.Conn
	var connsMu sync.Mutex
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			connsMu.Lock()
			conns = append(conns, c)
			connsMu.Unlock()
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		connsMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *refuser) serve(c net.Conn) {
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	fr := http2.NewFramer(c, c)
	if fr.WriteSettings() != nil {
		return
	}
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
		case *http2.HeadersFrame:
			if f.StreamEnded() {
				r.refuse(fr, f.StreamID)
			}
		case *http2.DataFrame:
			// Refused once the whole request has arrived: every message
			// was read from the client and must be sent again.
			if f.StreamEnded() {
				r.refuse(fr, f.StreamID)
			}
		}
	}
}

func (r *refuser) refuse(fr *http2.Framer, id uint32) {
	r.mu.Lock()
	r.refused++
	r.mu.Unlock()
	fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
}

func (r *refuser) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refused
}

// TestB13_RefusedStreamGoesToAnotherBackend: a backend that refuses the
// stream (REFUSED_STREAM: it never processed the call) has the call sent to
// the next backend, every request message included, byte-identical; a call
// whose messages overflow the replay buffer is not sent twice. The first
// half runs against every engine through a whole gateway as
// gateway.TestB13_RefusedStreamGoesToAnotherBackendThroughGateway; the
// replay buffer is not in the config file, so the second stays here.
func TestB13_RefusedStreamGoesToAnotherBackend(t *testing.T) {
	good := testutil.StartBackend(t)
	ref := startRefuser(t)
	refusedOutcome := make(chan proxy.Outcome, 8)
	goodUp := upstream{testutil.Dial(t, good.Addr), make(chan proxy.Outcome, 8)}
	refUp := upstream{testutil.Dial(t, ref.lis.Addr().String()), refusedOutcome}

	t.Run("replayed", func(t *testing.T) {
		sp := &seqPicker{ups: []proxy.Upstream{refUp, goodUp}}
		p, err := proxy.New(proxy.Config{}, sp, nil)
		if err != nil {
			t.Fatal(err)
		}
		gw := testutil.Dial(t, serve(t, grpc.NewServer(p.ServerOptions()...)))
		good.Drain()
		cs, err := testutil.RawStream(ctxT(t), gw, "/test.Svc/Collect")
		if err != nil {
			t.Fatal(err)
		}
		parts := [][]byte{[]byte("one "), {}, bytes.Repeat([]byte("x"), 1000)}
		for _, m := range parts {
			if err := cs.SendMsg(&m); err != nil {
				t.Fatal(err)
			}
		}
		cs.CloseSend()
		var got []byte
		if err := cs.RecvMsg(&got); err != nil {
			t.Fatalf("call after a refused stream: %v", err)
		}
		if want := bytes.Join(parts, nil); !bytes.Equal(got, want) {
			t.Fatalf("the next backend got %d bytes, want the %d sent", len(got), len(want))
		}
		if err := cs.RecvMsg(&got); !errors.Is(err, io.EOF) {
			t.Fatalf("end of call: %v", err)
		}
		if c := good.NextCall(t); len(c.Messages) != 3 {
			t.Fatalf("the next backend got %d messages, want 3", len(c.Messages))
		}
		if ref.count() == 0 || len(sp.tried) != 2 {
			t.Fatalf("refused %d streams, %d picks; want the call refused once, then picked again", ref.count(), len(sp.tried))
		}
		if o := <-refusedOutcome; o.Origin != proxy.Local {
			t.Fatalf("refusing backend's outcome %+v, want a local failure", o)
		}
	})

	t.Run("too big to replay", func(t *testing.T) {
		sp := &seqPicker{ups: []proxy.Upstream{refUp, goodUp}}
		p, err := proxy.New(proxy.Config{ReplayBufferBytes: 100}, sp, nil)
		if err != nil {
			t.Fatal(err)
		}
		gw := testutil.Dial(t, serve(t, grpc.NewServer(p.ServerOptions()...)))
		_, err = testutil.Unary(ctxT(t), gw, "/test.Svc/Echo", bytes.Repeat([]byte("y"), 1000))
		if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "REFUSED_STREAM") {
			t.Fatalf("a refused call over the replay buffer: %v, want UNAVAILABLE from the refusal", err)
		}
		if len(sp.tried) != 1 {
			t.Fatalf("%d picks, want 1: a call that was not kept whole is not sent again", len(sp.tried))
		}
	})
}
