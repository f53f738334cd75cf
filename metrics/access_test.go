package metrics

import (
	"bytes"
	"log/slog"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/healthgate/healthgate/proxy"
)

// TestAccessLogTraceAndPeer: the access log line names the client's
// address and the call's trace ID when the call has them, and leaves them
// out otherwise.
func TestAccessLogTraceAndPeer(t *testing.T) {
	var buf bytes.Buffer
	m := New(slog.New(slog.NewTextHandler(&buf, nil)))
	peer := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 50123}
	for _, c := range []proxy.CallInfo{
		{FullMethod: "/a.S/M", Routed: true, Code: codes.OK, Peer: peer, TraceID: "4bf92f3577b34da6a3ce929d0e0e4736"},
		{FullMethod: "/a.S/M", Routed: true, Code: codes.OK},
	} {
		m.CallStarted()
		m.CallFinished(c)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d access log lines, want 2", len(lines))
	}
	if want := "peer=192.0.2.7:50123 trace_id=4bf92f3577b34da6a3ce929d0e0e4736"; !strings.Contains(lines[0], want) {
		t.Errorf("access line: %s, want %q in it", lines[0], want)
	}
	if strings.Contains(lines[1], "peer=") || strings.Contains(lines[1], "trace_id=") {
		t.Errorf("access line of a call without peer or trace: %s, want neither field", lines[1])
	}
}
