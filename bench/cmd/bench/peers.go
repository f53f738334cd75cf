package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/healthgate/healthgate/bench/internal/rawcodec"
	"github.com/healthgate/healthgate/bench/internal/tlsfiles"
)

// Peers in table order. direct is the client calling the backend itself: the
// floor every proxy is compared with. tcp-splice forwards bytes and does
// nothing else (cmd/splice): what any process between client and backend
// costs them on this machine. The healthgate peers are one binary and one
// config, differing in proxy.engine and, for healthgate-relay-policy, in
// the route's traffic policy.
var allPeers = []string{"direct", splicePeer, "healthgate-relay", "healthgate-grpc", "healthgate-relay-policy", "grpc-proxy", "nginx", "haproxy"}

// splicePeer is the TCP forwarder: a reference, like direct, rather than a
// proxy the others compete with (it is no ×best), and absent where the
// peers terminate TLS, which it cannot.
const splicePeer = "tcp-splice"

// isReference tells whether p is a reference rather than a proxy.
func isReference(p string) bool { return p == "direct" || p == splicePeer }

// healthgatePeer is how one healthgate peer's config differs from the
// others'.
type healthgatePeer struct {
	engine string // proxy.engine
	// policy turns on the route's retries and limits, set so that none
	// ever acts on the bench's healthy traffic (see policyRoute).
	policy bool
	// togetherOnly: the peer answers one question, asked by the together
	// workloads that name it, and is measured in no other.
	togetherOnly bool
}

// healthgatePeers are the healthgate peers by name.
var healthgatePeers = map[string]healthgatePeer{
	"healthgate-relay":        {engine: "relay"},
	"healthgate-grpc":         {engine: "grpc"},
	"healthgate-relay-policy": {engine: "relay", policy: true, togetherOnly: true},
}

// peerAliases are names -peers accepts for several peers at once.
// healthgate stays the two engines as configured by default: the policy
// peer answers a narrower question (what the policies cost the relay), and
// is asked for by name or with the default peer list.
var peerAliases = map[string][]string{
	"healthgate": {"healthgate-relay", "healthgate-grpc"},
}

// isHealthgate tells whether peer runs healthgate.
func isHealthgate(peer string) bool {
	_, ok := healthgatePeers[peer]
	return ok
}

// startPatience bounds a start-up; healthgate's first health Watch answer is
// well inside it.
const startPatience = 20 * time.Second

// Every proxy gets CPU 0 to itself; the backend and the load generator
// share CPU 1, so a proxy's cost shows as its own CPU time and as the
// latency it adds, not as contention with the client.
const (
	proxyCPU = "0"
	loadCPU  = "1"
)

// env is what starting peers needs: built binaries, tools, ports, a place
// for configs and logs.
type env struct {
	sup     *supervisor
	tmp     string
	bins    map[string]string // backend, grpcproxy, loadgen, healthgate, healthgate-pprof: every healthgate peer runs healthgate
	tools   map[string]string // nginx, haproxy: absolute paths
	missing map[string]string // peer -> why it cannot run at all
	nginxV  [3]int
	ports   portPool
	seq     int
	// certs and clientTLS serve the TLS workloads; nil when none runs.
	certs     *tlsfiles.Files
	clientTLS *tls.Config
}

// writeCerts makes the TLS workloads' CA and server certificate in the
// temp dir: fresh for every run, so that nothing outside it is trusted or
// kept.
func (e *env) writeCerts() error {
	dir := filepath.Join(e.tmp, "tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := tlsfiles.Write(dir, 24*time.Hour)
	if err != nil {
		return err
	}
	cfg, err := tlsfiles.ClientConfig(f.CA)
	if err != nil {
		return err
	}
	e.certs, e.clientTLS = &f, cfg
	return nil
}

// logPath names a fresh log file in the temp dir.
func (e *env) logPath(name string) string {
	e.seq++
	return filepath.Join(e.tmp, fmt.Sprintf("%03d-%s.log", e.seq, name))
}

// running is a started peer: where clients call it and which process tree
// does its work (nil for direct).
type running struct {
	addr string
	proc *proc
	// tls is the client side of calls to addr; nil means plaintext h2c.
	tls *tls.Config
	// tlsAddr is where a backend started for a TLS workload serves the
	// same over TLS: direct's address in that workload.
	tlsAddr string
}

// startBackend starts the bench backend pinned with the load generator;
// withTLS adds its TLS listener.
func (e *env) startBackend(ctx context.Context, respSize int, withTLS bool) (*running, error) {
	addr, err := e.ports.addr()
	if err != nil {
		return nil, err
	}
	argv := []string{e.bins["backend"], "-listen", addr, "-resp-size", strconv.Itoa(respSize)}
	var tlsAddr string
	if withTLS {
		if tlsAddr, err = e.ports.addr(); err != nil {
			return nil, err
		}
		argv = append(argv, "-tls-listen", tlsAddr, "-tls-cert", e.certs.Cert, "-tls-key", e.certs.Key)
	}
	p, err := e.sup.start("backend", e.logPath("backend"), startOpts{cpu: loadCPU}, argv...)
	if err != nil {
		return nil, err
	}
	r := &running{addr: addr, proc: p, tlsAddr: tlsAddr}
	if err := probe(ctx, r, startPatience); err != nil {
		p.stop(2 * time.Second)
		e.sup.forget(p)
		return nil, fmt.Errorf("backend: %w", err)
	}
	return r, nil
}

// peerOpts are additions for one start of a peer: the profile run's, and
// TLS for the TLS workloads.
type peerOpts struct {
	env  []string
	args []string
	// bin replaces the peer's binary (a key of env.bins): the profiling
	// hook's healthgate build.
	bin string
	// tls: the peer terminates TLS from clients with e.certs and still
	// calls the backend over h2c.
	tls bool
}

// startPeer starts one peer in front of backend and waits until a call
// through it succeeds.
func (e *env) startPeer(ctx context.Context, name string, be *running, po peerOpts) (*running, error) {
	if po.tls && e.certs == nil {
		return nil, errors.New("a TLS peer without certificates: writeCerts was not called")
	}
	if name == "direct" {
		if !po.tls {
			return &running{addr: be.addr}, nil
		}
		r := &running{addr: be.tlsAddr, tls: e.clientTLS}
		return r, probe(ctx, r, startPatience)
	}
	var certs *tlsfiles.Files
	if po.tls {
		certs = e.certs
	}
	backend := be.addr
	addr, err := e.ports.addr()
	if err != nil {
		return nil, err
	}
	e.seq++
	dir := filepath.Join(e.tmp, fmt.Sprintf("%03d-%s", e.seq, name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var argv []string
	bin := name
	switch name {
	case "healthgate-relay", "healthgate-grpc", "healthgate-relay-policy":
		exe := e.bins["healthgate"]
		if po.bin != "" {
			exe = e.bins[po.bin]
		}
		cfg := filepath.Join(dir, "healthgate.yaml")
		if err := os.WriteFile(cfg, []byte(healthgateConfig(addr, backend, healthgatePeers[name], certs)), 0o644); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		argv = []string{exe, "-config", cfg}
	case splicePeer:
		bin = "splice"
		argv = []string{e.bins["splice"], "-listen", addr, "-backend", backend}
	case "grpc-proxy":
		bin = "grpcproxy"
		argv = []string{e.bins["grpcproxy"], "-listen", addr, "-backend", backend}
		if certs != nil {
			argv = append(argv, "-tls-cert", certs.Cert, "-tls-key", certs.Key)
		}
	case "nginx":
		cfg := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(cfg, []byte(nginxConfig(dir, addr, backend, e.nginxV, certs)), 0o644); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		// -e: nginx opens its compiled-in error log before it reads the
		// config; stderr keeps it away from /var/log.
		argv = []string{e.tools["nginx"], "-p", dir + "/", "-c", cfg, "-e", "stderr"}
	case "haproxy":
		cfg := filepath.Join(dir, "haproxy.cfg")
		if err := os.WriteFile(cfg, []byte(haproxyConfig(addr, backend, certs)), 0o644); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		argv = []string{e.tools["haproxy"], "-db", "-f", cfg}
	default:
		return nil, fmt.Errorf("unknown peer %q", name)
	}
	argv = append(argv, po.args...)
	p, err := e.sup.start(name, e.logPath(bin), startOpts{cpu: proxyCPU, env: po.env}, argv...)
	if err != nil {
		return nil, err
	}
	r := &running{addr: addr, proc: p}
	if certs != nil {
		r.tls = e.clientTLS
	}
	if err := probe(ctx, r, startPatience); err != nil {
		p.stop(2 * time.Second)
		e.sup.forget(p)
		return nil, err
	}
	return r, nil
}

// healthgateConfig routes to backend as hp says; with certs, it
// terminates TLS 1.3 on listen.
func healthgateConfig(listen, backend string, hp healthgatePeer, certs *tlsfiles.Files) string {
	var tlsSection, policy string
	if certs != nil {
		tlsSection = fmt.Sprintf("listen_tls: {cert_file: %q, key_file: %q, min_version: \"1.3\"}\n", certs.Cert, certs.Key)
	}
	if hp.policy {
		policy = policyRoute
	}
	// Short drain: the runner stops healthgate between workloads.
	return fmt.Sprintf(`listen: %s
%sroutes:
  - service: bench.Echo
    backends: [%s]
    health_service: ""
%sproxy: {engine: %s}
shutdown: {drain_delay: 1ms, grace: 1s}
log: {level: warn}
`, listen, tlsSection, backend, policy, hp.engine)
}

// policyRoute turns on the retries and limits of a route (issue 11: "proxy
// CPU per RPC with retries/limits enabled vs disabled"; README, "Traffic
// policy"), each set so that the bench's traffic, healthy and far below
// every limit, never triggers it while every call still runs its code: the
// retry keeps the request until the answer's headers and counts the call
// in the route's budget, max_in_flight counts the backend's calls, and rate
// takes a token from the route's bucket. The echo backend never answers
// UNAVAILABLE, 100000 is far beyond the 500 calls in flight at most, and
// 10^7 calls a second far beyond what one core proxies. Timeouts are not
// here: a route's timeout gives every call a deadline, which costs what a
// client's own deadline costs (a timer per call at the gateway, and
// grpc-timeout for the backend to keep), not a policy's code; README
// "Traffic policy" gives that cost apart.
const policyRoute = `    retry:
      codes: [UNAVAILABLE]
      max_attempts: 3
      budget: {ratio: 0.2, min_per_second: 10}
      buffer_bytes: 64KiB
    max_in_flight: 100000
    rate: {per_second: 10000000, burst: 10000000}
`

// nginxConfig proxies to backend; with certs, it terminates TLS on listen
// with what the other peers negotiate (see tlsfiles.ClientConfig).
func nginxConfig(dir, listen, backend string, v [3]int, certs *tlsfiles.Files) string {
	ssl, tlsLines := "", ""
	if certs != nil {
		ssl = " ssl"
		tlsLines = fmt.Sprintf(`ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519;
        # TLS 1.3 suites are not ssl_ciphers' business; this is OpenSSL's own
        # setting, to match the suite Go picks.
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;`, certs.Cert, certs.Key)
	}
	// nginx 1.25.1 replaced "listen ... http2" with "http2 on".
	listenLine, http2Line := "listen "+listen+ssl+" http2;", ""
	if v[0] > 1 || (v[0] == 1 && (v[1] > 25 || (v[1] == 25 && v[2] >= 1))) {
		listenLine, http2Line = "listen "+listen+ssl+";", "http2 on;"
	}
	return fmt.Sprintf(`# Written by the healthgate bench runner; lives and dies with one run.
daemon off;
master_process on;
worker_processes 1;
# The worker runs as the runner's user, so it can use the temp dirs below.
user %[6]s;
pid %[1]s/nginx.pid;
error_log stderr warn;

# worker_connections counts client and upstream connections alike; at
# unary-c500 nginx holds 100 client connections and one upstream connection
# per call in flight (500), each a file descriptor.
worker_rlimit_nofile 16384;

events {
    worker_connections 8192;
}

http {
    access_log off;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    # The 1 MiB workload sends bodies over the 1m default.
    client_max_body_size 0;
    # On HTTP/2 this caps the requests of one client connection (default
    # 1000, then GOAWAY): lifted so clients keep their connections.
    keepalive_requests 1000000000;
    keepalive_timeout 600s;

    upstream bench_backend {
        server %[3]s;
        # Idle upstream connections kept for reuse; nginx still opens one
        # per call in flight, as it speaks one call per upstream connection.
        # Above the most calls in flight of any workload (500), so that a
        # finished call's connection is kept for the next, never closed.
        keepalive 1024;
        keepalive_requests 1000000000;
        keepalive_timeout 600s;
    }

    server {
        %[4]s
        %[5]s
        %[7]s
        location / {
            grpc_pass grpc://bench_backend;
            grpc_read_timeout 600s;
            grpc_send_timeout 600s;
        }
    }
}
`, dir, listen, backend, listenLine, http2Line, nginxUser(), tlsLines)
}

func nginxUser() string {
	if os.Geteuid() == 0 {
		return "root root"
	}
	// Ignored with a warning when not root; any valid name will do.
	return "nobody"
}

// haproxyConfig proxies to backend; with certs, it terminates TLS on listen
// with what the other peers negotiate (see tlsfiles.ClientConfig).
func haproxyConfig(listen, backend string, certs *tlsfiles.Files) string {
	bind := "proto h2"
	if certs != nil {
		bind = "ssl crt " + certs.CertKey + " alpn h2 ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256 curves X25519"
	}
	return fmt.Sprintf(`# Written by the healthgate bench runner; lives and dies with one run.
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    http-reuse always

frontend bench
    bind %s %s
    default_backend bench_backend

backend bench_backend
    server backend %s proto h2
`, listen, bind, backend)
}

// probe calls Unary through r until it answers, r's process exits, or
// patience runs out: healthgate listens at once but routes only once the
// backend's Watch says SERVING.
func probe(ctx context.Context, r *running, patience time.Duration) error {
	deadline := time.Now().Add(patience)
	// Wait for the listener first: a gRPC client whose first connect fails
	// backs off for a second before it tries again.
	for {
		c, err := net.DialTimeout("tcp", r.addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if r.proc != nil && r.proc.exited() {
			return fmt.Errorf("exited during start-up: %v%s", r.proc.waitErr, r.proc.logTail())
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s after %s: %w%s", r.addr, patience, err, tailOf(r))
		}
		time.Sleep(20 * time.Millisecond)
	}
	payload, err := rawcodec.Payload(100)
	if err != nil {
		return err
	}
	creds := insecure.NewCredentials()
	if r.tls != nil {
		creds = credentials.NewTLS(r.tls)
	}
	cc, err := grpc.NewClient("passthrough:///"+r.addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawcodec.Codec{})))
	if err != nil {
		return err
	}
	defer cc.Close()
	var last error
	for time.Now().Before(deadline) {
		if r.proc != nil && r.proc.exited() {
			return fmt.Errorf("exited during start-up: %v%s", r.proc.waitErr, r.proc.logTail())
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		var got rawcodec.Size
		last = cc.Invoke(cctx, "/bench.Echo/Unary", &payload, &got)
		cancel()
		if last == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no answer through %s in %s: %w%s", r.addr, patience, last, tailOf(r))
}

func tailOf(r *running) string {
	if r.proc == nil {
		return ""
	}
	return r.proc.logTail()
}

// portPool hands out free loopback ports in 20000-28999: above that, Linux
// hands out ephemeral ports for outgoing connections.
type portPool struct{ used map[int]bool }

func (pp *portPool) addr() (string, error) {
	if pp.used == nil {
		pp.used = map[int]bool{}
	}
	for range 500 {
		port := 20000 + rand.IntN(9000)
		if pp.used[port] {
			continue
		}
		pp.used[port] = true
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		return l.Addr().String(), nil
	}
	return "", errors.New("no free port in 20000-28999")
}

// findTool looks in PATH and in the sbin directories a non-root PATH lacks.
func findTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// ensureTools finds nginx and haproxy, installing the missing ones from
// Debian's packages; a tool it cannot get becomes a MISSING peer.
func (e *env) ensureTools(ctx context.Context, want []string) {
	var missing []string
	for _, name := range want {
		if p := findTool(name); p != "" {
			e.tools[name] = p
		} else {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return
	}
	fail := func(why string) {
		for _, name := range missing {
			e.missing[name] = why
		}
	}
	if os.Geteuid() != 0 {
		fail("not installed; as root the runner would apt-get install -y " + strings.Join(missing, " "))
		return
	}
	if findTool("apt-get") == "" {
		fail("not installed, and there is no apt-get to install it")
		return
	}
	fmt.Fprintf(os.Stderr, "installing %s with apt-get\n", strings.Join(missing, " "))
	// RUNLEVEL=1 keeps invoke-rc.d from starting the packages' system
	// services where no policy-rc.d forbids it: the bench runs its own.
	o := startOpts{env: []string{"DEBIAN_FRONTEND=noninteractive", "RUNLEVEL=1"}}
	if err := e.sup.run(ctx, "apt-get update", e.logPath("apt-update"), o, "apt-get", "update"); err != nil {
		fail(fmt.Sprintf("apt-get update failed: %v", err))
		return
	}
	args := append([]string{"apt-get", "install", "-y", "--no-install-recommends"}, missing...)
	if err := e.sup.run(ctx, "apt-get install", e.logPath("apt-install"), o, args...); err != nil {
		fail(fmt.Sprintf("apt-get install failed: %v", err))
		return
	}
	for _, name := range missing {
		if p := findTool(name); p != "" {
			e.tools[name] = p
		} else {
			e.missing[name] = "still not found after apt-get install"
		}
	}
}

var versionRE = regexp.MustCompile(`(\d+)\.(\d+)(?:\.(\d+))?`)

// toolVersion is the first line of `tool -v`, which nginx prints on stderr.
func toolVersion(path string) string {
	out, _ := exec.Command(path, "-v").CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

func parseVersion(s string) [3]int {
	var v [3]int
	m := versionRE.FindStringSubmatch(s)
	for i := 1; m != nil && i < len(m); i++ {
		v[i-1], _ = strconv.Atoi(m[i])
	}
	return v
}
