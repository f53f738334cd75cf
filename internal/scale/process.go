package scale

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The pprof label that tells the backends' goroutines from the gateway's.
const (
	sideLabel   = "healthgate_scale_side"
	sideGateway = "gateway"
	sideBackend = "backend"
)

// Mem is the process's memory and goroutines at one moment.
type Mem struct {
	// RSS is VmRSS from /proc/self/status, read before the forced GCs
	// that the other figures follow: what the process holds as it runs.
	// RSSAnon is its anonymous part (RssAnon): RSS less the pages of the
	// executable, which a Go binary of this size touches by the MiB.
	RSS, RSSAnon uint64
	// LiveOneGC is /gc/heap/live:bytes after one runtime.GC: it still
	// counts what sync.Pools hold (their victim caches survive one
	// cycle), such as grpc's pooled read buffers. Live is after a second
	// GC, with the pools emptied: what the process keeps for itself. Goal
	// is the heap goal that GC set; Stacks all goroutine stack memory;
	// Mapped all memory the runtime has mapped (/memory/classes/total)
	// less what it has released to the OS.
	LiveOneGC, Live, Goal, Stacks, Mapped uint64
	// Goroutines counts them all; Gateway and Backend those carrying each
	// side's pprof label (the rest are the harness's and the runtime's).
	Goroutines, GatewayGoroutines, BackendGoroutines int
	// GatewayHeap and BackendHeap split the live heap by allocation stack
	// (heap profile, sampled: an estimate), when measured with split.
	GatewayHeap, BackendHeap uint64
}

// measure reads RSS, then collects garbage twice and reads the rest. split
// adds the heap split, which costs a walk over the heap profile.
func measure(split bool) (Mem, error) {
	var m Mem
	st, err := readStatus()
	if err != nil {
		return m, err
	}
	m.RSS, m.RSSAnon = st.RSS, st.Anon
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	runtime.GC()
	metrics.Read(live)
	m.LiveOneGC = live[0].Value.Uint64()
	runtime.GC()
	s := []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/gc/heap/goal:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	metrics.Read(s)
	m.Live, m.Goal, m.Stacks = s[0].Value.Uint64(), s[1].Value.Uint64(), s[2].Value.Uint64()
	m.Mapped = s[3].Value.Uint64() - s[4].Value.Uint64()
	if m.Goroutines, m.GatewayGoroutines, m.BackendGoroutines, err = goroutinesBySide(); err != nil {
		return m, err
	}
	if split {
		m.GatewayHeap, m.BackendHeap = heapBySide()
	}
	return m, nil
}

// procStatus is what /proc/self/status says of this process's memory.
type procStatus struct {
	// RSS is VmRSS; Anon its anonymous part (RssAnon), without the
	// executable's and libraries' file pages; Peak is VmHWM.
	RSS, Anon, Peak uint64
}

// readStatus reads /proc/self/status.
func readStatus() (procStatus, error) {
	var st procStatus
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return st, fmt.Errorf("scale: rss: %w", err)
	}
	fields := map[string]*uint64{"VmRSS": &st.RSS, "RssAnon": &st.Anon, "VmHWM": &st.Peak}
	for line := range strings.Lines(string(data)) {
		k, v, _ := strings.Cut(line, ":")
		dst, ok := fields[k]
		if !ok {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return st, fmt.Errorf("scale: rss: %s: %w", k, err)
		}
		*dst = kb << 10
	}
	if st.RSS == 0 {
		return st, fmt.Errorf("scale: rss: no VmRSS in /proc/self/status")
	}
	return st, nil
}

// goroutinesBySide counts goroutines in all and by the side label, from the
// goroutine profile's text form ("N @ pcs" lines, each followed by a
// "# labels: {...}" line when the goroutines carry labels).
func goroutinesBySide() (total, gateway, backend int, err error) {
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		return 0, 0, 0, fmt.Errorf("scale: goroutine profile: %w", err)
	}
	sc := bufio.NewScanner(&buf)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	count := 0
	for sc.Scan() {
		line := sc.Text()
		if n, rest, ok := strings.Cut(line, " @ "); ok && rest != "" {
			if count, err = strconv.Atoi(n); err != nil {
				return 0, 0, 0, fmt.Errorf("scale: goroutine profile: %q: %w", line, err)
			}
			total += count
			continue
		}
		if lbls, ok := strings.CutPrefix(line, "# labels: "); ok {
			switch {
			case strings.Contains(lbls, strconv.Quote(sideLabel)+":"+strconv.Quote(sideGateway)):
				gateway += count
			case strings.Contains(lbls, strconv.Quote(sideLabel)+":"+strconv.Quote(sideBackend)):
				backend += count
			}
		}
	}
	return total, gateway, backend, sc.Err()
}

// backendFrames mark an allocation as the in-process backends' rather than
// the gateway's: the server side of grpc and its health service.
var backendFrames = []string{
	"google.golang.org/grpc.(*Server).",
	"google.golang.org/grpc/internal/transport.NewServerTransport",
	"google.golang.org/grpc/internal/transport.(*http2Server).",
	"google.golang.org/grpc/internal/transport.(*serverHandlerTransport).",
	"google.golang.org/grpc/health.",
	"github.com/healthgate/healthgate/internal/scale.startBackends",
}

// heapBySide splits the live heap between the backends and the rest (the
// gateway: the checker, its connections, the published tables) by the
// stacks in the heap profile, scaled up from its samples as pprof does. The
// profile is as of the last runtime.GC: the caller collects first. Its
// precision depends on runtime.MemProfileRate (512 KiB by default: coarse).
func heapBySide() (gateway, backend uint64) {
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, true)
	for {
		recs = make([]runtime.MemProfileRecord, n+64)
		var ok bool
		if n, ok = runtime.MemProfile(recs, true); ok {
			recs = recs[:n]
			break
		}
	}
	rate := float64(runtime.MemProfileRate)
	var gw, be float64
	for _, r := range recs {
		if r.InUseBytes() == 0 || r.AllocObjects == 0 {
			continue
		}
		bytes := float64(r.InUseBytes())
		if rate > 1 {
			avg := float64(r.AllocBytes) / float64(r.AllocObjects)
			bytes /= 1 - math.Exp(-avg/rate)
		}
		if onBackendSide(r.Stack()) {
			be += bytes
		} else {
			gw += bytes
		}
	}
	return uint64(gw), uint64(be)
}

func onBackendSide(stk []uintptr) bool {
	frames := runtime.CallersFrames(stk)
	for {
		f, more := frames.Next()
		for _, p := range backendFrames {
			if strings.HasPrefix(f.Function, p) {
				return true
			}
		}
		if !more {
			return false
		}
	}
}

// raiseFileLimit makes RLIMIT_NOFILE at least n, raising the hard limit
// too if need be (which takes CAP_SYS_RESOURCE).
func raiseFileLimit(n uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("scale: getrlimit: %w", err)
	}
	if lim.Cur >= n {
		return nil
	}
	want := syscall.Rlimit{Cur: n, Max: max(lim.Max, n)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		return fmt.Errorf("scale: need %d file descriptors; RLIMIT_NOFILE is %d (hard %d) and cannot be raised: %w", n, lim.Cur, lim.Max, err)
	}
	return nil
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// gcStats are the GC cycles so far and the runtime's estimate of the CPU
// time they took.
func gcStats() (cycles uint64, cpu time.Duration) {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}, {Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(s)
	return s[0].Value.Uint64(), time.Duration(s[1].Value.Float64() * float64(time.Second))
}

// gcSettings are GOGC (-1: off) and the memory limit in force.
func gcSettings() (gogc int, limit int64) {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/gomemlimit:bytes"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64()), int64(s[1].Value.Uint64())
}

// Phase is what one phase of a run cost.
type Phase struct {
	// CPU is the process's user and system CPU time.
	CPU time.Duration
	// GCs counts GC cycles; GCCPU is the runtime's estimate of their CPU
	// time (an overestimate, /cpu/classes/gc/total).
	GCs   uint64
	GCCPU time.Duration
	// OtherCores is how much CPU the rest of the machine used meanwhile,
	// in cores (/proc/stat's busy time less this process's): above a
	// tenth of a core or so, the phase's times are noisy.
	OtherCores float64
}

// phase measures one Phase from its start.
type phase struct {
	at        time.Time
	cpu, busy time.Duration
	gcs       uint64
	gccpu     time.Duration
	profile   *os.File // the CPU profile being written, if any
}

// startPhase starts measuring; with dir, it also profiles the CPU into
// dir/cpu-<name>.pprof until end.
func startPhase(dir, name string) (*phase, error) {
	p := &phase{at: time.Now(), cpu: cpuTime(), busy: machineBusy()}
	p.gcs, p.gccpu = gcStats()
	if dir == "" {
		return p, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("scale: profiles: %w", err)
	}
	f, err := os.Create(filepath.Join(dir, "cpu-"+name+".pprof"))
	if err != nil {
		return nil, fmt.Errorf("scale: profiles: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("scale: cpu profile: %w", err)
	}
	p.profile = f
	return p, nil
}

// end ends the phase and its profile. An err given is returned as it is
// (the phase failed: its figures are of no use).
func (p *phase) end(err error) (Phase, error) {
	wall := time.Since(p.at)
	var ph Phase
	ph.CPU = cpuTime() - p.cpu
	gcs, gccpu := gcStats()
	ph.GCs, ph.GCCPU = gcs-p.gcs, gccpu-p.gccpu
	if busy := machineBusy(); busy > 0 && wall > 0 {
		ph.OtherCores = max(0, float64(busy-p.busy-ph.CPU)/float64(wall))
	}
	if p.profile != nil {
		pprof.StopCPUProfile()
		if cerr := p.profile.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("scale: cpu profile: %w", cerr)
		}
	}
	return ph, err
}

// machineBusy is the CPU time all processes have used since boot
// (/proc/stat: user, nice, system, irq, softirq and steal), or 0 if it
// cannot be read.
func machineBusy() time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var ticks uint64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // not idle (4) nor iowait (5)
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return 0
		}
		ticks += v
	}
	// USER_HZ is 100 on every Linux this runs on.
	return time.Duration(ticks) * 10 * time.Millisecond
}
