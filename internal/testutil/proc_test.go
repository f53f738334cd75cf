//go:build unix

package testutil

import (
	"context"
	"maps"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// procTestWait bounds every wait for an event that must happen.
const procTestWait = 10 * time.Second

// fastReconnect keeps grpc's reconnection backoff short, so that a backend
// started again is connected to within the test's waits.
var fastReconnect = grpc.WithConnectParams(grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
	MinConnectTimeout: 5 * time.Second,
})

// echoCall calls Echo on cc and returns which backend answered.
func echoCall(cc grpc.ClientConnInterface, timeout time.Duration, opts ...grpc.CallOption) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var md metadata.MD
	resp, err := Unary(ctx, cc, "/"+TestService+"/Echo", []byte("hello"), append(opts, grpc.Header(&md))...)
	if err != nil {
		return "", err
	}
	if string(resp) != "hello" {
		return "", status.Errorf(codes.DataLoss, "echo: got %q, want %q", resp, "hello")
	}
	return first(md, "x-backend"), nil
}

// TestProc: the test backend answers Echo and health checks, a SIGSTOPped
// one lets calls time out and answers again after SIGCONT, one killed with
// SIGKILL refuses, starts again on the same port, and SIGTERM stops it
// gracefully.
func TestProc(t *testing.T) {
	p := StartProc(t, BuildTestBackend(t), "127.0.0.1:0")
	cc := Dial(t, p.Addr, fastReconnect)

	if got, err := echoCall(cc, procTestWait, grpc.WaitForReady(true)); err != nil || got != p.Addr {
		t.Fatalf("echo = %q, %v; want x-backend %q", got, err, p.Addr)
	}
	hc := healthpb.NewHealthClient(cc)
	for _, svc := range []string{"", TestService} {
		ctx, cancel := context.WithTimeout(context.Background(), procTestWait)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		cancel()
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check(%q) = %v, %v; want SERVING", svc, resp.GetStatus(), err)
		}
	}

	p.Stop()
	start := time.Now()
	_, err := echoCall(cc, 200*time.Millisecond)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("echo to a stopped backend: %v, want DEADLINE_EXCEEDED", err)
	}
	t.Logf("stopped backend: call ended after %s: %v", time.Since(start).Round(time.Millisecond), err)
	p.Cont()
	if got, err := echoCall(cc, procTestWait); err != nil || got != p.Addr {
		t.Fatalf("echo after SIGCONT = %q, %v; want x-backend %q", got, err, p.Addr)
	}

	pid := p.PID()
	p.Kill()
	if _, err := echoCall(cc, procTestWait); status.Code(err) != codes.Unavailable {
		t.Errorf("echo to a killed backend: %v, want UNAVAILABLE", err)
	}
	addr := p.Addr
	p.Restart()
	if p.Addr != addr || p.PID() == pid {
		t.Errorf("restarted on %s with pid %d, want %s and a pid other than %d", p.Addr, p.PID(), addr, pid)
	}
	if got, err := echoCall(cc, procTestWait, grpc.WaitForReady(true)); err != nil || got != p.Addr {
		t.Fatalf("echo after restart = %q, %v; want x-backend %q", got, err, p.Addr)
	}

	if err := p.Term(); err != nil {
		t.Errorf("exit after SIGTERM: %v, want a graceful stop\n%s", err, p.Output())
	}
}

// TestLoad: a Load counts answers by backend and failures by code, and sees
// the failures of a stopped and a killed backend start and end.
func TestLoad(t *testing.T) {
	p := StartProc(t, BuildTestBackend(t), "127.0.0.1:0")
	cc := Dial(t, p.Addr, fastReconnect)
	l := StartLoad(t, cc, LoadConfig{Timeout: 200 * time.Millisecond, Interval: 5 * time.Millisecond})

	WaitFor(t, procTestWait, "answers from the backend", func() bool { return l.Backends()[p.Addr] >= 20 })
	if at, err := l.LastFailure(); !at.IsZero() {
		t.Fatalf("a call to a healthy backend failed: %v", err)
	}

	stoppedAt := time.Now()
	p.Stop()
	WaitFor(t, procTestWait, "calls to the stopped backend time out", func() bool { return l.Counts()[codes.DeadlineExceeded] >= 4 })
	p.Cont()
	WaitFor(t, procTestWait, "answers after SIGCONT", func() bool { return l.OKStreak() >= 20 })
	at, err := l.LastFailure()
	if status.Code(err) != codes.DeadlineExceeded || at.Before(stoppedAt) {
		t.Errorf("last failure = %v at %s, want DEADLINE_EXCEEDED after the stop", err, at)
	}
	t.Logf("SIGSTOP: calls failed until %s after the stop", at.Sub(stoppedAt).Round(time.Millisecond))

	killedAt := time.Now()
	p.Kill()
	WaitFor(t, procTestWait, "calls to the killed backend fail", func() bool { return l.Counts()[codes.Unavailable] >= 1 })
	p.Restart()
	WaitFor(t, procTestWait, "answers after the restart", func() bool { return l.OKStreak() >= 20 })
	at, err = l.LastFailure()
	if status.Code(err) != codes.Unavailable || at.Before(killedAt) {
		t.Errorf("last failure = %v at %s, want UNAVAILABLE after the kill", err, at)
	}
	t.Logf("kill -9 and restart: calls failed until %s after the kill", at.Sub(killedAt).Round(time.Millisecond))

	l.Stop()
	counts := l.Counts()
	l.Stop()
	if again := l.Counts(); !maps.Equal(again, counts) {
		t.Errorf("counts changed after Stop: %v, then %v", counts, again)
	}
	if got := l.Backends(); len(got) != 1 || got[p.Addr] == 0 {
		t.Errorf("backends = %v, want only %s", got, p.Addr)
	}
	t.Logf("counts %v, backends %v", counts, l.Backends())
}
