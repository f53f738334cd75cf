//go:build unix

package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// procWait bounds how long a test process may take to start, stop or exit.
const procWait = 15 * time.Second

// BuildTestBackend builds cmd/testbackend into the test's temporary
// directory and returns the binary's path. The build cache keeps it to
// about a second.
func BuildTestBackend(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "testbackend")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/healthgate/healthgate/internal/testutil/cmd/testbackend").CombinedOutput()
	if err != nil {
		t.Fatalf("build testbackend: %v\n%s", err, out)
	}
	return bin
}

// Proc is a testbackend process: a backend that a test can kill -9, stop
// and continue as the kernel would, and start again on the same address.
type Proc struct {
	// Addr is the address the process listens on, from its ready line;
	// Restart listens on it again.
	Addr string

	t   testing.TB
	bin string

	mu  sync.Mutex // guards cur
	cur *procRun   // the running process, or the last one to run
}

// procRun is one run of the process.
type procRun struct {
	cmd *exec.Cmd
	out *procOutput
	// exited is closed once the process has exited; waitErr is its exit
	// status from then on.
	exited  chan struct{}
	waitErr error
}

// StartProc starts bin (BuildTestBackend's) on addr, "127.0.0.1:0" for any
// free port, waits for it to listen, and kills it at the end of the test.
func StartProc(t testing.TB, bin, addr string) *Proc {
	t.Helper()
	p := &Proc{t: t, bin: bin}
	if err := p.start(addr); err != nil {
		t.Fatalf("testbackend: %v", err)
	}
	t.Cleanup(p.Kill)
	return p
}

func (p *Proc) start(addr string) error {
	p.mu.Lock()
	if p.cur != nil && !isClosed(p.cur.exited) {
		p.mu.Unlock()
		return errors.New("still running")
	}
	r := &procRun{out: &procOutput{ready: make(chan string, 1)}, exited: make(chan struct{})}
	r.cmd = exec.Command(p.bin, "-addr", addr)
	// One writer for both: exec then copies from one goroutine, which Wait
	// waits for.
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		p.mu.Unlock()
		return err
	}
	p.cur = r
	p.mu.Unlock()
	go func() {
		r.waitErr = r.cmd.Wait()
		close(r.exited)
	}()

	t := time.NewTimer(procWait)
	defer t.Stop()
	select {
	case a := <-r.out.ready:
		p.Addr = a
		return nil
	case <-r.exited:
		return fmt.Errorf("exited before it was ready: %v\n%s", r.waitErr, r.out)
	case <-t.C:
		r.cmd.Process.Kill() //nolint:errcheck // it may exit meanwhile
		<-r.exited
		return fmt.Errorf("not ready within %s:\n%s", procWait, r.out)
	}
}

func (p *Proc) run() *procRun {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur
}

// PID is the process id of the current process.
func (p *Proc) PID() int { return p.run().cmd.Process.Pid }

// Output is what the current process wrote on stdout and stderr so far.
func (p *Proc) Output() string { return p.run().out.String() }

// Kill sends SIGKILL and waits for the process to exit; a process that has
// exited already is left as it is. A stopped process dies too.
func (p *Proc) Kill() {
	r := p.run()
	if isClosed(r.exited) {
		return
	}
	r.cmd.Process.Kill() //nolint:errcheck // it may have exited meanwhile
	<-r.exited
}

// Term sends SIGTERM, waits for the process to exit, and returns its exit
// status: nil when it stopped gracefully.
func (p *Proc) Term() error {
	p.t.Helper()
	r := p.run()
	p.signal(syscall.SIGTERM)
	t := time.NewTimer(procWait)
	defer t.Stop()
	select {
	case <-r.exited:
		return r.waitErr
	case <-t.C:
		p.t.Fatalf("testbackend %s: still running %s after SIGTERM", p.Addr, procWait)
		return nil
	}
}

// Stop sends SIGSTOP and waits until the kernel has stopped the process: it
// then answers nothing, while its connections and listener stay open.
func (p *Proc) Stop() {
	p.t.Helper()
	p.signal(syscall.SIGSTOP)
	p.waitStopped(true)
}

// Cont sends SIGCONT and waits until the process runs again.
func (p *Proc) Cont() {
	p.t.Helper()
	p.signal(syscall.SIGCONT)
	p.waitStopped(false)
}

// Restart starts the process again on the same address and waits for it to
// listen. The previous one must have exited.
func (p *Proc) Restart() {
	p.t.Helper()
	if err := p.start(p.Addr); err != nil {
		p.t.Fatalf("testbackend %s: restart: %v", p.Addr, err)
	}
}

func (p *Proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.run().cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("testbackend %s: %s: %v", p.Addr, sig, err)
	}
}

// waitStopped waits until the process's state is stopped, or is not. The
// signal is delivered when the kernel next schedules the process; a test
// that called right after kill(2) could still be answered. Where /proc does
// not say, it returns at once.
func (p *Proc) waitStopped(stopped bool) {
	p.t.Helper()
	stat := fmt.Sprintf("/proc/%d/stat", p.PID())
	deadline := time.Now().Add(procWait)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		b, err := os.ReadFile(stat)
		if err != nil {
			return
		}
		// The state follows the command name, which is in parentheses
		// and may hold anything.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) {
			return
		}
		if st := b[i+2]; (st == 'T') == stopped {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("testbackend %s: stopped is not %v after %s", p.Addr, stopped, procWait)
		}
		<-tick.C
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// procOutput keeps what a process writes and delivers the address of its
// first ready line.
type procOutput struct {
	ready chan string

	mu      sync.Mutex // guards the fields below
	buf     bytes.Buffer
	scanned int // bytes of buf already looked at for a ready line
	found   bool
}

func (o *procOutput) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(b)
	for !o.found {
		rest := o.buf.Bytes()[o.scanned:]
		nl := bytes.IndexByte(rest, '\n')
		if nl < 0 {
			break
		}
		line := string(rest[:nl])
		o.scanned += nl + 1
		if addr, ok := strings.CutPrefix(line, "ready "); ok {
			o.found = true
			o.ready <- addr
		}
	}
	return len(b), nil
}

func (o *procOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}
