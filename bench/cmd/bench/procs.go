package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// supervisor owns every process the runner starts, so that all of them are
// killed whichever way the runner ends: stopAll on return or Ctrl-C, and,
// should the runner itself be killed, Pdeathsig for its children and the
// watchdog for whole process groups (nginx's worker is a grandchild).
type supervisor struct {
	taskset  string // empty: run unpinned
	mu       sync.Mutex
	procs    []*proc
	closed   bool
	watchdog *exec.Cmd
	wdPipe   io.WriteCloser
}

// watchdogEnv makes the runner's binary the watchdog instead (see main).
const watchdogEnv = "HEALTHGATE_BENCH_WATCHDOG"

// startWatchdog starts a second copy of the runner that holds the read end
// of a pipe: the runner names on it each process group it starts and stops.
// When the pipe closes, as it does however the runner dies, the watchdog
// kills the groups still named and removes tmp.
func (s *supervisor) startWatchdog(tmp string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), watchdogEnv+"=1")
	cmd.Stderr = os.Stderr
	// Its own group: a terminal's Ctrl-C must not end it before the runner
	// has stopped everything.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	w, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	s.watchdog, s.wdPipe = cmd, w
	if tmp != "" {
		s.tell("tmp " + tmp)
	}
	return nil
}

// tell passes a line to the watchdog; a watchdog that is gone can do
// nothing with it anyway.
func (s *supervisor) tell(line string) {
	if s.wdPipe != nil {
		_, _ = io.WriteString(s.wdPipe, line+"\n")
	}
}

// runWatchdog is the watchdog's whole life: "+PGID" and "-PGID" lines keep
// the set of live groups, "tmp DIR" the dir to remove, and end of input
// means the runner is gone.
func runWatchdog() {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	groups := map[int]bool{}
	tmp := ""
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		line := sc.Text()
		if d, ok := strings.CutPrefix(line, "tmp "); ok {
			tmp = d
			continue
		}
		if len(line) < 2 {
			continue
		}
		pgid, err := strconv.Atoi(line[1:])
		if err != nil || pgid <= 1 {
			continue
		}
		switch line[0] {
		case '+':
			groups[pgid] = true
		case '-':
			delete(groups, pgid)
		}
	}
	for pgid := range groups {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	if tmp != "" && len(groups) > 0 {
		// Give the kernel a moment to release what the killed held open.
		time.Sleep(100 * time.Millisecond)
	}
	if tmp != "" {
		_ = os.RemoveAll(tmp)
	}
}

type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
}

type startOpts struct {
	cpu    string    // "0", "1" or "" for unpinned
	stdout io.Writer // default: the log file
	env    []string  // added to the runner's environment
	dir    string    // working directory; default the runner's
}

// start runs argv with its output in logPath. Each process leads its own
// process group, so a terminal's Ctrl-C reaches only the runner, which then
// stops the groups in order, nginx's worker with its master.
func (s *supervisor) start(name, logPath string, o startOpts, argv ...string) (*proc, error) {
	if o.cpu != "" && s.taskset != "" {
		argv = append([]string{s.taskset, "-c", o.cpu}, argv...)
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = logf
	if o.stdout != nil {
		cmd.Stdout = o.stdout
	}
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), o.env...)
	cmd.Dir = o.dir
	// Pdeathsig fires when the thread that forked dies; main locks its
	// goroutine to the main thread, which lives as long as the runner.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		logf.Close()
		return nil, errors.New("runner is shutting down")
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	s.procs = append(s.procs, p)
	pgid := cmd.Process.Pid
	s.tell("+" + strconv.Itoa(pgid))
	go func() {
		p.waitErr = cmd.Wait()
		// Whatever the leader left behind in its group goes with it.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		s.mu.Lock()
		s.tell("-" + strconv.Itoa(pgid))
		s.mu.Unlock()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// run starts argv and waits for it, stopping it if ctx ends first.
func (s *supervisor) run(ctx context.Context, name, logPath string, o startOpts, argv ...string) error {
	p, err := s.start(name, logPath, o, argv...)
	if err != nil {
		return err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		p.stop(2 * time.Second)
		return ctx.Err()
	}
	if p.waitErr != nil {
		return fmt.Errorf("%s: %w%s", name, p.waitErr, p.logTail())
	}
	return nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the process group to end with SIGTERM, then kills it after
// grace; the group's last members go when the leader is reaped (see start).
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	pgid := p.pid()
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return
	case <-t.C:
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.done
}

// logTail is the end of the process's log, for error messages.
func (p *proc) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 6 {
		lines = lines[len(lines)-6:]
	}
	return "\n    | " + strings.Join(lines, "\n    | ")
}

// stopAll stops every process still running, newest first (peers before the
// backend they forward to), and refuses new ones.
func (s *supervisor) stopAll() {
	s.mu.Lock()
	s.closed = true
	procs := s.procs
	s.procs = nil
	s.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop(3 * time.Second)
	}
	if s.watchdog != nil {
		// Closing the pipe is the watchdog's cue; with no group left to
		// kill it only removes the temp dir, which is already gone.
		s.mu.Lock()
		s.wdPipe.Close()
		s.wdPipe = nil
		s.mu.Unlock()
		_ = s.watchdog.Wait()
	}
}

// forget drops processes that have been stopped, so a long run does not
// keep every finished load generator.
func (s *supervisor) forget(ps ...*proc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.procs[:0]
	for _, p := range s.procs {
		drop := false
		for _, q := range ps {
			drop = drop || p == q
		}
		if !drop {
			kept = append(kept, p)
		}
	}
	s.procs = kept
}
