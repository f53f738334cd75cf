package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/health" // client-side health checking
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/healthgate/healthgate/internal/testutil"
)

// twoGwProcess is one healthgate process of TestB43_TwoGatewaysLoseNoRPC.
type twoGwProcess struct {
	*proc
	name, listen, admin string
}

// TestB43_TwoGatewaysLoseNoRPC runs two real healthgate processes in front
// of the same backends and one client that balances over both with grpc-go's
// own round_robin and client-side health checking. Under steady load one
// gateway gets SIGTERM: its NOT_SERVING takes it out of the client's
// rotation during the drain delay, the calls it still has finish, it exits
// 0, and not one call of the whole run fails.
func TestB43_TwoGatewaysLoseNoRPC(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		b1, b2 := testutil.StartBackend(t), testutil.StartBackend(t)
		metricsClient := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}

		start := func(name string) *twoGwProcess {
			p := &twoGwProcess{
				name:   name,
				listen: fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
				admin:  fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
			}
			cfg := fmt.Sprintf("listen: %s\nadmin: %s\nroutes:\n- service: %s\n  backends: [%s, %s]\nshutdown:\n  drain_delay: 1s\n  grace: 5s\n",
				p.listen, p.admin, testutil.TestService, b1.Addr, b2.Addr)
			cfgPath := writeConfig(t, name+".yaml", cfg, engine)
			p.proc = startHealthgate(t, twoGwLog{t, name}, twoGwLog{t, name}, "-config", cfgPath)
			return p
		}
		gwA, gwB := start("gateway-A"), start("gateway-B")

		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for _, p := range []*twoGwProcess{gwA, gwB} {
			cc := testutil.Dial(t, p.listen)
			hc := healthpb.NewHealthClient(cc)
			testutil.WaitFor(t, 20*time.Second, p.name+" to report SERVING", func() bool {
				resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
				return err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING
			})
			cc.Close()
		}
		// handled is the calls a gateway finished OK, from its /metrics.
		handled := func(p *twoGwProcess) float64 {
			t.Helper()
			n, err := twoGwHandledOK(metricsClient, p.admin)
			if err != nil {
				t.Fatalf("%s metrics: %v", p.name, err)
			}
			return n
		}

		// The client knows both gateways and checks their overall health ("")
		// itself: a gateway that reports NOT_SERVING leaves its rotation.
		r := manual.NewBuilderWithScheme("twogw")
		r.InitialState(resolver.State{Addresses: []resolver.Address{{Addr: gwA.listen}, {Addr: gwB.listen}}})
		cc, err := grpc.NewClient(r.Scheme()+":///gateways",
			grpc.WithResolvers(r),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultServiceConfig(`{"loadBalancingPolicy":"round_robin","healthCheckConfig":{"serviceName":""}}`),
		)
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()

		var (
			sigterm  atomic.Int64 // unix nanos of the SIGTERM, 0 before
			exitedAt atomic.Int64 // unix nanos of gateway A's exit, 0 before
			// calls by phase: before the SIGTERM, during A's drain, after A exited.
			phase      [3]atomic.Int64
			failures   atomic.Int64
			failMu     sync.Mutex
			failSample []string
		)
		call := func(i int) {
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			defer ccancel()
			msg := []byte(fmt.Sprintf("call %d", i))
			began := time.Now()
			got, err := testutil.Unary(cctx, cc, "/test.Svc/Echo", msg)
			p := 0
			if s := sigterm.Load(); s != 0 && began.UnixNano() >= s {
				p = 1
			}
			if e := exitedAt.Load(); e != 0 && began.UnixNano() >= e {
				p = 2
			}
			phase[p].Add(1)
			if err == nil && string(got) != string(msg) {
				err = fmt.Errorf("echo: got %q, want %q", got, msg)
			}
			if err != nil {
				failures.Add(1)
				failMu.Lock()
				if len(failSample) < 10 {
					when := "before the SIGTERM"
					if s := sigterm.Load(); s != 0 {
						when = fmt.Sprintf("%v after the SIGTERM", began.Sub(time.Unix(0, s)))
					}
					failSample = append(failSample, fmt.Sprintf("%v (began %s, took %v)", err, when, time.Since(began)))
				}
				failMu.Unlock()
			}
		}

		// Warm up until each gateway has forwarded calls of this client.
		testutil.WaitFor(t, 20*time.Second, "the client to use both gateways", func() bool {
			for i := range 10 {
				call(i)
			}
			return handled(gwA) > 0 && handled(gwB) > 0
		})
		if n := failures.Load(); n > 0 {
			t.Fatalf("%d calls failed while warming up: %q", n, failSample)
		}

		// Steady load: several callers, bounded in time.
		const callers = 8
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-ctx.Done():
						return
					default:
					}
					call(w*1_000_000 + i)
				}
			}()
		}
		stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
		defer stopLoad()

		time.Sleep(time.Second)
		aBefore, bBefore := handled(gwA), handled(gwB)
		if aBefore == 0 || bBefore == 0 {
			t.Fatalf("before the SIGTERM gateway A forwarded %v calls and B %v: the client must use both", aBefore, bBefore)
		}
		sigterm.Store(time.Now().UnixNano())
		sentAt := time.Now()
		if err := gwA.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		// A's admin endpoint lives until the process ends: keep its count half
		// way through the drain delay, by when the client has seen NOT_SERVING,
		// and its last.
		aOut, aLast := -1.0, aBefore
		deadline := time.NewTimer(20 * time.Second)
		defer deadline.Stop()
		scrape := time.NewTicker(100 * time.Millisecond)
		defer scrape.Stop()
		for done := false; !done; {
			select {
			case <-gwA.exited:
				done = true
			case <-scrape.C:
				if n, err := twoGwHandledOK(metricsClient, gwA.admin); err == nil {
					aLast = n
					if aOut < 0 && time.Since(sentAt) >= 500*time.Millisecond {
						aOut = n
					}
				}
			case <-deadline.C:
				t.Fatal("gateway A did not exit within 20s of SIGTERM")
			}
		}
		exitedAt.Store(time.Now().UnixNano())
		took := time.Since(sentAt)
		if gwA.waitErr != nil {
			t.Fatalf("gateway A exited with %v, want 0", gwA.waitErr)
		}
		if took < time.Second {
			t.Fatalf("gateway A exited %v after SIGTERM, before its 1s drain delay", took)
		}
		bAtExit := handled(gwB)
		time.Sleep(time.Second)
		stopLoad()
		bEnd := handled(gwB)

		total := phase[0].Load() + phase[1].Load() + phase[2].Load()
		t.Logf("RPCs: %d in all (%d callers), %d before SIGTERM, %d during gateway A's drain (%v to exit 0), %d after it exited; %d failed",
			total, callers, phase[0].Load(), phase[1].Load(), took.Round(time.Millisecond), phase[2].Load(), failures.Load())
		t.Logf("forwarded OK: gateway A %v before SIGTERM, %v 0.5s into its drain, %v at its last scrape; gateway B %v before SIGTERM, %v at A's exit, %v at the end",
			aBefore, aOut, aLast, bBefore, bAtExit, bEnd)
		if n := failures.Load(); n != 0 {
			t.Fatalf("%d of %d RPCs failed; want 0 while one gateway drains. First failures: %q", n, total, failSample)
		}
		if phase[0].Load() == 0 || phase[1].Load() == 0 || phase[2].Load() == 0 {
			t.Fatalf("the load did not cover every phase: %d, %d, %d", phase[0].Load(), phase[1].Load(), phase[2].Load())
		}
		// The drain delay is for clients to notice NOT_SERVING: the client's
		// health check took A out of its rotation, and A got no call in the
		// second half of the delay even though it still accepted them.
		if aOut < 0 {
			t.Fatal("gateway A's metrics could not be read half way through its drain delay")
		}
		if aLast != aOut {
			t.Fatalf("gateway A forwarded %v calls after the client should have seen its NOT_SERVING", aLast-aOut)
		}
		if bEnd <= bAtExit {
			t.Fatalf("gateway B forwarded no call after A exited (%v then %v)", bAtExit, bEnd)
		}

		// The other gateway drains as cleanly.
		cc.Close()
		if err := gwB.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-gwB.exited:
			if gwB.waitErr != nil {
				t.Fatalf("gateway B exited with %v, want 0", gwB.waitErr)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("gateway B did not exit within 20s of SIGTERM")
		}
	})
}

// twoGwHandledOK sums healthgate_proxy_handled_total with code OK on the
// admin endpoint at addr.
func twoGwHandledOK(c *http.Client, addr string) (float64, error) {
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "healthgate_proxy_handled_total{") || !strings.Contains(line, `grpc_code="OK"`) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("metrics line %q: %w", line, err)
		}
		sum += v
	}
	return sum, sc.Err()
}

// twoGwLog writes a gateway's output into the test log under its name.
type twoGwLog struct {
	t    *testing.T
	name string
}

func (w twoGwLog) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.t.Logf("%s: %s", w.name, line)
	}
	return len(p), nil
}
