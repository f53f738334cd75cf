package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/gatewaytest"
	"github.com/healthgate/healthgate/internal/testutil"
)

// startInProcessGateway runs a gateway in this process until the test ends and
// waits until it routes its one route.
func startInProcessGateway(t *testing.T, backend string) string {
	t.Helper()
	g := gatewaytest.Start(t, config.Config{
		Routes: []config.Route{{Service: testutil.TestService, Backends: []string{backend}}},
	}, nil)
	g.WaitRoutable(t, testutil.TestService, 1)
	return g.Addr
}

func TestProbeExitCodes(t *testing.T) {
	be := testutil.StartBackend(t)
	be.Health.SetServingStatus("down.Svc", healthpb.HealthCheckResponse_NOT_SERVING)
	gw := startInProcessGateway(t, be.Addr)
	nothing := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))

	cases := []struct {
		name string
		args []string
		code int
		// stdout and stderr are substrings the output must contain;
		// noStdout and emptyError ask for no output at all.
		stdout, stderr       string
		noStdout, emptyError bool
		// minTook and maxTook bound how long the probe may take.
		minTook, maxTook time.Duration
	}{
		{name: "backend serving", args: []string{"-addr", be.Addr, "-service", testutil.TestService, "-timeout", "5s"},
			code: probeServing, stdout: be.Addr + ` service "test.Svc" is SERVING`, emptyError: true},
		{name: "backend as a whole", args: []string{"-addr", be.Addr, "-timeout", "5s"},
			code: probeServing, stdout: be.Addr + ` service "" is SERVING`, emptyError: true},
		{name: "backend not serving", args: []string{"-addr", be.Addr, "-service", "down.Svc", "-timeout", "5s"},
			code: probeUnhealthy, stderr: `service "down.Svc" is NOT_SERVING`, noStdout: true},
		{name: "gateway routes the service", args: []string{"-addr", gw, "-service", testutil.TestService, "-timeout", "5s"},
			code: probeServing, stdout: gw + ` service "test.Svc" is SERVING`, emptyError: true},
		{name: "gateway does not know the service", args: []string{"-addr", gw, "-service", "nope.Svc", "-timeout", "5s"},
			code: probeRPCFailed, stderr: gw + ": NotFound", noStdout: true},
		{name: "nothing listening", args: []string{"-addr", nothing, "-timeout", "300ms"},
			code: probeConnFailed, stderr: "no answer within 300ms", noStdout: true,
			minTook: 300 * time.Millisecond, maxTook: 5 * time.Second},
		{name: "bad flag", args: []string{"-bogus"}, code: probeBadArgs, stderr: "flag provided but not defined: -bogus", noStdout: true},
		{name: "bad timeout", args: []string{"-timeout", "soon"}, code: probeBadArgs, stderr: "-timeout", noStdout: true},
		{name: "zero timeout", args: []string{"-timeout", "0s"}, code: probeBadArgs, stderr: "usage", noStdout: true},
		{name: "extra argument", args: []string{"-addr", be.Addr, "extra"}, code: probeBadArgs, stderr: "usage", noStdout: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			start := time.Now()
			code := probe(tc.args, &out, &errOut)
			took := time.Since(start)
			if code != tc.code {
				t.Fatalf("probe %q: exit %d, want %d\nstdout: %s\nstderr: %s", tc.args, code, tc.code, out.String(), errOut.String())
			}
			if tc.stdout != "" && !strings.Contains(out.String(), tc.stdout) {
				t.Errorf("stdout %q, want it to contain %q", out.String(), tc.stdout)
			}
			if tc.noStdout && out.Len() != 0 {
				t.Errorf("stdout %q, want nothing", out.String())
			}
			if tc.stderr != "" && !strings.Contains(errOut.String(), tc.stderr) {
				t.Errorf("stderr %q, want it to contain %q", errOut.String(), tc.stderr)
			}
			if tc.emptyError && errOut.Len() != 0 {
				t.Errorf("stderr %q, want nothing", errOut.String())
			}
			if took < tc.minTook || (tc.maxTook > 0 && took > tc.maxTook) {
				t.Errorf("took %v, want between %v and %v", took, tc.minTook, tc.maxTook)
			}
		})
	}
}
