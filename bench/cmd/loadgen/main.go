// Command loadgen drives one workload against one gRPC address and prints
// one JSON line (result.Run): N workers share M connections, calls finishing
// in the warm-up are dropped, and during the fixed window it counts calls,
// keeps every latency, and reads the CPU time of the processes it is told to
// watch from /proc.
//
//	loadgen -target 127.0.0.1:21000 -kind unary -conns 10 -concurrency 50 \
//	    -req-size 100 -warmup 1s -duration 5s -cpu proxy=1234 -cpu backend=1200
//
// With -tls-ca it calls the target over TLS 1.3 (tlsfiles.ClientConfig)
// and reports what the connections negotiated.
//
// It is deliberately lean (raw-bytes codec, no per-call allocation of its
// own), because on the bench machine it shares a core with the backend.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"

	"github.com/healthgate/healthgate/bench/internal/rawcodec"
	"github.com/healthgate/healthgate/bench/internal/result"
	"github.com/healthgate/healthgate/bench/internal/tlsfiles"
)

const (
	unaryMethod  = "/bench.Echo/Unary"
	streamMethod = "/bench.Echo/Stream"
	drainTimeout = 5 * time.Second
)

var streamDesc = grpc.StreamDesc{StreamName: "Stream", ServerStreams: true, ClientStreams: true}

type config struct {
	target      string
	kind        string
	conns       int
	concurrency int
	reqSize     int
	respSize    int
	warmup      time.Duration
	duration    time.Duration
	watch       watchList
	tlsCA       string
}

func main() {
	var c config
	flag.StringVar(&c.target, "target", "127.0.0.1:21000", "address to load")
	flag.StringVar(&c.kind, "kind", "unary", "unary (/bench.Echo/Unary) or stream (ping-pong on /bench.Echo/Stream)")
	flag.IntVar(&c.conns, "conns", 1, "client connections")
	flag.IntVar(&c.concurrency, "concurrency", 1, "workers, each with one call or stream in flight")
	flag.IntVar(&c.reqSize, "req-size", 100, "request message bytes")
	flag.IntVar(&c.respSize, "resp-size", -1, "expected reply bytes; -1 means the same as -req-size (echo)")
	flag.DurationVar(&c.warmup, "warmup", time.Second, "load before the window, not counted")
	flag.DurationVar(&c.duration, "duration", 5*time.Second, "measured window")
	flag.Var(&c.watch, "cpu", "role=pid: report the CPU time of pid and its descendants (repeatable)")
	flag.StringVar(&c.tlsCA, "tls-ca", "", "PEM CA file: call the target over TLS 1.3, trusting this CA (plaintext h2c without it)")
	flag.Parse()

	r, err := run(c)
	if err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
		os.Exit(1)
	}
}

func run(c config) (*result.Run, error) {
	if c.kind != "unary" && c.kind != "stream" {
		return nil, fmt.Errorf("-kind %q: want unary or stream", c.kind)
	}
	if c.conns < 1 || c.concurrency < 1 || c.duration <= 0 || c.warmup < 0 {
		return nil, errors.New("-conns and -concurrency must be at least 1, -duration positive")
	}
	if c.respSize < 0 {
		c.respSize = c.reqSize
	}
	req, err := rawcodec.Payload(c.reqSize)
	if err != nil {
		return nil, fmt.Errorf("-req-size: %w", err)
	}
	// Latencies are kept until the end; with GC at default pace the kept
	// slices would make the collector run often on the core the backend
	// shares with us.
	debug.SetGCPercent(400)

	creds := insecure.NewCredentials()
	if c.tlsCA != "" {
		cfg, err := tlsfiles.ClientConfig(c.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("-tls-ca: %w", err)
		}
		creds = credentials.NewTLS(cfg)
	}
	conns := make([]*grpc.ClientConn, c.conns)
	for i := range conns {
		cc, err := grpc.NewClient("passthrough:///"+c.target,
			grpc.WithTransportCredentials(creds),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawcodec.Codec{})))
		if err != nil {
			return nil, fmt.Errorf("client for %s: %w", c.target, err)
		}
		defer cc.Close()
		cc.Connect()
		conns[i] = cc
	}

	begin := time.Now()
	start := begin.Add(c.warmup)
	end := start.Add(c.duration)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	workers := make([]*worker, c.concurrency)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{cc: conns[i%len(conns)], req: &req, wantResp: c.respSize, start: start, end: end}
		workers[i] = w
		wg.Go(func() {
			if c.kind == "unary" {
				w.unary(ctx)
			} else {
				w.stream(ctx)
			}
		})
	}

	self := os.Getpid()
	watch := append(slices.Clone(c.watch), watched{role: "loadgen", pid: self})
	time.Sleep(time.Until(start))
	before, err := cpuTicks(watch)
	busy0, steal0, err2 := machineTicks()
	if err = errors.Join(err, err2); err != nil {
		cancel()
		wg.Wait()
		return nil, err
	}
	cpuStart := time.Now()
	time.Sleep(time.Until(end))
	after, err := cpuTicks(watch)
	busy1, steal1, err2 := machineTicks()
	err = errors.Join(err, err2)
	cpuWindow := time.Since(cpuStart)
	r := &result.Run{}
	// Workers start no call after the window and let the calls in flight
	// finish (uncounted) before the connections close: cancelling 1 MiB
	// calls midway leaves some proxies (HAProxy 2.6) with a stalled backend
	// connection, and the next run would measure that, not the proxy. A
	// peer that does not finish them in drainTimeout gets them cancelled.
	drained := make(chan struct{})
	go func() {
		wg.Wait()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(drainTimeout):
		r.Undrained = true
		cancel()
		<-drained
	}
	if err != nil {
		return nil, err
	}
	if c.tlsCA != "" {
		r.TLS = negotiated(conns[0], &req)
	}

	r.Target = c.target
	r.Kind = c.kind
	r.Conns = c.conns
	r.Concurrency = c.concurrency
	r.ReqBytes = c.reqSize
	r.RespBytes = c.respSize
	r.WarmupSec = c.warmup.Seconds()
	r.WindowSec = c.duration.Seconds()
	r.CPU = map[string]result.CPU{}
	var lat []int64
	for _, w := range workers {
		lat = append(lat, w.lat...)
		r.Errors += w.errors
		if r.FirstError == "" && w.firstErr != nil {
			r.FirstError = w.firstErr.Error()
		}
	}
	r.Ops = int64(len(lat))
	r.Rate = float64(r.Ops) / c.duration.Seconds()
	r.RespMBps = r.Rate * float64(c.respSize) / 1e6
	if len(lat) > 0 {
		slices.Sort(lat)
		var sum int64
		for _, v := range lat {
			sum += v
		}
		r.MeanUs = float64(sum) / float64(len(lat)) / 1e3
		r.P50Us = quantile(lat, 0.50)
		r.P99Us = quantile(lat, 0.99)
		r.P999Us = quantile(lat, 0.999)
		r.MaxUs = float64(lat[len(lat)-1]) / 1e3
	}
	var watchedSec float64
	for _, w := range watch {
		b, a := before[w.role], after[w.role]
		sec := float64(a.ticks-b.ticks) / clockTicks
		watchedSec += sec
		u := result.CPU{PID: w.pid, Seconds: sec, Percent: 100 * sec / cpuWindow.Seconds(), Included: a.procs}
		if r.Ops > 0 {
			u.UsPerOp = sec * 1e6 / float64(r.Ops)
		}
		r.CPU[w.role] = u
	}
	// Sampled separately from the processes' own counters, so it can come
	// out a little below zero on an otherwise idle machine.
	other := max(0, float64(busy1-busy0)/clockTicks-watchedSec)
	r.OtherCPUPercent = 100 * other / cpuWindow.Seconds()
	r.StealPercent = 100 * float64(steal1-steal0) / clockTicks / cpuWindow.Seconds()
	return r, nil
}

// negotiated asks one more call, after the window, what cc's TLS
// connection agreed on; the workers' calls do not carry the option, so that
// the measured path is the same with and without TLS.
func negotiated(cc *grpc.ClientConn, req *[]byte) string {
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	var p peer.Peer
	var resp rawcodec.Size
	if err := cc.Invoke(ctx, unaryMethod, req, &resp, grpc.Peer(&p)); err != nil {
		return "unknown: " + err.Error()
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return "unknown: the connection has no TLS information"
	}
	return tlsfiles.Describe(info.State)
}

// quantile is the nearest-rank quantile of sorted nanoseconds, in µs.
func quantile(sorted []int64, q float64) float64 {
	i := int(float64(len(sorted))*q+0.999999) - 1
	i = max(0, min(i, len(sorted)-1))
	return float64(sorted[i]) / 1e3
}

type worker struct {
	cc         *grpc.ClientConn
	req        *[]byte
	wantResp   int
	start, end time.Time

	lat      []int64
	errors   int64
	firstErr error
}

// record counts a call by when it finished: inside [start, end) or not at
// all, so the rate and the latencies cover the same calls.
func (w *worker) record(t0, t1 time.Time, err error) {
	if t1.Before(w.start) || !t1.Before(w.end) {
		return
	}
	if err != nil {
		w.errors++
		if w.firstErr == nil {
			w.firstErr = err
		}
		return
	}
	w.lat = append(w.lat, int64(t1.Sub(t0)))
}

func (w *worker) check(got rawcodec.Size) error {
	if int(got) != w.wantResp {
		return fmt.Errorf("reply is %d bytes, want %d", got, w.wantResp)
	}
	return nil
}

func (w *worker) unary(ctx context.Context) {
	var resp rawcodec.Size
	for t0 := time.Now(); t0.Before(w.end) && ctx.Err() == nil; t0 = time.Now() {
		err := w.cc.Invoke(ctx, unaryMethod, w.req, &resp)
		if err == nil {
			err = w.check(resp)
		}
		t1 := time.Now()
		w.record(t0, t1, err)
		if err != nil {
			pause(ctx)
		}
	}
}

// stream echoes one message at a time on one stream (send, then wait for the
// echo), opening a new stream when one fails, and closes its stream cleanly
// after the window.
func (w *worker) stream(ctx context.Context) {
	var resp rawcodec.Size
	for t0 := time.Now(); t0.Before(w.end) && ctx.Err() == nil; t0 = time.Now() {
		s, err := w.cc.NewStream(ctx, &streamDesc, streamMethod)
		if err != nil {
			w.record(t0, time.Now(), err)
			pause(ctx)
			continue
		}
		for t0 := time.Now(); ; t0 = time.Now() {
			if !t0.Before(w.end) || ctx.Err() != nil {
				if s.CloseSend() == nil {
					_ = s.RecvMsg(&resp) // the server's io.EOF, or why not
				}
				return
			}
			err := s.SendMsg(w.req)
			if err == nil {
				if err = s.RecvMsg(&resp); err == nil {
					err = w.check(resp)
				} else if errors.Is(err, io.EOF) {
					err = errors.New("stream ended by the server")
				}
			} else if rerr := s.RecvMsg(&resp); rerr != nil && !errors.Is(rerr, io.EOF) {
				// SendMsg says io.EOF when the stream broke; RecvMsg has why.
				err = rerr
			}
			w.record(t0, time.Now(), err)
			if err != nil {
				pause(ctx)
				break
			}
		}
	}
}

// pause keeps a failing target from turning the worker into a busy loop.
func pause(ctx context.Context) {
	t := time.NewTimer(time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

type watched struct {
	role string
	pid  int
}

type watchList []watched

func (l *watchList) String() string {
	parts := make([]string, len(*l))
	for i, w := range *l {
		parts[i] = w.role + "=" + strconv.Itoa(w.pid)
	}
	return strings.Join(parts, ",")
}

func (l *watchList) Set(s string) error {
	role, pid, ok := strings.Cut(s, "=")
	n, err := strconv.Atoi(pid)
	if !ok || role == "" || err != nil || n <= 0 {
		return fmt.Errorf("%q is not role=pid", s)
	}
	*l = append(*l, watched{role: role, pid: n})
	return nil
}
