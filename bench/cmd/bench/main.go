// Command bench measures what healthgate costs on the path of a gRPC call,
// side by side with calling the backend directly and with other proxies
// (grpc-proxy, nginx, HAProxy), all started and stopped by this runner on
// the loopback interface of this machine.
//
//	cd bench && go run ./cmd/bench -mode quick
//	cd bench && go run ./cmd/bench -mode full -peers direct,healthgate,nginx -profile
//
// It prints one markdown table per workload and writes every run as a JSON
// line under results/. See bench/README.md for what is measured and how.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/healthgate/healthgate/bench/internal/result"
)

func init() {
	// Children get Pdeathsig from the thread that starts them: keeping main
	// on the main thread ties their lives to the runner's (see supervisor).
	runtime.LockOSThread()
}

type workload struct {
	name  string
	title string
	kind  string // unary or stream
	conns int
	conc  int
	size  int
	unit  string // what the rate column counts
	// tls: clients call the peer over TLS 1.3 and the peer calls the
	// backend over h2c, as at an edge; direct is the backend serving TLS.
	tls bool
	// together are peers loaded at the same time, each by its own load
	// generator with conns and conc, rather than one after the other; the
	// workload runs only when every one of them is among -peers. Two
	// configurations of one binary differ by a few percent, and this
	// machine's speed drifts by more than that between windows run back to
	// back; windows run at once see the same machine.
	together []string
}

var allWorkloads = []workload{
	{name: "unary-c1", title: "unary 100 B, 1 call in flight on 1 connection: latency each hop adds", kind: "unary", conns: 1, conc: 1, size: 100, unit: "QPS"},
	{name: "unary-c50", title: "unary 100 B, 50 calls in flight over 10 connections: throughput and proxy CPU per RPC", kind: "unary", conns: 10, conc: 50, size: 100, unit: "QPS"},
	{name: "unary-c50-tls", title: "unary-c50 over TLS 1.3 from the client, terminated by the peer, h2c to the backend: proxy CPU per RPC with TLS", kind: "unary", conns: 10, conc: 50, size: 100, unit: "QPS", tls: true},
	{name: "stream-c50", title: "bidi stream, 50 streams over 10 connections, each echoing one 100 B message at a time", kind: "stream", conns: 10, conc: 50, size: 100, unit: "msg/s"},
	{name: "unary-1mib", title: "unary 1 MiB echoed, 8 calls in flight over 4 connections (MB/s of replies)", kind: "unary", conns: 4, conc: 8, size: 1 << 20, unit: "MB/s"},
	// A proxy that keeps one connection to the backend, as healthgate does,
	// carries unary-1mib's 8 calls on one backend connection where direct
	// has 4: this is direct with the same one.
	{name: "unary-1mib-1conn", title: "unary 1 MiB echoed, 8 calls in flight over 1 connection (MB/s of replies): direct with one connection, as a proxy has one to the backend", kind: "unary", conns: 1, conc: 8, size: 1 << 20, unit: "MB/s"},
	{name: "unary-c500", title: "unary 100 B, 500 calls in flight over 100 connections: many clients at once", kind: "unary", conns: 100, conc: 500, size: 100, unit: "QPS"},
	{name: policyWorkload, title: "unary 100 B, healthgate-relay and healthgate-relay-policy loaded at once, 25 calls in flight over 5 connections each: what the traffic policies cost", kind: "unary", conns: 5, conc: 25, size: 100, unit: "QPS", together: []string{targetPeer, policyPeer}},
}

// peersOf are the peers among all that w measures, in all's order.
func (w workload) peersOf(all []string) []string {
	return slices.DeleteFunc(slices.Clone(all), func(p string) bool {
		if len(w.together) > 0 {
			return !slices.Contains(w.together, p)
		}
		return healthgatePeers[p].togetherOnly || (w.tls && p == splicePeer)
	})
}

type options struct {
	mode      string
	peers     []string
	workloads []workload
	reps      int
	warmup    time.Duration
	duration  time.Duration
	profile   bool
	// profilePeers are the healthgate peers profiled when profile is set.
	profilePeers []string
	// profileWorkload is the load the profiles are taken under.
	profileWorkload workload
	out             string
	repo            string
	keepTmp         bool
}

func main() {
	if os.Getenv(watchdogEnv) != "" {
		runWatchdog()
		return
	}
	os.Exit(run())
}

func run() int {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	go func() {
		<-ctx.Done()
		// A second Ctrl-C then kills the runner at once; Pdeathsig still
		// takes its children along.
		stop()
	}()
	if err := bench(ctx, o); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "bench: interrupted; every process it started is stopped")
			return 130
		}
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	return 0
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	mode := fs.String("mode", "quick", "quick (1 repetition, 2s windows, about 2 min) or full (3 repetitions, 5s windows, about 12 min)")
	peers := fs.String("peers", strings.Join(allPeers, ","), "comma-separated peers to measure; healthgate means both healthgate-relay and healthgate-grpc")
	wls := fs.String("workloads", "", "comma-separated workloads (default all: "+strings.Join(workloadNames(), ",")+")")
	reps := fs.Int("reps", 0, "repetitions (default by -mode)")
	warmup := fs.Duration("warmup", 0, "warm-up before each window (default by -mode)")
	duration := fs.Duration("duration", 0, "measured window (default by -mode)")
	profile := fs.Bool("profile", false, "also capture a pprof CPU profile of each healthgate peer under -profile-workload, one extra run each")
	profilePeers := fs.String("profile-peers", "", "healthgate peers to profile (implies -profile; default every healthgate peer among -peers)")
	profileWorkload := fs.String("profile-workload", "unary-c50", "the workload the profiles are taken under")
	out := fs.String("out", "results", "directory for the JSON lines, tables and profiles")
	repo := fs.String("repo", "..", "healthgate repository root (where ./cmd/healthgate is)")
	keepTmp := fs.Bool("keep-tmp", false, "keep the temp dir with the peers' configs and logs, and print where it is")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	var err error
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o := options{mode: *mode, reps: *reps, warmup: *warmup, duration: *duration, profile: *profile, out: *out, repo: *repo, keepTmp: *keepTmp}
	switch o.mode {
	case "quick":
		o.reps, o.warmup, o.duration = or(o.reps, 1), or(o.warmup, 500*time.Millisecond), or(o.duration, 2*time.Second)
	case "full":
		o.reps, o.warmup, o.duration = or(o.reps, 3), or(o.warmup, time.Second), or(o.duration, 5*time.Second)
	default:
		return o, fmt.Errorf("-mode %q: want quick or full", o.mode)
	}
	if o.reps < 1 || o.warmup < 0 || o.duration <= 0 {
		return o, errors.New("-reps must be at least 1 and -duration positive")
	}
	if o.peers, err = parsePeers("-peers", *peers); err != nil {
		return o, err
	}
	if len(o.peers) == 0 {
		return o, errors.New("-peers: none given")
	}
	if *profilePeers != "" {
		o.profile = true
		if o.profilePeers, err = parsePeers("-profile-peers", *profilePeers); err != nil {
			return o, err
		}
		for _, p := range o.profilePeers {
			if !isHealthgate(p) {
				return o, fmt.Errorf("-profile-peers: %s is not a healthgate peer", p)
			}
			if !slices.Contains(o.peers, p) {
				return o, fmt.Errorf("-profile-peers: %s is not among -peers", p)
			}
		}
	} else if o.profile {
		o.profilePeers = slices.DeleteFunc(slices.Clone(o.peers), func(p string) bool { return !isHealthgate(p) })
	}
	if i := slices.IndexFunc(allWorkloads, func(w workload) bool { return w.name == *profileWorkload }); i >= 0 {
		o.profileWorkload = allWorkloads[i]
		if len(o.profileWorkload.together) > 0 {
			return o, fmt.Errorf("-profile-workload: %s loads several peers at once; profile under a workload of one", *profileWorkload)
		}
	} else {
		return o, fmt.Errorf("-profile-workload: unknown workload %q", *profileWorkload)
	}
	for _, w := range allWorkloads {
		if *wls == "" || slices.Contains(strings.Split(*wls, ","), w.name) {
			o.workloads = append(o.workloads, w)
		}
	}
	for _, name := range strings.Split(*wls, ",") {
		if name != "" && !slices.ContainsFunc(allWorkloads, func(w workload) bool { return w.name == name }) {
			return o, fmt.Errorf("-workloads: unknown workload %q", name)
		}
	}
	// A together workload needs all its peers: named, it is an error
	// without them; by default, it is left out.
	var kept []workload
	for _, w := range o.workloads {
		if missing := slices.DeleteFunc(slices.Clone(w.together), func(p string) bool { return slices.Contains(o.peers, p) }); len(missing) > 0 {
			if *wls != "" {
				return o, fmt.Errorf("-workloads: %s loads %s at once: add %s to -peers", w.name, strings.Join(w.together, " and "), strings.Join(missing, ", "))
			}
			continue
		}
		kept = append(kept, w)
	}
	o.workloads = kept
	return o, nil
}

// parsePeers reads a comma-separated list of peers, aliases expanded, in
// table order whatever the order given.
func parsePeers(flagName, list string) ([]string, error) {
	var peers []string
	for _, p := range strings.Split(list, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		names, alias := peerAliases[p]
		if !alias {
			if !slices.Contains(allPeers, p) {
				return nil, fmt.Errorf("%s: unknown peer %q (known: %s; healthgate means %s)", flagName, p,
					strings.Join(allPeers, ", "), strings.Join(peerAliases["healthgate"], " and "))
			}
			names = []string{p}
		}
		for _, n := range names {
			if !slices.Contains(peers, n) {
				peers = append(peers, n)
			}
		}
	}
	slices.SortFunc(peers, func(a, b string) int { return slices.Index(allPeers, a) - slices.Index(allPeers, b) })
	return peers, nil
}

func workloadNames() []string {
	names := make([]string, len(allWorkloads))
	for i, w := range allWorkloads {
		names[i] = w.name
	}
	return names
}

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

func bench(ctx context.Context, o options) error {
	began := time.Now()
	benchDir, err := os.Getwd()
	if err != nil {
		return err
	}
	if !isBenchModule(benchDir) {
		return errors.New("run me from the bench directory: cd bench && go run ./cmd/bench")
	}
	repo, err := filepath.Abs(o.repo)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(repo, "cmd", "healthgate")); err != nil {
		return fmt.Errorf("-repo %s: no cmd/healthgate: %w", o.repo, err)
	}
	tmp, err := os.MkdirTemp("", "healthgate-bench-")
	if err != nil {
		return err
	}
	if o.keepTmp {
		defer fmt.Fprintf(os.Stderr, "configs and logs kept in %s\n", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	sup := &supervisor{}
	defer sup.stopAll()
	wdTmp := tmp
	if o.keepTmp {
		wdTmp = ""
	}
	if err := sup.startWatchdog(wdTmp); err != nil {
		return err
	}

	pinned := runtime.NumCPU() >= 2 && findTool("taskset") != ""
	if pinned {
		sup.taskset = findTool("taskset")
	} else {
		fmt.Fprintln(os.Stderr, "warning: taskset or a second CPU is missing; processes run unpinned")
	}
	e := &env{sup: sup, tmp: tmp, bins: map[string]string{}, tools: map[string]string{}, missing: map[string]string{}}

	if err := e.build(ctx, o, benchDir, repo); err != nil {
		return err
	}
	if slices.ContainsFunc(o.workloads, func(w workload) bool { return w.tls }) || (len(o.profilePeers) > 0 && o.profileWorkload.tls) {
		if err := e.writeCerts(); err != nil {
			return err
		}
	}
	var tools []string
	for _, p := range o.peers {
		if p == "nginx" || p == "haproxy" {
			tools = append(tools, p)
		}
	}
	e.ensureTools(ctx, tools)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if p := e.tools["nginx"]; p != "" {
		e.nginxV = parseVersion(toolVersion(p))
	}

	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	stamp := time.Now().Format("20060102-150405")
	base := filepath.Join(o.out, stamp+"-"+o.mode)
	jf, err := os.Create(base + ".jsonl")
	if err != nil {
		return err
	}
	defer jf.Close()
	jw := bufio.NewWriter(jf)
	defer jw.Flush()
	enc := json.NewEncoder(jw)
	meta := e.meta(ctx, o, repo, pinned)
	if err := enc.Encode(map[string]any{"meta": meta}); err != nil {
		return err
	}

	rep := &report{opts: o, meta: meta, runs: map[string]map[string][]result.Run{}, notes: map[string]map[string][]string{}}
	for _, w := range o.workloads {
		if err := e.runWorkload(ctx, o, w, rep, func(r result.Run) {
			r.Time = time.Now().UTC().Format(time.RFC3339)
			r.Mode = o.mode
			_ = enc.Encode(r)
			_ = jw.Flush()
		}, began); err != nil {
			return err
		}
	}

	for _, p := range o.profilePeers {
		rep.profiles = append(rep.profiles, e.profileHealthgate(ctx, o, p, base))
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if o.profile && len(o.profilePeers) == 0 {
		rep.profiles = append(rep.profiles, &profileResult{err: errors.New("no healthgate peer among -peers")})
	}

	text := rep.render()
	fmt.Print(text)
	if err := os.WriteFile(base+".md", []byte(text), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "\nraw runs: %s.jsonl\ntables:   %s.md\ntook %s\n", base, base, time.Since(began).Round(time.Second))
	return nil
}

func isBenchModule(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	return err == nil && bytes.Contains(b, []byte("module github.com/healthgate/healthgate/bench\n"))
}

// build compiles the bench binaries and healthgate into the temp dir. A
// healthgate that does not build (the repo is edited while we run) is a
// MISSING peer, not the end of the run.
func (e *env) build(ctx context.Context, o options, benchDir, repo string) error {
	bin := filepath.Join(e.tmp, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "building backend, grpcproxy, splice, loadgen and healthgate")
	cmd := []string{"go", "build", "-o", bin + "/", "./cmd/backend", "./cmd/grpcproxy", "./cmd/splice", "./cmd/loadgen"}
	if err := e.sup.run(ctx, "go build (bench)", e.logPath("build-bench"), startOpts{}, cmd...); err != nil {
		return fmt.Errorf("build bench binaries in %s: %w", benchDir, err)
	}
	for _, name := range []string{"backend", "grpcproxy", "splice", "loadgen"} {
		e.bins[name] = filepath.Join(bin, name)
	}
	if !slices.ContainsFunc(o.peers, isHealthgate) {
		return nil
	}
	e.bins["healthgate"] = filepath.Join(bin, "healthgate")
	if err := e.buildIn(ctx, repo, "go", "build", "-o", e.bins["healthgate"], "./cmd/healthgate"); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for p := range healthgatePeers {
			e.missing[p] = fmt.Sprintf("does not build: %v", err)
		}
		return nil
	}
	if len(o.profilePeers) > 0 && !hasPprofFlag(ctx, e.bins["healthgate"]) {
		overlay, err := writeProfileOverlay(e.tmp, repo)
		if err != nil {
			return err
		}
		e.bins["healthgate-pprof"] = filepath.Join(bin, "healthgate-pprof")
		if err := e.buildIn(ctx, repo, "go", "build", "-overlay", overlay, "-o", e.bins["healthgate-pprof"], "./cmd/healthgate"); err != nil {
			return fmt.Errorf("build healthgate with the profiling hook: %w", err)
		}
	}
	return nil
}

// buildIn runs a build of the healthgate module, from its own directory.
func (e *env) buildIn(ctx context.Context, dir string, argv ...string) error {
	return e.sup.run(ctx, "go build (healthgate)", e.logPath("build-healthgate"), startOpts{dir: dir}, argv...)
}

func (e *env) meta(ctx context.Context, o options, repo string, pinned bool) map[string]any {
	m := map[string]any{
		"time":        time.Now().UTC().Format(time.RFC3339),
		"mode":        o.mode,
		"reps":        o.reps,
		"warmup_sec":  o.warmup.Seconds(),
		"window_sec":  o.duration.Seconds(),
		"peers":       o.peers,
		"go":          runtime.Version(),
		"cpus":        runtime.NumCPU(),
		"cpu_model":   cpuModel(),
		"pinned":      pinned,
		"healthgate":  gitRev(ctx, repo),
		"missing":     e.missing,
		"proxy_cpu":   proxyCPU,
		"backend_cpu": loadCPU,
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(b))
	}
	for _, t := range []string{"nginx", "haproxy"} {
		if p := e.tools[t]; p != "" {
			m[t] = toolVersion(p)
		}
	}
	return m
}

func gitRev(ctx context.Context, repo string) string {
	out, err := exec.CommandContext(ctx, "git", "-C", repo, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	rev := strings.TrimSpace(string(out))
	if st, err := exec.CommandContext(ctx, "git", "-C", repo, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(bytes.TrimSpace(st)) > 0 {
		rev += "+dirty"
	}
	return rev
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// runWorkload starts the backend and every peer in front of it, measures
// each peer reps times (rotating the order so no peer always runs first or
// last), then stops them all. A fresh stack per workload keeps one
// workload's connections and memory from colouring the next.
func (e *env) runWorkload(ctx context.Context, o options, w workload, rep *report, emit func(result.Run), began time.Time) error {
	fmt.Fprintf(os.Stderr, "\n== %s: %s\n", w.name, w.title)
	rep.runs[w.name] = map[string][]result.Run{}
	rep.notes[w.name] = map[string][]string{}
	note := func(peer, s string) { rep.notes[w.name][peer] = append(rep.notes[w.name][peer], s) }
	fail := func(peer string, repNo int, err error) {
		note(peer, err.Error())
		emit(result.Run{Workload: w.name, Peer: peer, Rep: repNo, Error: err.Error()})
		fmt.Fprintf(os.Stderr, "   %s: %v\n", peer, err)
	}

	peers := w.peersOf(o.peers)
	po := peerOpts{tls: w.tls}
	backend, err := e.startBackend(ctx, -1, w.tls)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for _, p := range peers {
			fail(p, 0, fmt.Errorf("FAILED: backend: %w", err))
		}
		return nil
	}
	up := map[string]*running{}
	defer func() {
		for _, name := range slices.Backward(peers) {
			if r := up[name]; r != nil && r.proc != nil {
				r.proc.stop(3 * time.Second)
				e.sup.forget(r.proc)
			}
		}
		backend.proc.stop(3 * time.Second)
		e.sup.forget(backend.proc)
	}()
	for _, name := range peers {
		if why, ok := e.missing[name]; ok {
			rep.missing(w.name, name, why)
			continue
		}
		r, err := e.startPeer(ctx, name, backend, po)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			why := "did not start: " + err.Error()
			rep.missing(w.name, name, why)
			emit(result.Run{Workload: w.name, Peer: name, Error: "MISSING: " + why})
			fmt.Fprintf(os.Stderr, "   %s: MISSING: %s\n", name, why)
			continue
		}
		up[name] = r
	}

	for i := 1; i <= o.reps; i++ {
		k := (i - 1) % len(peers)
		order := append(slices.Clone(peers[k:]), peers[:k]...)
		order = slices.DeleteFunc(order, func(name string) bool { return up[name] == nil })
		results := e.measure(ctx, o, w, order, up, backend)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for _, name := range order {
			r := up[name]
			res, err := results[name].res, results[name].err
			switch {
			case err != nil:
			case res.Ops == 0:
				err = fmt.Errorf("no call completed in the window (%d errors: %s)", res.Errors, res.FirstError)
			case r.proc != nil && r.proc.exited():
				err = fmt.Errorf("exited during the run: %v%s", r.proc.waitErr, r.proc.logTail())
			case backend.proc.exited():
				err = fmt.Errorf("the backend exited during the run: %v%s", backend.proc.waitErr, backend.proc.logTail())
			}
			if err != nil {
				fail(name, i, fmt.Errorf("FAILED in run %d: %w", i, err))
			} else {
				res.Workload, res.Peer, res.Rep = w.name, name, i
				emit(*res)
				rep.runs[w.name][name] = append(rep.runs[w.name][name], *res)
				fmt.Fprintf(os.Stderr, "[%4.0fs] %-13s %d/%d %-23s %s\n", time.Since(began).Seconds(), w.name, i, o.reps, name, progressLine(w, res))
				if res.Undrained {
					note(name, fmt.Sprintf("run %d: calls in flight at the window's end did not finish in the load generator's drain time and were cancelled", i))
				}
			}
			// A peer left stuck or dead would spoil its next runs, and only
			// those: check it, and replace it if need be.
			if r.proc == nil || i == o.reps {
				continue
			}
			if perr := probe(ctx, r, 3*time.Second); perr != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				note(name, fmt.Sprintf("stopped answering after run %d (%s): restarted", i, oneLine(perr.Error())))
				fmt.Fprintf(os.Stderr, "   %s: stopped answering after run %d: restarting it\n", name, i)
				r.proc.stop(3 * time.Second)
				e.sup.forget(r.proc)
				delete(up, name)
				if nr, err := e.startPeer(ctx, name, backend, po); err == nil {
					up[name] = nr
				} else if ctx.Err() != nil {
					return ctx.Err()
				} else {
					note(name, "could not restart: "+oneLine(err.Error()))
				}
			}
		}
	}
	return nil
}

func progressLine(w workload, r *result.Run) string {
	rate := fmt.Sprintf("%s %s", num(r.Rate), w.unit)
	if w.unit == "MB/s" {
		rate = fmt.Sprintf("%s MB/s", num(r.RespMBps))
	}
	s := fmt.Sprintf("%-14s p50 %7sµs  p99 %7sµs  backend %sµs/op", rate, num(r.P50Us), num(r.P99Us), num(r.CPU["backend"].UsPerOp))
	if c, ok := r.CPU["proxy"]; ok {
		s += fmt.Sprintf("  proxy %sµs/op (%.0f%% of a core)", num(c.UsPerOp), c.Percent)
	}
	s += fmt.Sprintf("  loadgen %.0f%%", r.CPU["loadgen"].Percent)
	if r.OtherCPUPercent >= noisyPercent {
		s += fmt.Sprintf("  OTHER LOAD %.0f%%", r.OtherCPUPercent)
	}
	if r.Errors > 0 {
		s += fmt.Sprintf("  errors %d (%s)", r.Errors, r.FirstError)
	}
	return s
}

// measured is one peer's measurement in one repetition.
type measured struct {
	res *result.Run
	err error
}

// measure measures each of names (all running) once: one after the other
// in that order, or, for a together workload, all at once.
func (e *env) measure(ctx context.Context, o options, w workload, names []string, up map[string]*running, backend *running) map[string]measured {
	out := map[string]measured{}
	if len(w.together) == 0 {
		for _, name := range names {
			res, err := e.loadgen(ctx, o, w, up[name], backend)
			out[name] = measured{res, err}
			if ctx.Err() != nil {
				return out
			}
		}
		return out
	}
	type started struct {
		p   *proc
		buf *bytes.Buffer
	}
	gens := map[string]started{}
	for _, name := range names {
		p, buf, err := e.startLoadgen(o, w, up[name], backend)
		if err != nil {
			out[name] = measured{err: err}
			continue
		}
		gens[name] = started{p, buf}
	}
	for _, name := range names {
		if g, ok := gens[name]; ok {
			res, err := e.waitLoadgen(ctx, o, g.p, g.buf)
			out[name] = measured{res, err}
		}
	}
	// Each load generator counts the others, and the proxies they load,
	// as other load on the machine: they are this workload's own.
	for name, m := range out {
		if m.res == nil {
			continue
		}
		for sib, sm := range out {
			if sib != name && sm.res != nil {
				m.res.OtherCPUPercent -= sm.res.CPU["proxy"].Percent + sm.res.CPU["loadgen"].Percent
			}
		}
		m.res.OtherCPUPercent = max(0, m.res.OtherCPUPercent)
	}
	return out
}

// loadgen runs one measurement against target, watching the CPU of the
// target's process tree and of the backend.
func (e *env) loadgen(ctx context.Context, o options, w workload, target, backend *running) (*result.Run, error) {
	p, out, err := e.startLoadgen(o, w, target, backend)
	if err != nil {
		return nil, err
	}
	return e.waitLoadgen(ctx, o, p, out)
}

func (e *env) startLoadgen(o options, w workload, target, backend *running) (*proc, *bytes.Buffer, error) {
	args := []string{e.bins["loadgen"],
		"-target", target.addr,
		"-kind", w.kind,
		"-conns", strconv.Itoa(w.conns),
		"-concurrency", strconv.Itoa(w.conc),
		"-req-size", strconv.Itoa(w.size),
		"-warmup", o.warmup.String(),
		"-duration", o.duration.String(),
		"-cpu", "backend=" + strconv.Itoa(backend.proc.pid()),
	}
	if target.proc != nil {
		args = append(args, "-cpu", "proxy="+strconv.Itoa(target.proc.pid()))
	}
	if target.tls != nil {
		args = append(args, "-tls-ca", e.certs.CA)
	}
	out := &bytes.Buffer{}
	p, err := e.sup.start("loadgen", e.logPath("loadgen"), startOpts{cpu: loadCPU, stdout: out}, args...)
	return p, out, err
}

func (e *env) waitLoadgen(ctx context.Context, o options, p *proc, out *bytes.Buffer) (*result.Run, error) {
	defer e.sup.forget(p)
	limit := time.NewTimer(o.warmup + o.duration + 30*time.Second)
	defer limit.Stop()
	select {
	case <-p.done:
	case <-ctx.Done():
		p.stop(0)
		return nil, ctx.Err()
	case <-limit.C:
		p.stop(time.Second)
		return nil, errors.New("the load generator did not finish in time")
	}
	if p.waitErr != nil {
		return nil, fmt.Errorf("load generator: %w%s", p.waitErr, p.logTail())
	}
	var r result.Run
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return nil, fmt.Errorf("load generator output: %w", err)
	}
	return &r, nil
}
