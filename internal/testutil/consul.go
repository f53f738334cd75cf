package testutil

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// Consul is a real `consul agent -dev` on loopback ports of its own.
type Consul struct {
	// Addr is the agent's HTTP API address, host:port.
	Addr string

	bin   string
	ports [4]int // http, serf lan, serf wan, server rpc
	t     testing.TB
	mu    sync.Mutex
	cmd   *exec.Cmd // guarded by mu
	out   *bytes.Buffer
	exit  chan struct{}
	extra []string
	nodes int // agents started, for unique node names; guarded by mu
}

// ConsulBinary finds the consul binary: $HEALTHGATE_CONSUL, or the one
// scripts/consul.sh builds into the cache (building it if it must). A test
// that needs Consul fails when neither works: CI must not go green without it.
func ConsulBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("HEALTHGATE_CONSUL"); p != "" {
		return p
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatalf("consul: %v", err)
	}
	out, err := exec.Command(filepath.Join(root, "scripts", "consul.sh")).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("consul: scripts/consul.sh failed: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("consul: scripts/consul.sh: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "tools", "consul", "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root with tools/consul not found above the working directory")
		}
		dir = parent
	}
}

// StartConsul starts a dev agent, waits until it has a leader, and stops it
// at the end of the test. extra are more agent flags (-hcl ...).
func StartConsul(t testing.TB, extra ...string) *Consul {
	t.Helper()
	c := &Consul{bin: ConsulBinary(t), t: t, extra: extra}
	// Free ports are only free a moment ago: a test package running next
	// to this one may take one before the agent binds it. An agent that
	// cannot bind exits at once; try again on other ports.
	for attempt := 1; ; attempt++ {
		for i := range c.ports {
			c.ports[i] = FreePort(t)
		}
		c.Addr = fmt.Sprintf("127.0.0.1:%d", c.ports[0])
		err := c.start()
		if err == nil {
			break
		}
		if !errors.Is(err, errExitedEarly) || attempt == 5 {
			t.Fatalf("consul: %v", err)
		}
		t.Logf("consul: attempt %d: %v; trying other ports", attempt, err)
	}
	t.Cleanup(c.Stop)
	return c
}

var (
	errExitedEarly = errors.New("agent exited early")
	errForbidden   = errors.New("forbidden by ACL")
)

// Start restarts the agent on the same ports. A dev agent keeps nothing
// across restarts, like a Consul that lost its state.
func (c *Consul) Start() {
	c.t.Helper()
	if err := c.start(); err != nil {
		c.t.Fatalf("consul: %v", err)
	}
}

func (c *Consul) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd != nil {
		return errors.New("already running")
	}
	c.nodes++
	node := fmt.Sprintf("healthgate-test-%d-%d", os.Getpid(), c.ports[0]+c.nodes)
	c.out = new(bytes.Buffer)
	cmd := exec.Command(c.bin, "agent", "-dev", "-node", node,
		"-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(c.ports[0]),
		"-serf-lan-port", strconv.Itoa(c.ports[1]),
		"-serf-wan-port", strconv.Itoa(c.ports[2]),
		"-server-port", strconv.Itoa(c.ports[3]),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-log-level", "warn",
	)
	cmd.Args = append(cmd.Args, c.extra...)
	out := c.out
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.bin, err)
	}
	exit := make(chan struct{})
	go func() { cmd.Wait(); close(exit) }() //nolint:errcheck // a killed agent exits non-zero
	c.cmd, c.exit = cmd, exit

	deadline := time.Now().Add(30 * time.Second)
	for {
		// The agent that answers must be this one: with a port taken by
		// another test's agent, that one would answer instead.
		if c.isUp(node) {
			c.t.Logf("consul: started a real consul agent -dev (pid %d, node %s) on %s", cmd.Process.Pid, node, c.Addr)
			return nil
		}
		select {
		case <-exit:
			c.cmd = nil
			return fmt.Errorf("%w:\n%s", errExitedEarly, out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill() //nolint:errcheck // giving up on it
			<-exit
			c.cmd = nil
			return fmt.Errorf("no leader within 30s:\n%s", out)
		}
	}
}

// isUp reports whether the agent named node answers and has a leader.
func (c *Consul) isUp(node string) bool {
	var self struct{ Config struct{ NodeName string } }
	err := getJSON("http://"+c.Addr+"/v1/agent/self", &self)
	switch {
	case errors.Is(err, errForbidden):
		// With ACLs on, the anonymous token may not read the agent: the
		// leader check has to do.
	case err != nil || self.Config.NodeName != node:
		return false
	}
	var leader string
	return getJSON("http://"+c.Addr+"/v1/status/leader", &leader) == nil && leader != ""
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusForbidden {
		return errForbidden
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// Stop kills the agent and waits for it to exit.
func (c *Consul) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Kill() //nolint:errcheck // it may have exited already
	<-c.exit
	c.cmd = nil
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Client is an API client for the agent with token (may be empty).
func (c *Consul) Client(t testing.TB, token string) *api.Client {
	t.Helper()
	client, err := api.NewClient(&api.Config{Address: c.Addr, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// Register registers a service instance through the agent API. It retries
// for a few seconds: an agent with ACLs on refuses writes until its ACL
// system has bootstrapped, a moment after it has a leader.
func (c *Consul) Register(t testing.TB, token string, reg *api.AgentServiceRegistration) {
	t.Helper()
	var err error
	WaitFor(t, 15*time.Second, "consul to accept registration of "+reg.ID, func() bool {
		err = c.Client(t, token).Agent().ServiceRegister(reg)
		return err == nil
	})
}

// CLI runs the consul command against the agent, as an operator would.
func (c *Consul) CLI(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+c.Addr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("consul %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// RouteReg is a registration of addr with the route tag for svc, the way an
// example backend registers itself, with no Consul check (so it passes).
func RouteReg(id, consulName, addr, svc string, tags ...string) *api.AgentServiceRegistration {
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	return &api.AgentServiceRegistration{
		ID: id, Name: consulName, Address: host, Port: p,
		Tags: append([]string{"healthgate.route=" + svc}, tags...),
	}
}
