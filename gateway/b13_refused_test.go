package gateway_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
)

// TestB13_RefusedStreamGoesToAnotherBackendThroughGateway: a routable
// backend that refuses the stream (REFUSED_STREAM: it never processed the
// call) has the call sent to the other backend of its route, every request
// message included, byte-identical; the client sees no error.
func TestB13_RefusedStreamGoesToAnotherBackendThroughGateway(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		good, ref := testutil.StartBackend(t), testutil.StartRefusingBackend(t)
		h := e.start(t, config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{ref.Addr, good.Addr}}}})
		h.routable(t, testutil.TestService, 2)
		cc := testutil.Dial(t, h.addr)
		parts := [][]byte{[]byte("one "), {}, bytes.Repeat([]byte("x"), 1000)}
		want := bytes.Join(parts, nil)
		// Round robin starts anywhere: within a few calls some go to the
		// refusing backend first.
		for i := 0; i < 10 || ref.Refused() == 0; i++ {
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
				t.Fatalf("call %d (%d refused so far): %v", i, ref.Refused(), err)
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
		t.Logf("%d streams refused, every call answered by the other backend", ref.Refused())
	})
}
