package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/healthgate/healthgate/internal/testutil"
)

// logBuffer keeps what the process writes and passes it to the test's log.
type logBuffer struct {
	t  *testing.T
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.b.Write(p)
	l.mu.Unlock()
	l.t.Logf("%s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}

// lines returns the lines logged so far that contain every one of substrs.
func (l *logBuffer) lines(substrs ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.b.String(), "\n") {
		all := true
		for _, s := range substrs {
			if !strings.Contains(line, s) {
				all = false
				break
			}
		}
		if all {
			out = append(out, line)
		}
	}
	return out
}

// waitLog waits until n lines contain every one of substrs.
func (l *logBuffer) waitLog(t *testing.T, n int, substrs ...string) {
	t.Helper()
	testutil.WaitFor(t, 15*time.Second, fmt.Sprintf("%d log lines with %q", n, substrs), func() bool {
		return len(l.lines(substrs...)) >= n
	})
}

// reloadView is the part of /backends this test reads.
type reloadView struct {
	Routes []struct {
		Route    string `json:"route"`
		Backends []struct {
			Addr     string `json:"addr"`
			Routable bool   `json:"routable"`
		} `json:"backends"`
	} `json:"routes"`
}

// routableBackends maps each route of /backends to its routable addresses.
func routableBackends(t *testing.T, admin string) map[string][]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/backends", nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("/backends: %v", err)
	}
	defer resp.Body.Close()
	var v reloadView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("/backends: %v", err)
	}
	out := map[string][]string{}
	for _, r := range v.Routes {
		out[r.Route] = []string{}
		for _, b := range r.Backends {
			if b.Routable {
				out[r.Route] = append(out[r.Route], b.Addr)
			}
		}
	}
	return out
}

func sameRoutes(got, want map[string][]string) bool {
	if len(got) != len(want) {
		return false
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok || strings.Join(g, ",") != strings.Join(w, ",") {
			return false
		}
	}
	return true
}

// TestSighupReloads runs the real binary and reloads its config three
// times: a new backend and a new route apply at once without touching the
// call in flight; an invalid file is rejected and the running config stays;
// a changed listen address is reported as needing a restart.
func TestSighupReloads(t *testing.T) {
	a, b := testutil.StartBackend(t), testutil.StartBackend(t)
	listen := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	admin := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	cfgPath := filepath.Join(t.TempDir(), "healthgate.yaml")
	// drain_grace keeps a backend that left the config connected for the
	// calls it is finishing, well beyond this test's steps.
	const common = "shutdown:\n  drain_delay: 100ms\n  grace: 10s\nhealth:\n  drain_grace: 60s\n"
	write := func(listen, routes string) {
		t.Helper()
		if err := os.WriteFile(cfgPath, []byte("listen: "+listen+"\n"+common+"routes:\n"+routes), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(listen, fmt.Sprintf("- service: test.Svc\n  backends: [%s]\n", a.Addr))

	stderr := &logBuffer{t: t}
	p := startHealthgate(t, testWriter{t}, stderr, "-config", cfgPath, "-admin", admin)
	cmd, exited := p.cmd, p.exited
	running := func(when string) {
		t.Helper()
		select {
		case <-exited:
			t.Fatalf("healthgate exited %s: %v", when, p.waitErr)
		default:
		}
	}
	hup := func() {
		t.Helper()
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}

	// "healthgate serving" is logged after the signal handlers are in place.
	stderr.waitLog(t, 1, "healthgate serving")
	testutil.WaitFor(t, 15*time.Second, "test.Svc routed to a", func() bool {
		return sameRoutes(routableBackends(t, admin), map[string][]string{"test.Svc": {a.Addr}})
	})

	cc := testutil.Dial(t, listen)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stream, err := testutil.RawStream(ctx, cc, "/test.Svc/Echo")
	if err != nil {
		t.Fatal(err)
	}
	echo := func(s string) error { return testutil.Echo(stream, s) }
	if err := echo("before the reload"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Started():
	case <-time.After(10 * time.Second):
		t.Fatal("the stream did not reach backend a")
	}

	// calls makes n unary calls to method on conn and says how many each
	// backend took.
	calls := func(conn *grpc.ClientConn, method string, n int) (onA, onB int) {
		t.Helper()
		for i := range n {
			if _, err := testutil.Unary(ctx, conn, method, []byte("x")); err != nil {
				t.Fatalf("%s call %d: %v", method, i, err)
			}
			select {
			case <-a.Started():
				onA++
			case <-b.Started():
				onB++
			case <-time.After(10 * time.Second):
				t.Fatalf("%s call %d reached no backend", method, i)
			}
		}
		return onA, onB
	}

	// (a) test.Svc moves to b, and a second route appears.
	v2 := fmt.Sprintf("- service: test.Svc\n  backends: [%[1]s]\n- service: other.Svc\n  backends: [%[1]s]\n  health_service: \"\"\n", b.Addr)
	write(listen, v2)
	hup()
	stderr.waitLog(t, 1, "configuration reloaded", "routes=2")
	testutil.WaitFor(t, 15*time.Second, "/backends to show test.Svc on b and the new route other.Svc", func() bool {
		return sameRoutes(routableBackends(t, admin), map[string][]string{"test.Svc": {b.Addr}, "other.Svc": {b.Addr}})
	})
	if onA, onB := calls(cc, "/test.Svc/Echo", 10); onA != 0 || onB != 10 {
		t.Fatalf("after the reload: %d calls on a, %d on b; want all 10 on b", onA, onB)
	}
	if onA, onB := calls(cc, "/other.Svc/Echo", 3); onA != 0 || onB != 3 {
		t.Fatalf("the new route: %d calls on a, %d on b; want all 3 on b", onA, onB)
	}
	if err := echo("after the reload"); err != nil {
		t.Fatalf("the stream opened on a before the reload broke: %v", err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var m []byte
	if err := stream.RecvMsg(&m); !errors.Is(err, io.EOF) {
		t.Fatalf("the stream on a ended with %v, want OK", err)
	}
	if call := a.NextCall(t); call.Method != "/test.Svc/Echo" || len(call.Messages) != 2 || call.Err != nil {
		t.Fatalf("backend a saw %s with %d messages (err %v), want the stream's 2 messages", call.Method, len(call.Messages), call.Err)
	}
	running("after a valid reload")

	// (b) an invalid file is rejected, naming the field; the running
	// config stays.
	write(listen, fmt.Sprintf("- service: test.Svc\n  backends: [%s]\n  policy: random\n", a.Addr))
	hup()
	stderr.waitLog(t, 1, "reload rejected", "routes[0].policy")
	if onA, onB := calls(cc, "/test.Svc/Echo", 5); onA != 0 || onB != 5 {
		t.Fatalf("after a rejected reload: %d calls on a, %d on b; want all 5 on b, as before it", onA, onB)
	}
	if got := routableBackends(t, admin); !sameRoutes(got, map[string][]string{"test.Svc": {b.Addr}, "other.Svc": {b.Addr}}) {
		t.Fatalf("/backends after a rejected reload: %v, want the running config's routes", got)
	}
	if n := len(stderr.lines("configuration reloaded")); n != 1 {
		t.Fatalf("%d reloads logged, want 1: the invalid file must not be applied", n)
	}
	running("after an invalid config")

	// (c) a new listen address needs a restart: the gateway says so and
	// keeps serving where it is.
	newListen := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	write(newListen, v2)
	hup()
	stderr.waitLog(t, 1, "need a restart", "fields=listen")
	fresh := testutil.Dial(t, listen)
	if onA, onB := calls(fresh, "/test.Svc/Echo", 3); onA != 0 || onB != 3 {
		t.Fatalf("on the old address after the listen change: %d calls on a, %d on b", onA, onB)
	}
	if c, err := net.DialTimeout("tcp", newListen, time.Second); err == nil {
		c.Close()
		t.Fatalf("something listens on %s: the listen change was applied without a restart", newListen)
	}
	running("after a listen change")

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if p.waitErr != nil {
			t.Fatalf("healthgate exited with %v after SIGTERM, want 0", p.waitErr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("healthgate did not exit after SIGTERM")
	}
}
