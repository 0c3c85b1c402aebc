// Package proxystats reads what the benchmarks compare between kube-proxy and
// kpo: a proxy's Prometheus metrics (scraped from inside its namespace), its
// CPU time and memory from /proc, and the machine's load; and stops a proxy
// with its children. test/bench and the IPVS comparison in the VM
// (test/vm/inside) share it.
package proxystats

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// Metrics is one Prometheus text scrape: series (name plus labels, as
// exposed) to value.
type Metrics map[string]float64

// Scrape fetches http://addr/metrics from inside ns. The socket is opened and
// read on the namespace's thread (ns.Do): http.Client would dial from another
// goroutine, i.e. from the root namespace, where nothing listens.
func Scrape(ns *netns.NS, addr string) (Metrics, error) {
	var body []byte
	err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: %s\r\nAccept: text/plain\r\nConnection: close\r\n\r\n", addr); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer func() { _ = resp.Body.Close() }()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("metrics: %s", resp.Status)
		}
		body, err = io.ReadAll(resp.Body)
		return err
	})
	if err != nil {
		return nil, err
	}
	m := Metrics{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				m[line[:i]] = v
			}
		}
	}
	return m, nil
}

// Sum adds up every series of name whose labels contain all of labels (e.g.
// `type="full"`). kube-proxy runs one proxier per IP family and both observe
// into the same histograms, so a metric is the sum over its series.
func (m Metrics) Sum(name string, labels ...string) float64 {
	var total float64
	for k, v := range m {
		base, rest, _ := strings.Cut(k, "{")
		if base != name {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(rest, l)
		}
		if ok {
			total += v
		}
	}
	return total
}

// ProcStats is what /proc says about one process.
type ProcStats struct {
	RSSMiB, PeakRSSMiB float64
	// CPUSeconds is user+system time of the process and of its waited-for
	// children: kube-proxy does its kernel work in iptables-restore, nft and
	// ipset child processes, which a process-only figure would leave out.
	CPUSeconds float64
	// ChildCPUSeconds is the children's share of CPUSeconds.
	ChildCPUSeconds float64
}

// clockTicks is USER_HZ, which is 100 on every Linux architecture Go supports.
const clockTicks = 100

// ReadProc reads pid's memory and CPU time.
func ReadProc(pid int) (ProcStats, error) {
	var s ProcStats
	var err error
	if s.RSSMiB, s.PeakRSSMiB, err = testnet.Memory(pid); err != nil {
		return s, err
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// The command name (field 2) may hold spaces; fields are counted after it.
	_, rest, ok := strings.Cut(string(stat), ") ")
	f := strings.Fields(rest)
	// rest starts at field 3 (state): utime..cstime are fields 14..17.
	if !ok || len(f) < 15 {
		return s, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	var ticks [4]float64
	for i, x := range f[11:15] {
		ticks[i], _ = strconv.ParseFloat(x, 64)
	}
	s.CPUSeconds = (ticks[0] + ticks[1] + ticks[2] + ticks[3]) / clockTicks
	s.ChildCPUSeconds = (ticks[2] + ticks[3]) / clockTicks
	return s, nil
}

// LoadAverage is the 1-minute load average: machines are shared, and a busy
// neighbour shows in every figure.
func LoadAverage() float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// KillTree stops pid, then kills it and every process below it: a proxy
// killed in the middle of a sync leaves its ipset or iptables-restore child
// running, which would load the machine through the next proxy's run.
func KillTree(pid int) {
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if _, rest, ok := strings.Cut(string(stat), ") "); ok {
			if f := strings.Fields(rest); len(f) > 1 {
				ppid, _ := strconv.Atoi(f[1])
				children[ppid] = append(children[ppid], c)
			}
		}
	}
	all := []int{pid}
	for i := 0; i < len(all); i++ {
		all = append(all, children[all[i]]...)
	}
	for _, p := range all {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
}

// Command is this benchmark run's command line, for the report a benchmark
// writes: the environment variables of envKeys that are set, KPO_BENCH_WRITE,
// the `nice` it runs under, `go test pkg` and the test flags it was given.
func Command(pkg string, envKeys ...string) string {
	var env []string
	for _, k := range envKeys {
		if v := os.Getenv(k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, "KPO_BENCH_WRITE=1")
	args := []string{"go", "test", pkg}
	if n := niceness(); n > 0 {
		args = append([]string{"nice", "-n", strconv.Itoa(n)}, args...)
	}
	for _, a := range os.Args[1:] {
		if name, ok := strings.CutPrefix(a, "-test."); ok && !strings.HasPrefix(name, "paniconexit0") &&
			!strings.HasPrefix(name, "testlogfile") && !strings.HasPrefix(name, "gocoverdir") {
			args = append(args, "-"+name)
		}
	}
	return strings.Join(env, " ") + " " + strings.Join(args, " ")
}

// niceness is this process's nice value (field 19 of /proc/self/stat), so
// that the command shows the `nice -n 5` of make bench.
func niceness() int {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	_, rest, _ := strings.Cut(string(stat), ") ")
	if f := strings.Fields(rest); len(f) >= 17 {
		n, _ := strconv.Atoi(f[16])
		return n
	}
	return 0
}
