package balancer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// conns are client connections that are never used to connect: the
// balancer only needs distinct identities.
func conns(t *testing.T, n int) []*grpc.ClientConn {
	out := make([]*grpc.ClientConn, n)
	for i := range out {
		cc, err := grpc.NewClient(fmt.Sprintf("passthrough:///backend-%d", i), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		out[i] = cc
	}
	return out
}

func state(route string, ccs []*grpc.ClientConn, weights []int, routable []bool) *healthcheck.State {
	r := &healthcheck.Route{Name: route}
	for i, cc := range ccs {
		r.Backends = append(r.Backends, healthcheck.Backend{Addr: fmt.Sprintf("backend-%d", i), Conn: cc, Weight: weights[i], Routable: routable[i]})
	}
	return &healthcheck.State{Synced: true, Routes: map[string]*healthcheck.Route{route: r}}
}

func pickN(t *testing.T, b *Balancer, method string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		ep, err := b.Pick(context.Background(), method)
		if err != nil {
			t.Fatal(err)
		}
		got[ep.Addr()]++
		ep.Done(nil)
	}
	return got
}

func TestRoundRobinHonoursWeights(t *testing.T) {
	b, _ := New(Config{}, nil)
	ccs := conns(t, 3)
	b.Update(state("a.S", ccs, []int{1, 2, 3}, []bool{true, true, true}))
	got := pickN(t, b, "/a.S/M", 600)
	want := map[string]int{"backend-0": 100, "backend-1": 200, "backend-2": 300}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("weighted round robin over 600 picks: got %v, want %v", got, want)
		}
	}
}

func TestOnlyRoutableBackendsArePicked(t *testing.T) {
	b, _ := New(Config{}, nil)
	ccs := conns(t, 2)
	b.Update(state("a.S", ccs, []int{1, 1}, []bool{false, true}))
	if got := pickN(t, b, "/a.S/M", 50); got["backend-1"] != 50 {
		t.Fatalf("got %v, want every pick on the routable backend-1", got)
	}
	b.Update(state("a.S", ccs, []int{1, 1}, []bool{false, false}))
	_, err := b.Pick(context.Background(), "/a.S/M")
	if st := status.Convert(err); st.Code() != codes.Unavailable {
		t.Fatalf("no routable backend: %v, want UNAVAILABLE", err)
	}
}

func TestLeastRequestAvoidsTheBusyBackend(t *testing.T) {
	b, _ := New(Config{Policies: map[string]Policy{"a.S": LeastRequest}}, nil)
	ccs := conns(t, 2)
	b.Update(state("a.S", ccs, []int{1, 1}, []bool{true, true}))
	// Hold 10 calls on whichever backend they land; with two backends,
	// power of two choices always compares both, so every held call
	// lands on the less loaded one and the load stays even.
	var held []*Endpoint
	for range 10 {
		ep, err := b.Pick(context.Background(), "/a.S/M")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, ep)
	}
	count := map[string]int{}
	for _, ep := range held {
		count[ep.Addr()]++
	}
	if count["backend-0"] != 5 || count["backend-1"] != 5 {
		t.Fatalf("10 held calls landed %v, want 5 and 5", count)
	}
	for _, ep := range held {
		ep.Done(nil)
	}
	if got := held[0].InFlight(); got != 0 {
		t.Fatalf("in flight after Done: %d", got)
	}
}

func TestInFlightCountsThroughTimeOutOfRotation(t *testing.T) {
	b, _ := New(Config{Policies: map[string]Policy{"a.S": LeastRequest}}, nil)
	ccs := conns(t, 2)
	b.Update(state("a.S", ccs, []int{1, 1}, []bool{true, false}))
	var held []*Endpoint
	for range 2 {
		ep, err := b.Pick(context.Background(), "/a.S/M")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, ep)
	}
	// backend-0 leaves the rotation with its two calls still open: they
	// are still its calls, and they still count when it comes back.
	for i, routable := range [][]bool{{false, true}, {true, true}} {
		b.Update(state("a.S", ccs, []int{1, 1}, routable))
		if got := b.InFlight(ccs[0]); got != 2 {
			t.Fatalf("update %d (routable %v): InFlight(backend-0) = %d, want 2", i, routable, got)
		}
		if got := b.InFlight(ccs[1]); got != 0 {
			t.Fatalf("update %d: InFlight(backend-1) = %d, want 0", i, got)
		}
	}
	// Back in rotation, least request sends the next calls to the idle one.
	for range 2 {
		ep, err := b.Pick(context.Background(), "/a.S/M")
		if err != nil {
			t.Fatal(err)
		}
		if ep.Addr() != "backend-1" {
			t.Fatalf("a new call went to %s, which has 2 calls open; want backend-1", ep.Addr())
		}
		held = append(held, ep)
	}
	for _, ep := range held {
		ep.Done(nil)
	}
	if got := b.InFlight(ccs[0]) + b.InFlight(ccs[1]); got != 0 {
		t.Fatalf("in flight after Done: %d", got)
	}
	// A backend that leaves the state is forgotten.
	b.Update(state("a.S", ccs[1:], []int{1}, []bool{true}))
	if got := b.InFlight(ccs[0]); got != 0 {
		t.Fatalf("InFlight of a backend no longer listed: %d", got)
	}
}

func TestRoutingByService(t *testing.T) {
	b, _ := New(Config{}, nil)
	ccs := conns(t, 2)
	st := state("a.S", ccs[:1], []int{1}, []bool{true})
	st.Routes[discovery.DefaultRoute] = &healthcheck.Route{Name: discovery.DefaultRoute, Backends: []healthcheck.Backend{{Addr: "dflt", Conn: ccs[1], Weight: 1, Routable: true}}}
	b.Update(st)
	if got := pickN(t, b, "/a.S/M", 3); got["backend-0"] != 3 {
		t.Fatalf("a.S went to %v", got)
	}
	if got := pickN(t, b, "/other.S/M", 3); got["dflt"] != 3 {
		t.Fatalf("an unrouted service went to %v, want the default route", got)
	}
	delete(st.Routes, discovery.DefaultRoute)
	b.Update(st)
	_, err := b.Pick(context.Background(), "/other.S/M")
	if st := status.Convert(err); st.Code() != codes.Unimplemented || st.Message() != "healthgate: unknown service other.S" {
		t.Fatalf("without a default route: %v, want UNIMPLEMENTED naming the service", err)
	}
}

func TestPickerRebuiltOnlyWhenRoutableSetChanges(t *testing.T) {
	b, _ := New(Config{}, nil)
	ccs := conns(t, 2)
	b.Update(state("a.S", ccs, []int{1, 1}, []bool{true, true}))
	p1 := b.table.Load().routes["a.S"]
	st := state("a.S", ccs, []int{1, 1}, []bool{true, true})
	st.Routes["a.S"].Backends[0].Reason = "something else changed"
	b.Update(st)
	if p2 := b.table.Load().routes["a.S"]; p2 != p1 {
		t.Fatal("the picker was rebuilt though the routable set did not change")
	}
	b.Update(state("a.S", ccs, []int{1, 1}, []bool{true, false}))
	if p3 := b.table.Load().routes["a.S"]; p3 == p1 {
		t.Fatal("the picker was not rebuilt when a backend left")
	}
}

func TestServiceOf(t *testing.T) {
	for in, want := range map[string]string{"/a.b.S/M": "a.b.S", "/S/M": "S", "nomethod": "nomethod", "/x/y/z": "x/y"} {
		if got := serviceOf(in); got != want {
			t.Errorf("serviceOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func BenchmarkPick(b *testing.B) {
	bal, _ := New(Config{}, nil)
	ccs := make([]*grpc.ClientConn, 3)
	for i := range ccs {
		ccs[i], _ = grpc.NewClient(fmt.Sprintf("passthrough:///b%d", i), grpc.WithTransportCredentials(insecure.NewCredentials()))
		defer ccs[i].Close()
	}
	bal.Update(state("a.S", ccs, []int{1, 1, 1}, []bool{true, true, true}))
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ep, _ := bal.Pick(ctx, "/a.S/Method")
			ep.Done(nil)
		}
	})
}

func TestOutlierEjectsAfterConsecutiveUnavailable(t *testing.T) {
	var ejected []string
	b, _ := New(Config{Outlier: Outlier{ConsecutiveUnavailable: 3, Ejection: time.Hour}, OnEject: func(a string) { ejected = append(ejected, a) }}, nil)
	ccs := conns(t, 2)
	b.Update(state("a.S", ccs, []int{1, 1}, []bool{true, true}))
	unavailable := status.Error(codes.Unavailable, "connection refused")

	// Two failures, then a success: the count starts over.
	fail := func(addr string, n int, err error) {
		for n > 0 {
			ep, _ := b.Pick(context.Background(), "/a.S/M")
			if ep.Addr() != addr {
				ep.Done(nil)
				continue
			}
			ep.Done(err)
			n--
		}
	}
	fail("backend-0", 2, unavailable)
	fail("backend-0", 1, nil)
	fail("backend-0", 2, unavailable)
	fail("backend-0", 1, status.Error(codes.NotFound, "an application answer"))
	if got := pickN(t, b, "/a.S/M", 20); got["backend-0"] == 0 {
		t.Fatalf("backend-0 was ejected without 3 UNAVAILABLE in a row: %v", got)
	}
	fail("backend-0", 3, unavailable)
	if len(ejected) != 1 || ejected[0] != "backend-0" {
		t.Fatalf("ejected %v, want [backend-0]", ejected)
	}
	if got := pickN(t, b, "/a.S/M", 20); got["backend-1"] != 20 {
		t.Fatalf("with backend-0 ejected, picks went %v", got)
	}
	// Every backend ejected: calls still go somewhere.
	fail("backend-1", 3, unavailable)
	if got := pickN(t, b, "/a.S/M", 4); got["backend-0"]+got["backend-1"] != 4 {
		t.Fatalf("with all ejected, picks went %v", got)
	}
	var until time.Time
	for _, ep := range b.table.Load().eps {
		if ep.Addr() == "backend-0" {
			until = ep.EjectedUntil()
		}
	}
	if until.Before(time.Now().Add(59 * time.Minute)) {
		t.Fatalf("backend-0 ejected until %v, want about an hour from now", until)
	}
}
