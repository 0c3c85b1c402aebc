package scale

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/rest"

	"kpo.dev/kpo/hack/apiserver"
)

// operator is the real kpo-operator binary, run as its own process so that
// its CPU and memory are its own.
type operator struct {
	cmd         *exec.Cmd
	metricsAddr string
	logs        *bytes.Buffer
	done        chan struct{}
}

// buildOperator builds cmd/kpo-operator into dir.
func buildOperator(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "kpo-operator")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/kpo-operator")
	build.Dir = apiserver.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building kpo-operator: %w: %s", err, out)
	}
	return bin, nil
}

// startOperator runs the operator binary against the API server of kubeconfig.
func startOperator(ctx context.Context, bin, kubeconfig, namespace string) (*operator, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	op := &operator{metricsAddr: addr, logs: &bytes.Buffer{}, done: make(chan struct{})}
	op.cmd = exec.CommandContext(ctx, bin, "--namespace="+namespace, "--agent-image=registry.example/kpo:scale",
		"--metrics-bind-address="+addr, "--health-probe-bind-address=0", "--zap-log-level=error")
	op.cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	op.cmd.Stdout, op.cmd.Stderr = op.logs, op.logs
	if err := op.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = op.cmd.Wait(); close(op.done) }()
	return op, nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String(), nil
}

func (op *operator) stop() {
	_ = op.cmd.Process.Signal(os.Interrupt)
	select {
	case <-op.done:
	case <-time.After(10 * time.Second):
		_ = op.cmd.Process.Kill()
		<-op.done
	}
}

// metrics scrapes the operator's Prometheus endpoint.
func (op *operator) metrics() (promSample, error) {
	resp, err := http.Get("http://" + op.metricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	return parseProm(resp.Body)
}

// promSample maps a metric line's name{labels} to its value.
type promSample map[string]float64

func parseProm(r io.Reader) (promSample, error) {
	s := promSample{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		s[line[:i]] = v
	}
	return s, sc.Err()
}

// sum adds the values of every series of name whose labels contain all of
// the given label="value" pairs.
func (s promSample) sum(name string, labels ...string) float64 {
	total := 0.0
	for k, v := range s {
		if k != name && !strings.HasPrefix(k, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(k, l) {
				ok = false
				break
			}
		}
		if ok {
			total += v
		}
	}
	return total
}

// apiServerMetrics scrapes kube-apiserver's /metrics as the admin.
func apiServerMetrics(cfg *rest.Config) (promSample, error) {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Get(strings.TrimSuffix(cfg.Host, "/") + "/metrics")
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseProm(resp.Body)
}

// procStat is a process's CPU time so far and resident memory.
type procStat struct {
	cpu time.Duration
	rss int64
}

func readProc(pid int) (procStat, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// Fields after the command (which may hold spaces) in parentheses.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	rssPages, _ := strconv.ParseInt(f[21], 10, 64)
	const ticks = 100 // USER_HZ
	return procStat{cpu: time.Duration(utime+stime) * time.Second / ticks, rss: rssPages * int64(os.Getpagesize())}, nil
}

// findProcess returns the pid of the process whose command line contains
// every part (the API server of this run: its binary and its port).
func findProcess(parts ...string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		match := true
		for _, p := range parts {
			if !bytes.Contains(cmdline, []byte(p)) {
				match = false
				break
			}
		}
		if match {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process with %v", parts)
}
