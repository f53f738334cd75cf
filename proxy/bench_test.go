package proxy_test

import (
	"context"
	"testing"

	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy"
)

// BenchmarkForward measures one unary call direct to a backend and the same
// call through the gateway, all in this process. The gateway's own cost per
// call is the difference between the two rows: with -benchmem, a 1 MiB
// message that the gateway copied would add at least 1 MiB (twice, with the
// response) to B/op.
func BenchmarkForward(b *testing.B) {
	for _, size := range []struct {
		name string
		n    int
	}{{"100B", 100}, {"1MiB", 1 << 20}} {
		payload := make([]byte, size.n)
		for _, path := range []string{"direct", "gateway"} {
			b.Run(size.name+"/"+path, func(b *testing.B) {
				backend := testutil.StartBackend(b)
				target := backend.Addr
				if path == "gateway" {
					p, err := proxy.New(proxy.Config{}, &picker{up: upstream{testutil.Dial(b, backend.Addr), make(chan proxy.Outcome, 1)}}, nil)
					if err != nil {
						b.Fatal(err)
					}
					target = serveB(b, p)
				}
				cc := testutil.Dial(b, target)
				ctx := context.Background()
				if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", payload); err != nil {
					b.Fatal(err)
				}
				// The backend records calls for tests; keep its queue empty.
				stop := make(chan struct{})
				defer close(stop)
				go func() {
					for {
						select {
						case <-backend.Calls():
						case <-backend.Started():
						case <-stop:
							return
						}
					}
				}()
				b.SetBytes(int64(2 * size.n))
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", payload); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkForwardStreamMessage measures one message each way on a bidi
// stream that stays open: the per-message path, without per-call setup.
// Compare the gateway row with the direct row for the gateway's share.
func BenchmarkForwardStreamMessage(b *testing.B) {
	payload := make([]byte, 100)
	for _, path := range []string{"direct", "gateway"} {
		b.Run(path, func(b *testing.B) {
			backend := testutil.StartBackend(b)
			target := backend.Addr
			if path == "gateway" {
				p, err := proxy.New(proxy.Config{}, &picker{up: upstream{testutil.Dial(b, backend.Addr), make(chan proxy.Outcome, 1)}}, nil)
				if err != nil {
					b.Fatal(err)
				}
				target = serveB(b, p)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cs, err := testutil.RawStream(ctx, testutil.Dial(b, target), "/test.Svc/Echo")
			if err != nil {
				b.Fatal(err)
			}
			var got []byte
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := cs.SendMsg(&payload); err != nil {
					b.Fatal(err)
				}
				if err := cs.RecvMsg(&got); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			cs.CloseSend()
			cs.RecvMsg(&got)
			backend.Drain()
		})
	}
}
