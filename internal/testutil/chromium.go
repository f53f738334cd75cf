//go:build unix

package testutil

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Chromium is Debian's Chromium, which the make targets that render pages
// (ui-test, grpcweb-ui-test) install when it is missing.
const Chromium = "/usr/bin/chromium"

// RunChromium runs headless Chromium on url with a fresh profile, the
// extra flags and mode (--dump-dom, --screenshot=FILE), and returns its
// standard output. The page gets budget of virtual time once it has
// nothing left on the network.
func RunChromium(t testing.TB, mode, url string, budget time.Duration, flags ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--window-size=1280,900",
		"--virtual-time-budget=" + strconv.FormatInt(budget.Milliseconds(), 10),
	}, flags...)
	cmd := exec.CommandContext(ctx, Chromium, append(args, mode, url)...)
	// Chromium's helpers are in its process group: a timeout ends them all.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("chromium %s %s: %v in %v", mode, url, err, time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("chromium %s: %v\nstderr:\n%s", mode, err, stderr.String())
	}
	return stdout.String()
}

// Screenshot decodes the PNG Chromium wrote to path and wants it at least
// 1000x600, the window being 1280x900; callers look at its pixels further.
func Screenshot(t testing.TB, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s is not a PNG: %v", path, err)
	}
	if b := img.Bounds(); b.Dx() < 1000 || b.Dy() < 600 {
		t.Fatalf("screenshot is %dx%d, want at least 1000x600", b.Dx(), b.Dy())
	}
	return img
}
