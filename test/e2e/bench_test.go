package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// BenchmarkAgentColdSync measures a real kpo-agent process against a real API
// server: the time from process start to its first complete sync, that sync's
// duration, and the agent's memory, for N Services × E endpoints.
//
//	go test ./test/e2e/ -run XXX -bench AgentColdSync -benchtime 1x -timeout 60m
//
// Sizes grow within one API server (Services cannot be deleted in bulk):
// 1k×2, then the same 1k Services with 50 endpoints, then 10k×2.
func BenchmarkAgentColdSync(b *testing.B) {
	netns.Skip(b)
	kube := kubernetes.NewForConfigOrDie(api.Config)
	l := testnet.NewLoader(kube)
	// Sizes outside, modes inside: the data set only grows, so each size is
	// loaded once and measured in every mode.
	for _, size := range []struct{ services, endpoints int }{{1000, 2}, {1000, 50}, {10000, 2}} {
		for _, mode := range []kpov1.Mode{kpov1.ModeNFTables, kpov1.ModeIPTables} {
			b.Run(fmt.Sprintf("%dx%d/%s", size.services, size.endpoints, mode), func(b *testing.B) {
				l.Ensure(b, size.services, size.endpoints)
				for range b.N {
					coldSync(b, mode, size.services)
				}
			})
		}
	}
}

var syncedLine = regexp.MustCompile(`"synced" full=true reason="[a-z]+" servicePorts=(\d+) written=\d+ rules=(\d+) duration="([^"]+)"`)

func coldSync(b *testing.B, mode kpov1.Mode, services int) {
	tn := testnet.New(b, api, agentBin, 1, 0)
	node := tn.Nodes[0]
	cfg := agentConfig(mode)
	start := time.Now()
	node.StartAgent(b, cfg)
	deadline := start.Add(10 * time.Minute)
	for {
		if m := syncedLine.FindAllStringSubmatch(node.AgentLogs(), -1); len(m) > 0 {
			last := m[len(m)-1]
			if n, _ := strconv.Atoi(last[1]); n >= services {
				firstSync := time.Since(start)
				d, _ := time.ParseDuration(last[3])
				rules, _ := strconv.Atoi(last[2])
				b.ReportMetric(firstSync.Seconds(), "start-to-synced-s")
				b.ReportMetric(d.Seconds(), "sync-s")
				if t, ok := klogTime(node.AgentLogs(), "caches synced", start); ok {
					b.ReportMetric(t.Sub(start).Seconds(), "start-to-caches-synced-s")
				}
				b.ReportMetric(float64(rules), "rules")
				rss, hwm, err := testnet.Memory(node.AgentPID())
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(rss, "rss-MiB")
				b.ReportMetric(hwm, "peak-rss-MiB")
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("no complete sync of %d services within 10m", services)
		}
		time.Sleep(50 * time.Millisecond) // polling the agent's log, bounded by the deadline
	}
	node.KillAgent()
}

// klogTime is the time of the first klog line containing what (klog writes
// local wall-clock times without a date: the day is start's).
func klogTime(logs, what string, start time.Time) (time.Time, bool) {
	for _, line := range strings.Split(logs, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.Contains(line, what) {
			continue
		}
		t, err := time.ParseInLocation("15:04:05.000000", f[1], time.Local)
		if err != nil {
			return time.Time{}, false
		}
		y, m, d := start.Date()
		return time.Date(y, m, d, t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.Local), true
	}
	return time.Time{}, false
}
