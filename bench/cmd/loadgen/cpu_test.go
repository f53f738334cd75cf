package main

import (
	"os"
	"os/exec"
	"testing"
)

func TestCPUTicksCountsDescendants(t *testing.T) {
	child := exec.Command("sleep", "5")
	if err := child.Start(); err != nil {
		t.Skipf("no sleep to start: %v", err)
	}
	defer func() {
		_ = child.Process.Kill()
		_ = child.Wait()
	}()
	got, err := cpuTicks([]watched{{role: "self", pid: os.Getpid()}})
	if err != nil {
		t.Fatal(err)
	}
	if got["self"].procs < 2 {
		t.Fatalf("tree of the test process has %d processes, want the child too", got["self"].procs)
	}
	if _, err := cpuTicks([]watched{{role: "gone", pid: 1 << 30}}); err == nil {
		t.Fatal("a process that does not exist should be an error")
	}
	if busy, _, err := machineTicks(); err != nil || busy == 0 {
		t.Fatalf("machineTicks: %d, %v", busy, err)
	}
}

func TestQuantileIsNearestRank(t *testing.T) {
	ns := make([]int64, 1000)
	for i := range ns {
		ns[i] = int64(i+1) * 1000 // 1..1000 µs
	}
	for q, want := range map[float64]float64{0.5: 500, 0.99: 990, 0.999: 999, 1: 1000} {
		if got := quantile(ns, q); got != want {
			t.Errorf("quantile(%v) = %v, want %v", q, got, want)
		}
	}
}
