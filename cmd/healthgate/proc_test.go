package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// The real binary, built once for all the tests of this package that run it
// as a process; binDir is made and removed by TestMain.
var (
	binDir    string
	buildOnce sync.Once
	buildErr  error
	buildOut  []byte
)

// healthgateBinary builds the command with the race detector, once.
func healthgateBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(binDir, "healthgate")
	buildOnce.Do(func() {
		buildOut, buildErr = exec.Command("go", "build", "-race", "-o", bin, ".").CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build: %v\n%s", buildErr, buildOut)
	}
	return bin
}

// proc is a healthgate process started by a test. It is killed, if still
// running, when the test ends.
type proc struct {
	cmd *exec.Cmd
	// exited is closed when the process has exited; waitErr is then its
	// exit status.
	exited  chan struct{}
	waitErr error
}

func startHealthgate(t *testing.T, stdout, stderr io.Writer, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(healthgateBinary(t), args...), exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = stdout, stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.waitErr = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill() //nolint:errcheck // it may have exited already
		<-p.exited
	})
	return p
}

func mkBinDir() (func(int), error) {
	dir, err := os.MkdirTemp("", "healthgate-test-bin-")
	if err != nil {
		return nil, err
	}
	binDir = dir
	return func(int) { os.RemoveAll(dir) }, nil
}
