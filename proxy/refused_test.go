package proxy_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy"
)

// refusing is an upstream whose streams are never accepted, as a backend
// whose connection broke between the pick and the send.
type refusing struct{ done chan proxy.Outcome }

func (refusing) Addr() string { return "refusing" }
func (r refusing) Done(o proxy.Outcome) {
	r.done <- o
}
func (refusing) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unavailable, "connection is not ready")
}

// seqPicker hands out its upstreams in turn, recording what each pick was
// told had been tried.
type seqPicker struct {
	ups   []proxy.Upstream
	tried [][]proxy.Upstream
}

func (p *seqPicker) Route(string, proxy.Headers) (proxy.Route, error) {
	return proxy.Route{Name: "test", Backends: p}, nil
}

func (p *seqPicker) Pick(tried []proxy.Upstream) (proxy.Upstream, error) {
	p.tried = append(p.tried, append([]proxy.Upstream(nil), tried...))
	if len(p.tried) > len(p.ups) {
		return nil, status.Error(codes.Unavailable, "no healthy upstream left")
	}
	return p.ups[len(p.tried)-1], nil
}

// TestB13_RepickWhenNotAccepted: a call that an upstream does not accept,
// whether its stream could not be opened or the backend refused it
// (REFUSED_STREAM), goes to the next pick, told what was tried; the
// refusing upstream is told its failure was local, so that passive failure
// detection holds it against that backend, and the next one is told the
// backend's answer. That the client gets the call answered, every message
// of it, runs against every engine in
// gateway.TestB13_RefusedStreamGoesToAnotherBackendThroughGateway.
func TestB13_RepickWhenNotAccepted(t *testing.T) {
	backend := testutil.StartBackend(t)
	ref := testutil.StartRefusingBackend(t)
	for _, tc := range []struct {
		name string
		// refuse is the upstream that does not accept the call, telling
		// done how it ended.
		refuse func(done chan proxy.Outcome) proxy.Upstream
	}{
		{"stream not opened", func(done chan proxy.Outcome) proxy.Upstream { return refusing{done} }},
		{"REFUSED_STREAM", func(done chan proxy.Outcome) proxy.Upstream {
			return upstream{testutil.Dial(t, ref.Addr), done}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refused := make(chan proxy.Outcome, 8)
			bad := tc.refuse(refused)
			good := upstream{testutil.Dial(t, backend.Addr), make(chan proxy.Outcome, 8)}
			sp := &seqPicker{ups: []proxy.Upstream{bad, good}}
			p, err := proxy.New(proxy.Config{}, sp, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := testutil.Unary(ctxT(t), dialProxy(t, p), "/test.Svc/Echo", []byte("x")); err != nil {
				t.Fatalf("call with one refusal then a good upstream: %v", err)
			}
			if len(sp.tried) != 2 || len(sp.tried[1]) != 1 || sp.tried[1][0] != bad {
				t.Fatalf("picks were told tried = %v, want the refusing upstream on the second pick", sp.tried)
			}
			if o := waitDone(t, refused); o.Origin != proxy.Local || o.Code != codes.Unavailable {
				t.Fatalf("refusing upstream's outcome %+v, want a local UNAVAILABLE", o)
			}
			if o := waitDone(t, good.done); o.Origin != proxy.FromBackend || o.Code != codes.OK {
				t.Fatalf("good upstream's outcome %+v, want OK from the backend", o)
			}
		})
	}
	// At least: grpc-go's client sends a refused stream again on its own
	// (transparent retry) before the engine sees the refusal.
	if ref.Refused() == 0 {
		t.Fatal("the refusing backend refused no stream: the REFUSED_STREAM case did not reach it")
	}
}

// TestB13_RepickBounded: a call refused MaxAttempts times gets UNAVAILABLE,
// even with a good upstream next in line. MaxAttempts is not in the config
// file, so no gateway test sets it.
func TestB13_RepickBounded(t *testing.T) {
	refused := make(chan proxy.Outcome, 8)
	good := upstream{testutil.Dial(t, testutil.StartBackend(t).Addr), make(chan proxy.Outcome, 8)}
	sp := &seqPicker{ups: []proxy.Upstream{refusing{refused}, refusing{refused}, refusing{refused}, good}}
	p, err := proxy.New(proxy.Config{MaxAttempts: 3}, sp, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = testutil.Unary(ctxT(t), dialProxy(t, p), "/test.Svc/Echo", []byte("x"))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "after 3 attempts") {
		t.Fatalf("three refusals: %v, want UNAVAILABLE after 3 attempts", err)
	}
	if len(sp.tried) != 3 {
		t.Fatalf("%d picks, want 3 (MaxAttempts)", len(sp.tried))
	}
}

// TestB13_RefusedTooBigToReplay: a refused call whose messages overflowed
// the replay buffer is not sent again, since the gateway no longer holds
// it whole; the client gets the refusal. The replay buffer is not in the
// config file, so no gateway test sets it.
func TestB13_RefusedTooBigToReplay(t *testing.T) {
	good, ref := testutil.StartBackend(t), testutil.StartRefusingBackend(t)
	sp := &seqPicker{ups: []proxy.Upstream{
		upstream{testutil.Dial(t, ref.Addr), make(chan proxy.Outcome, 8)},
		upstream{testutil.Dial(t, good.Addr), make(chan proxy.Outcome, 8)},
	}}
	p, err := proxy.New(proxy.Config{ReplayBufferBytes: 100}, sp, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = testutil.Unary(ctxT(t), dialProxy(t, p), "/test.Svc/Echo", bytes.Repeat([]byte("y"), 1000))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "REFUSED_STREAM") {
		t.Fatalf("a refused call over the replay buffer: %v, want UNAVAILABLE from the refusal", err)
	}
	if len(sp.tried) != 1 {
		t.Fatalf("%d picks, want 1: a call that was not kept whole is not sent again", len(sp.tried))
	}
}
