package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// profileHook is compiled into a second healthgate binary through go build
// -overlay, for a healthgate without its own pprof endpoint (before
// -admin/-pprof existed, say while bisecting): the bench may not change
// healthgate's sources.
//
//go:embed cpuprofile_hook.go.txt
var profileHook []byte

// hasPprofFlag tells whether this healthgate serves /debug/pprof/ itself.
func hasPprofFlag(ctx context.Context, bin string) bool {
	out, _ := exec.CommandContext(ctx, bin, "-h").CombinedOutput()
	return strings.Contains(string(out), "-pprof") && strings.Contains(string(out), "-admin")
}

// writeProfileOverlay writes the hook and the overlay file that places it in
// healthgate's cmd/healthgate as if it were there.
func writeProfileOverlay(tmp, repo string) (string, error) {
	hook := filepath.Join(tmp, "cpuprofile_hook.go")
	if err := os.WriteFile(hook, profileHook, 0o644); err != nil {
		return "", err
	}
	target := filepath.Join(repo, "cmd", "healthgate", "zz_bench_cpuprofile.go")
	b, err := json.Marshal(map[string]map[string]string{"Replace": {target: hook}})
	if err != nil {
		return "", err
	}
	overlay := filepath.Join(tmp, "overlay.json")
	return overlay, os.WriteFile(overlay, b, 0o644)
}

type profileResult struct {
	peer     string // which healthgate peer
	workload string // under which load
	path     string // the .pprof file, empty if none
	how      string // which way it was taken
	top      string // go tool pprof -top, trimmed
	err      error
}

// profiler is one way to profile a started healthgate for the window.
type profiler struct {
	opts  peerOpts
	begin func(hg *running) // at the window's start
	end   func(hg *running) error
}

// profileHealthgate runs o.profileWorkload once more against peer (a
// healthgate peer) started so that it can be profiled, profiling the
// measured window only. It is a separate run so that the profiler's own
// cost never lands in the tables.
func (e *env) profileHealthgate(ctx context.Context, o options, peer, base string) *profileResult {
	if m, ok := e.missing[peer]; ok {
		return &profileResult{peer: peer, err: errors.New(m)}
	}
	if e.bins["healthgate"] == "" {
		return &profileResult{peer: peer, err: errors.New("healthgate was not built")}
	}
	w := o.profileWorkload
	fmt.Fprintf(os.Stderr, "\n== profile: %s under %s\n", peer, w.name)
	path, err := filepath.Abs(base + "-" + peer + "-" + w.name + "-cpu.pprof")
	if err != nil {
		return &profileResult{peer: peer, err: err}
	}
	res := &profileResult{peer: peer, workload: w.name}
	var pr profiler
	if e.bins["healthgate-pprof"] != "" {
		res.how = "the bench's overlay hook (SIGUSR1/SIGUSR2): this healthgate has no -pprof"
		pr = e.hookProfiler(path)
	} else {
		admin, err := e.ports.addr()
		if err != nil {
			return &profileResult{peer: peer, err: err}
		}
		res.how = "healthgate's own -admin " + admin + " -pprof"
		pr = endpointProfiler(ctx, admin, o.duration, path)
	}
	res.err = func() error {
		backend, err := e.startBackend(ctx, -1, w.tls)
		if err != nil {
			return err
		}
		defer func() {
			backend.proc.stop(3 * time.Second)
			e.sup.forget(backend.proc)
		}()
		po := pr.opts
		po.tls = w.tls
		hg, err := e.startPeer(ctx, peer, backend, po)
		if err != nil {
			return err
		}
		defer func() {
			hg.proc.stop(3 * time.Second)
			e.sup.forget(hg.proc)
		}()
		lg, out, err := e.startLoadgen(o, w, hg, backend)
		if err != nil {
			return err
		}
		// The load generator times its window from its own start; the
		// profile covers the same stretch give or take a few milliseconds.
		select {
		case <-time.After(o.warmup):
		case <-ctx.Done():
		}
		pr.begin(hg)
		r, lerr := e.waitLoadgen(ctx, o, lg, out)
		if err := errors.Join(lerr, pr.end(hg)); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "[profile] %-23s %s\n", peer, progressLine(w, r))
		res.path = path
		topPath := strings.TrimSuffix(path, ".pprof") + "-top.txt"
		if err := e.sup.run(ctx, "go tool pprof", topPath, startOpts{}, "go", "tool", "pprof", "-top", "-nodecount=25", path); err != nil {
			return fmt.Errorf("go tool pprof: %w", err)
		}
		b, err := os.ReadFile(topPath)
		if err != nil {
			return err
		}
		res.top = strings.TrimSpace(string(b))
		return nil
	}()
	return res
}

// endpointProfiler asks healthgate's /debug/pprof/profile for the window,
// which takes whole seconds.
func endpointProfiler(ctx context.Context, admin string, window time.Duration, path string) profiler {
	secs := max(1, int(math.Round(window.Seconds())))
	done := make(chan error, 1)
	return profiler{
		opts: peerOpts{args: []string{"-admin", admin, "-pprof"}},
		begin: func(*running) {
			go func() {
				done <- fetchProfile(ctx, "http://"+admin+"/debug/pprof/profile?seconds="+strconv.Itoa(secs), path)
			}()
		},
		end: func(*running) error { return <-done },
	}
}

func fetchProfile(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("profile: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile: %w", err)
	}
	return f.Close()
}

// hookProfiler drives the overlay hook: SIGUSR1 starts, SIGUSR2 writes.
func (e *env) hookProfiler(path string) profiler {
	return profiler{
		opts: peerOpts{bin: "healthgate-pprof", env: []string{"HEALTHGATE_BENCH_CPUPROFILE=" + path}},
		begin: func(hg *running) {
			_ = hg.proc.cmd.Process.Signal(syscall.SIGUSR1)
		},
		end: func(hg *running) error {
			_ = hg.proc.cmd.Process.Signal(syscall.SIGUSR2)
			// The hook renames the finished file into place.
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				if _, err := os.Stat(path); err == nil {
					return nil
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("no profile written to %s%s", path, hg.proc.logTail())
				}
			}
		},
	}
}
