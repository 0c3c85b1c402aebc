package soak

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// Sample is one reading of an agent, taken every few seconds of the soak.
type Sample struct {
	// At is the time since the churn started.
	At time.Duration
	// RSSMiB is the agent's resident set (VmRSS).
	RSSMiB float64
	// HeapMiB is the Go heap in use (go_memstats_heap_inuse_bytes): RSS without
	// the runtime's free pages, so a leak in Go objects shows here first.
	HeapMiB float64
	// LiveHeapMiB is the heap that survived the last GC, from the runtime's
	// heap goal (go_memstats_next_gc_bytes = live × (1 + GOGC/100)): the
	// smooth part of the heap, without the garbage between collections.
	LiveHeapMiB float64
	// Goroutines is go_goroutines.
	Goroutines float64
	// FullSyncs, PartialSyncs and FailedSyncs are the agent's sync counters
	// (kubeproxy_sync_{full,partial}_proxy_rules_duration_seconds_count,
	// kpo_sync_proxy_rules_failures_total).
	FullSyncs, PartialSyncs, FailedSyncs float64
	// Pending is kubeproxy_sync_proxy_rules_service_changes_pending.
	Pending float64
	// CPUSeconds is the agent's user+system time, with its waited-for children
	// (iptables-restore).
	CPUSeconds float64
	// Requests and FailedRequests are the loads through this node so far.
	Requests, FailedRequests int
}

// Agent is how to read one agent: its process and its /metrics, which it
// serves on the loopback of its node's namespace.
type Agent struct {
	PID  int
	NS   *netns.NS
	http *http.Client
}

// MetricsAddr is where the agent serves /metrics (the default metricsPort,
// on the loopback).
const MetricsAddr = "127.0.0.1:10249"

// NewAgent reads the agent with process pid in namespace ns.
func NewAgent(pid int, ns *netns.NS) *Agent {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		// The socket is made on a thread inside the namespace and stays there.
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &Agent{PID: pid, NS: ns, http: &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true},
	}}
}

// Metrics fetches and parses the agent's /metrics.
func (a *Agent) Metrics() (Metrics, error) {
	resp, err := a.http.Get("http://" + MetricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, err
	}
	return Metrics(families), nil
}

// Read takes one sample (without At and the request counts).
func (a *Agent) Read() (Sample, error) {
	var s Sample
	var err error
	if s.RSSMiB, _, err = testnet.Memory(a.PID); err != nil {
		return s, err
	}
	if s.CPUSeconds, err = cpuSeconds(a.PID); err != nil {
		return s, err
	}
	m, err := a.Metrics()
	if err != nil {
		return s, err
	}
	s.HeapMiB = m.Value("go_memstats_heap_inuse_bytes") / (1 << 20)
	gogc := 100.0
	if f, ok := m["go_gc_gogc_percent"]; ok && len(f.GetMetric()) > 0 {
		gogc = m.Value("go_gc_gogc_percent")
	}
	s.LiveHeapMiB = m.Value("go_memstats_next_gc_bytes") / (1 + gogc/100) / (1 << 20)
	s.Goroutines = m.Value("go_goroutines")
	s.FullSyncs = m.Value("kubeproxy_sync_full_proxy_rules_duration_seconds")
	s.PartialSyncs = m.Value("kubeproxy_sync_partial_proxy_rules_duration_seconds")
	s.FailedSyncs = m.Value("kpo_sync_proxy_rules_failures_total")
	s.Pending = m.Value("kubeproxy_sync_proxy_rules_service_changes_pending")
	return s, nil
}

// Metrics is one scrape, by family name.
type Metrics map[string]*dto.MetricFamily

// Value adds up the series of a family whose labels include labelPairs
// (name, value, name, value...): the value of a counter or gauge, the count
// of a histogram. A missing family is 0.
func (m Metrics) Value(name string, labelPairs ...string) float64 {
	f, ok := m[name]
	if !ok {
		return 0
	}
	var total float64
	for _, metric := range f.GetMetric() {
		if !hasLabels(metric, labelPairs) {
			continue
		}
		switch {
		case metric.Counter != nil:
			total += metric.GetCounter().GetValue()
		case metric.Gauge != nil:
			total += metric.GetGauge().GetValue()
		case metric.Histogram != nil:
			total += float64(metric.GetHistogram().GetSampleCount())
		case metric.Untyped != nil:
			total += metric.GetUntyped().GetValue()
		}
	}
	return total
}

func hasLabels(metric *dto.Metric, pairs []string) bool {
	for i := 0; i+1 < len(pairs); i += 2 {
		found := false
		for _, l := range metric.GetLabel() {
			if l.GetName() == pairs[i] && l.GetValue() == pairs[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// cpuSeconds is utime+stime+cutime+cstime of /proc/<pid>/stat: the
// process's CPU time and that of its children it waited for.
func cpuSeconds(pid int) (float64, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces; the fields start after its ')'.
	_, rest, ok := strings.Cut(string(stat), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 15 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, stat)
	}
	var ticks float64
	// Fields 14–17 of proc(5) (utime stime cutime cstime) are 11–14 here.
	for _, s := range f[11:15] {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += v
	}
	return ticks / clockTicks, nil
}
