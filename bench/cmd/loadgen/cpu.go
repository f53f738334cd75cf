package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. The
// kernel ABI fixes it at 100 on every architecture Go supports on Linux, and
// Go has no sysconf to ask.
const clockTicks = 100

type treeCPU struct {
	ticks uint64
	procs int
}

type procStat struct {
	ppid  int
	ticks uint64
}

// cpuTicks sums utime+stime over each watched process and all its
// descendants: nginx does its work in a worker that is a child of the
// process the runner started. One scan of /proc serves every role.
func cpuTicks(watch []watched) (map[string]treeCPU, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("cpu: %w", err)
	}
	stats := map[int]procStat{}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue // exited since ReadDir
		}
		stats[pid] = st
		children[st.ppid] = append(children[st.ppid], pid)
	}
	out := map[string]treeCPU{}
	for _, w := range watch {
		if _, ok := stats[w.pid]; !ok {
			return nil, fmt.Errorf("cpu: %s process %d is gone", w.role, w.pid)
		}
		var t treeCPU
		queue := []int{w.pid}
		for len(queue) > 0 {
			pid := queue[0]
			queue = queue[1:]
			t.ticks += stats[pid].ticks
			t.procs++
			queue = append(queue, children[pid]...)
		}
		out[w.role] = t
	}
	return out, nil
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// comm, in parentheses, may hold spaces and parentheses: fields are
	// counted from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no comm", pid)
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	utime, err2 := strconv.ParseUint(string(f[11]), 10, 64)
	stime, err3 := strconv.ParseUint(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: unparsable", pid)
	}
	return procStat{ppid: ppid, ticks: utime + stime}, nil
}

// machineTicks is the time all CPUs spent busy, and the time the hypervisor
// took from them, from the first line of /proc/stat. Busy minus the watched
// processes is what else ran on the machine during the window: a build or a
// test suite there skews every figure.
func machineTicks() (busy, steal uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("cpu: %w", err)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	// cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || string(f[0]) != "cpu" {
		return 0, 0, fmt.Errorf("cpu: /proc/stat: unexpected %q", line)
	}
	var v [8]uint64
	for i := range v {
		if v[i], err = strconv.ParseUint(string(f[i+1]), 10, 64); err != nil {
			return 0, 0, fmt.Errorf("cpu: /proc/stat: %w", err)
		}
	}
	return v[0] + v[1] + v[2] + v[5] + v[6], v[7], nil
}
