package testutil

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Observed is everything a client can see of a call's outcome, so that a
// test can compare a call through the gateway with the same call made to
// the backend directly.
type Observed struct {
	Header, Trailer metadata.MD
	Code            codes.Code
	Msg             string
	Details         string // grpc-status-details-bin as received
	N               int    // messages received
}

// Observe makes a call to method on cc with md as its metadata, sends send
// messages, half-closes, reads every response and records the outcome. The
// header's content-type is left out: the gateway's listener sets its own.
func Observe(ctx context.Context, t testing.TB, cc grpc.ClientConnInterface, method string, md metadata.MD, send int) Observed {
	t.Helper()
	cs, err := RawStream(metadata.NewOutgoingContext(ctx, md), cc, method)
	if err != nil {
		t.Fatal(err)
	}
	for range send {
		m := []byte("m")
		if err := cs.SendMsg(&m); err != nil {
			break
		}
	}
	cs.CloseSend()
	var o Observed
	o.Header, _ = cs.Header()
	for {
		var m []byte
		if err = cs.RecvMsg(&m); err != nil {
			break
		}
		o.N++
	}
	st := status.Convert(err)
	if errors.Is(err, io.EOF) {
		st = status.New(codes.OK, "")
	}
	o.Code, o.Msg = st.Code(), st.Message()
	o.Trailer = cs.Trailer()
	if d := o.Trailer.Get("grpc-status-details-bin"); len(d) > 0 {
		o.Details = d[0]
	}
	delete(o.Header, "content-type")
	return o
}

// EqualMD reports whether a and b hold the same keys with the same values
// in the same order.
func EqualMD(a, b metadata.MD) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if strings.Join(v, "\x00") != strings.Join(b[k], "\x00") {
			return false
		}
	}
	return true
}
