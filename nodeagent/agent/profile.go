package agent

import (
	"os"
	"runtime/pprof"
	"sync"

	"k8s.io/klog/v2"
)

var cpuProfile struct {
	sync.Mutex
	f *os.File
}

// StartCPUProfile profiles the process's CPU from now (call it first thing)
// to the end of its first full sync, into the file named by
// $KPO_AGENT_CPU_PROFILE, if set: where a cold start's CPU goes (the
// benchmarks' "CPU to cold sync"; go tool pprof -top).
func StartCPUProfile() {
	path := os.Getenv("KPO_AGENT_CPU_PROFILE")
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		klog.ErrorS(err, "CPU profile")
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		klog.ErrorS(err, "CPU profile")
		_ = f.Close()
		return
	}
	cpuProfile.Lock()
	cpuProfile.f = f
	cpuProfile.Unlock()
}

// stopCPUProfile ends StartCPUProfile's profile (once; later calls do nothing).
func stopCPUProfile() {
	cpuProfile.Lock()
	defer cpuProfile.Unlock()
	if cpuProfile.f == nil {
		return
	}
	pprof.StopCPUProfile()
	_ = cpuProfile.f.Close()
	cpuProfile.f = nil
}
