// Command healthgate-demo runs the gRPC health-checking article's scenario
// through healthgate: a real Consul agent, two example Login backends that
// register themselves with a route tag, and a healthgate with no config file
// that learns its route from that tag. One client, never restarted, calls
// through the gateway while the backends flip health.
//
// With -tls the same story runs over TLS at both hops: the client verifies
// the gateway's certificate, and the gateway dials the backends with mTLS
// (backend_tls), every certificate from a demo CA made on the spot.
//
// With -keep the stack stays up for grpcurl until Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/example/authpb"
	"github.com/healthgate/healthgate/example/authserver"
)

const (
	consulHTTP = "127.0.0.1:18500"
	gatewayAt  = "127.0.0.1:9000"
	adminAt    = "127.0.0.1:9901"
)

var backends = []struct{ name, grpc, http string }{
	{"backend-1", "127.0.0.1:8080", "127.0.0.1:8082"},
	{"backend-2", "127.0.0.1:8081", "127.0.0.1:8083"},
}

func main() {
	consulBin := flag.String("consul-bin", "", "path to the consul binary (make demo passes the cached one)")
	binDir := flag.String("bin", "bin", "directory holding healthgate and example-backend")
	keep := flag.Bool("keep", false, "leave the stack running until Ctrl-C instead of running the scenario")
	useTLS := flag.Bool("tls", false, "TLS from the client to healthgate and mTLS from healthgate to the backends, with a demo CA")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *consulBin, *binDir, *keep, *useTLS); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

// stack is the processes the demo started; stop ends them in reverse order.
type stack struct {
	logDir string
	procs  []*exec.Cmd
}

func (s *stack) start(name string, args ...string) error {
	f, err := os.Create(filepath.Join(s.logDir, filepath.Base(name)+"-"+fmt.Sprint(len(s.procs))+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	s.procs = append(s.procs, cmd)
	return nil
}

func (s *stack) stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		p.Process.Signal(syscall.SIGTERM) //nolint:errcheck // it may be gone already
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }() //nolint:errcheck // exit status is not the demo's concern
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.Process.Kill() //nolint:errcheck // last resort
			<-done
		}
	}
}

func step(format string, args ...any) {
	fmt.Printf("\n== "+format+"\n", args...)
}

func say(format string, args ...any) {
	fmt.Printf("%s  "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

func run(ctx context.Context, consulBin, binDir string, keep, useTLS bool) error {
	if consulBin == "" {
		return errors.New("-consul-bin is required")
	}
	for _, addr := range append([]string{consulHTTP, gatewayAt, adminAt}, backends[0].grpc, backends[0].http, backends[1].grpc, backends[1].http) {
		if l, err := net.Listen("tcp", addr); err != nil {
			return fmt.Errorf("port %s is in use; stop what holds it and run again: %w", addr, err)
		} else {
			l.Close()
		}
	}
	logDir, err := os.MkdirTemp("", "healthgate-demo-")
	if err != nil {
		return err
	}
	s := &stack{logDir: logDir}
	defer s.stop()

	// d is nil in the plaintext demo.
	var d *demoTLS
	if useTLS {
		step("making a demo CA and certificates (ECDSA P-256) in %s", filepath.Join(logDir, "tls"))
		if d, err = newDemoTLS(filepath.Join(logDir, "tls"), len(backends)); err != nil {
			return fmt.Errorf("certificates: %w", err)
		}
		say("CA %s; server certificates for healthgate and each backend (127.0.0.1, localhost)", d.caFile)
		say("client certificates: %q for healthgate to the backends, %q for Consul's checks", gatewayClientCN, consulAgentCN)
	}

	_, port, _ := net.SplitHostPort(consulHTTP)
	consulArgs := []string{consulBin, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", port, "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-serf-lan-port", "18301", "-serf-wan-port", "18302", "-server-port", "18300"}
	if d != nil {
		step("starting a local Consul agent (consul agent -dev on %s) whose checks present its demo certificate (enable_agent_tls_for_checks)", consulHTTP)
		consulArgs = append(consulArgs, d.consulArgs()...)
	} else {
		step("starting a local Consul agent (consul agent -dev on %s)", consulHTTP)
	}
	if err := s.start("consul", consulArgs...); err != nil {
		return err
	}
	if err := waitHTTP(ctx, "http://"+consulHTTP+"/v1/status/leader", `"`); err != nil {
		return fmt.Errorf("consul: %w (logs in %s)", err, logDir)
	}
	say("consul is up")

	if d != nil {
		step("starting two example Login backends serving gRPC over mTLS (a client certificate from the demo CA is required); each registers itself in Consul with meta %s=true", authserver.MetaTLS)
	} else {
		step("starting two example Login backends; each registers itself in Consul with tag %q", authserver.RouteTag)
	}
	for i, b := range backends {
		args := []string{filepath.Join(binDir, "example-backend"), "-grpc", b.grpc, "-http", b.http, "-consul", consulHTTP, "-id", "auth-" + b.name}
		if d != nil {
			args = append(args, d.backendArgs(i)...)
		}
		if err := s.start("example-backend", args...); err != nil {
			return err
		}
		say("%s: gRPC %s, /update on http://%s/update", b.name, b.grpc, b.http)
	}
	if d != nil {
		if err := showBackendsTLS(ctx, d); err != nil {
			return fmt.Errorf("%w (logs in %s)", err, logDir)
		}
	}

	gwArgs := []string{filepath.Join(binDir, "healthgate"), "-listen", gatewayAt, "-admin", adminAt, "-consul", consulHTTP}
	if d != nil {
		path, text, err := d.gatewayConfig()
		if err != nil {
			return err
		}
		step("starting healthgate on %s with TLS on its listener and a route that dials the backends with mTLS (%s):", gatewayAt, path)
		fmt.Print(indent(text))
		gwArgs = append(gwArgs, "-config", path)
	} else {
		step("starting healthgate on %s with no config file: routes come from the Consul tags", gatewayAt)
	}
	if err := s.start("healthgate", gwArgs...); err != nil {
		return err
	}

	cc, err := grpc.NewClient(gatewayAt, clientCreds(d))
	if err != nil {
		return err
	}
	defer cc.Close()
	client := authpb.NewAuthorizationClient(cc)
	gwHealth := healthpb.NewHealthClient(cc)

	if err := waitGateway(ctx, gwHealth, authserver.HealthService, healthpb.HealthCheckResponse_SERVING); err != nil {
		return fmt.Errorf("healthgate never reported %s SERVING: %w (logs in %s)", authserver.HealthService, err, logDir)
	}
	say("healthgate reports %s SERVING", authserver.HealthService)
	if d != nil {
		var p peer.Peer
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := gwHealth.Check(cctx, &healthpb.HealthCheckRequest{Service: authserver.HealthService}, grpc.Peer(&p))
		cancel()
		if err != nil {
			return fmt.Errorf("health check over TLS: %w", err)
		}
		info, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok {
			return fmt.Errorf("the client's connection to healthgate is not TLS (%T)", p.AuthInfo)
		}
		say("client -> healthgate: %s", describeConn(info.State))
	}

	if keep {
		fmt.Printf("\nThe stack is running (logs in %s). Try:\n", logDir)
		if d != nil {
			// The gateway's reflection lists its routes and describes
			// them with the backends' own descriptors: no .proto needed.
			fmt.Printf("  grpcurl -cacert %s %s list\n", d.caFile, gatewayAt)
			fmt.Printf("  grpcurl -cacert %s -d '{\"email\":\"admin@admin.com\",\"password\":\"123456\"}' %s example.auth.v1.Authorization/Login\n", d.caFile, gatewayAt)
		} else {
			fmt.Printf("  grpcurl -plaintext %s list\n", gatewayAt)
			fmt.Printf("  grpcurl -plaintext %s describe example.auth.v1.Authorization\n", gatewayAt)
			fmt.Printf("  grpcurl -plaintext -d '{\"email\":\"admin@admin.com\",\"password\":\"123456\"}' %s example.auth.v1.Authorization/Login\n", gatewayAt)
			fmt.Printf("  bin/healthgate probe -addr %s -service %s\n", gatewayAt, authserver.HealthService)
		}
		fmt.Printf("  curl http://%s/backends    # or open http://%s/ for the status page\n", adminAt, adminAt)
		fmt.Printf("  curl http://%s/update    # brings backend-1 back after a wrong password\n", backends[0].http)
		fmt.Println("Ctrl-C stops everything.")
		<-ctx.Done()
		return nil
	}

	// Both backends must be in rotation before the story starts.
	if err := waitBothServe(ctx, client); err != nil {
		return err
	}

	step("the client calls Login through healthgate (one address, one connection)")
	login(ctx, client, "", "")
	for range 4 {
		login(ctx, client, "admin@admin.com", "123456")
	}

	step("a wrong password flips the backend that served it to NOT_SERVING")
	first := login(ctx, client, "admin@admin.com", "12345623")
	if err := waitBackend(ctx, d, first, healthpb.HealthCheckResponse_NOT_SERVING); err != nil {
		return err
	}
	say("%s now reports NOT_SERVING; healthgate's Watch stream on it saw that within milliseconds", first)
	for range 4 {
		if by := login(ctx, client, "admin@admin.com", "123456"); by == first {
			return fmt.Errorf("a call went to %s after it reported NOT_SERVING", first)
		}
	}

	step("a wrong password on the other backend: none is left")
	second := login(ctx, client, "admin@admin.com", "12345623")
	if err := waitGateway(ctx, gwHealth, authserver.HealthService, healthpb.HealthCheckResponse_NOT_SERVING); err != nil {
		return err
	}
	say("healthgate reports %s NOT_SERVING (%s and %s are both out)", authserver.HealthService, first, second)
	start := time.Now()
	if by := login(ctx, client, "admin@admin.com", "123456"); by != "" {
		return fmt.Errorf("a call succeeded on %s with no healthy backend", by)
	}
	say("that failure took %s: no backend stream was opened", time.Since(start).Round(10*time.Microsecond))

	step("/update on %s brings it back, with no restart of the client or the gateway", first)
	if err := update(ctx, first); err != nil {
		return err
	}
	if err := waitGateway(ctx, gwHealth, authserver.HealthService, healthpb.HealthCheckResponse_SERVING); err != nil {
		return err
	}
	say("healthgate reports %s SERVING again", authserver.HealthService)
	for range 3 {
		if by := login(ctx, client, "admin@admin.com", "123456"); by != first {
			return fmt.Errorf("want calls on %s, the only healthy backend; got %q", first, by)
		}
	}

	step("/update on %s: both in rotation again", second)
	if err := update(ctx, second); err != nil {
		return err
	}
	if err := waitBackend(ctx, d, second, healthpb.HealthCheckResponse_SERVING); err != nil {
		return err
	}
	if err := waitBothServe(ctx, client); err != nil {
		return err
	}
	for range 4 {
		login(ctx, client, "admin@admin.com", "123456")
	}

	step("shutting down (logs were in %s)", logDir)
	return nil
}

// login calls Login through the gateway, prints the outcome the way the
// article's client does, and returns the backend that answered ("" on error).
func login(ctx context.Context, c authpb.AuthorizationClient, email, password string) string {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var hdr metadata.MD
	res, err := c.Login(ctx, &authpb.LoginRequest{Email: email, Password: password}, grpc.Header(&hdr))
	if err != nil {
		st := status.Convert(err)
		say("Login(%q, %q) error: code = %s desc = %s", email, password, st.Code(), st.Message())
		return ""
	}
	by := strings.Join(hdr.Get(authserver.BackendHeader), ",")
	user := "<nil>"
	if u := res.GetUser(); u != nil {
		user = fmt.Sprintf("{id:%d username:%s}", u.GetId(), u.GetUsername())
	}
	via := ""
	if t := hdr.Get(authserver.BackendTLSHeader); len(t) > 0 {
		via = " over " + strings.Join(t, ",")
	}
	say("Login(%q, %q) -> %q, user %s   [served by %s%s]", email, password, res.GetMessage(), user, by, via)
	return by
}

func waitBothServe(ctx context.Context, c authpb.AuthorizationClient) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	seen := map[string]bool{}
	for len(seen) < len(backends) {
		var hdr metadata.MD
		if _, err := c.Login(ctx, &authpb.LoginRequest{Email: "admin@admin.com", Password: "123456"}, grpc.Header(&hdr)); err == nil {
			seen[strings.Join(hdr.Get(authserver.BackendHeader), ",")] = true
		}
		if ctx.Err() != nil {
			return fmt.Errorf("both backends never served through the gateway (saw %v)", seen)
		}
	}
	return nil
}

// waitGateway follows the gateway's own health Watch until want.
func waitGateway(ctx context.Context, h healthpb.HealthClient, svc string, want healthpb.HealthCheckResponse_ServingStatus) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		stream, err := h.Watch(ctx, &healthpb.HealthCheckRequest{Service: svc}, grpc.WaitForReady(true))
		if err == nil {
			for {
				resp, err := stream.Recv()
				if err != nil {
					break
				}
				if resp.GetStatus() == want {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gateway health for %q never became %s", svc, want)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitBackend follows a backend's own health Watch until want, the same
// signal healthgate follows.
func waitBackend(ctx context.Context, d *demoTLS, addr string, want healthpb.HealthCheckResponse_ServingStatus) error {
	creds, err := backendCreds(d)
	if err != nil {
		return err
	}
	cc, err := grpc.NewClient(addr, creds)
	if err != nil {
		return err
	}
	defer cc.Close()
	if err := waitGateway(ctx, healthpb.NewHealthClient(cc), authserver.HealthService, want); err != nil {
		return fmt.Errorf("backend %s: %w", addr, err)
	}
	// The gateway watches the same stream; give its update the moment it
	// needs to land, so the next calls show the new rotation.
	select {
	case <-ctx.Done():
	case <-time.After(50 * time.Millisecond):
	}
	return nil
}

func update(ctx context.Context, grpcAddr string) error {
	for _, b := range backends {
		if b.grpc != grpcAddr {
			continue
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.http+"/update", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("update %s: %w", b.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		say("GET http://%s/update -> %d %s", b.http, resp.StatusCode, strings.TrimSpace(string(body)))
		return nil
	}
	return fmt.Errorf("no backend at %s", grpcAddr)
}

func waitHTTP(ctx context.Context, url, bodyHas string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && strings.Contains(string(body), bodyHas) && len(strings.Trim(string(body), "\" \n")) > 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready within 30s", url)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// showBackendsTLS shows the backends' side of mTLS: Consul's gRPC check of
// each passes over TLS with the agent's certificate, and a client without
// a certificate is refused at the handshake.
func showBackendsTLS(ctx context.Context, d *demoTLS) error {
	ids := make([]string, len(backends))
	for i, b := range backends {
		ids[i] = "auth-" + b.name
	}
	outputs, err := waitConsulChecks(ctx, ids)
	if err != nil {
		return err
	}
	for i, b := range backends {
		say("%s: Consul's gRPC check over mTLS (client certificate CN=%s) passes: %q", b.name, consulAgentCN, outputs[ids[i]])
	}
	err = refusedWithoutCert(ctx, d, backends[0].grpc)
	if err == nil {
		return fmt.Errorf("%s served a client without a certificate", backends[0].name)
	}
	say("a TLS client without a certificate calling %s directly is refused: %v", backends[0].name, err)
	return nil
}

func indent(text string) string {
	return "    " + strings.ReplaceAll(strings.TrimSuffix(text, "\n"), "\n", "\n    ") + "\n"
}
