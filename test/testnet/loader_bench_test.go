package testnet_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/test/proxystats"
	"kpo.dev/kpo/test/testnet"
)

// BenchmarkLoader measures how fast the Loader fills a fresh API server:
// Services per second, and the CPU seconds the loader (this process),
// kube-apiserver and etcd spent on it, so that a slow load says where the time
// goes.
//
//	KPO_LOAD_SERVICES=10000 go test ./test/testnet/ -run XXX -bench Loader -benchtime 1x
//
// KPO_LOAD_SERVICES (default 2000) Services × 2 endpoints.
func BenchmarkLoader(b *testing.B) {
	services := 2000
	if s := os.Getenv("KPO_LOAD_SERVICES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			b.Fatalf("KPO_LOAD_SERVICES=%q: want a positive number", s)
		}
		services = n
	}
	for range b.N {
		api, err := apiserver.Start()
		if err != nil {
			b.Fatal(err)
		}
		kube, err := kubernetes.NewForConfig(testnet.LoaderConfig(api.Config))
		if err != nil {
			b.Fatal(err)
		}
		before := cpuByName(b)
		t0 := time.Now()
		profiled := profileAPIServer(b, kube)
		testnet.NewLoader(kube).Ensure(b, services, 2)
		elapsed := time.Since(t0)
		<-profiled
		after := cpuByName(b)
		if err := api.Stop(); err != nil {
			b.Error(err)
		}
		b.ReportMetric(float64(services)/elapsed.Seconds(), "services/s")
		b.ReportMetric(elapsed.Seconds(), "load-s")
		for _, name := range []string{"loader", "kube-apiserver", "etcd"} {
			b.ReportMetric(after[name]-before[name], name+"-cpu-s")
		}
		b.Logf("load average %.2f", proxystats.LoadAverage())
	}
}

// profileAPIServer writes a CPU profile of kube-apiserver during the first
// 20 s of the load to $KPO_LOAD_APISERVER_PROFILE, if set; the channel is
// closed when it is written.
func profileAPIServer(b *testing.B, kube kubernetes.Interface) <-chan struct{} {
	done := make(chan struct{})
	path := os.Getenv("KPO_LOAD_APISERVER_PROFILE")
	if path == "" {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		raw, err := kube.CoreV1().RESTClient().Get().AbsPath("/debug/pprof/profile").
			Param("seconds", "20").DoRaw(context.Background())
		if err == nil {
			err = os.WriteFile(path, raw, 0o644)
		}
		if err != nil {
			b.Errorf("kube-apiserver profile: %v", err)
		}
	}()
	return done
}

// cpuByName is the CPU seconds of this process ("loader") and of its child
// processes by command name (envtest's kube-apiserver and etcd).
func cpuByName(b *testing.B) map[string]float64 {
	b.Helper()
	cpu := map[string]float64{}
	self, err := proxystats.ReadProc(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	cpu["loader"] = self.CPUSeconds
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		name, rest, ok := strings.Cut(string(data), ") ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 2 || f[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		name = name[strings.Index(name, "(")+1:]
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
		if s, err := proxystats.ReadProc(pid); err == nil {
			cpu[name] += s.CPUSeconds
		}
	}
	return cpu
}
