package e2e

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/test/netns"
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
	l := &loader{kube: kube}
	// Sizes outside, modes inside: the data set only grows, so each size is
	// loaded once and measured in every mode.
	for _, size := range []struct{ services, endpoints int }{{1000, 2}, {1000, 50}, {10000, 2}} {
		for _, mode := range []kpov1.Mode{kpov1.ModeNFTables, kpov1.ModeIPTables} {
			b.Run(fmt.Sprintf("%dx%d/%s", size.services, size.endpoints, mode), func(b *testing.B) {
				l.ensure(b, size.services, size.endpoints)
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
				b.ReportMetric(float64(rules), "rules")
				rss, hwm := memory(b, node.AgentPID())
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

// memory reads the agent's resident set size and its peak, in MiB.
func memory(b *testing.B, pid int) (rss, hwm float64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		}
	}
	return rss, hwm
}

// loader creates Services and EndpointSlices with parallel workers.
type loader struct {
	kube      kubernetes.Interface
	endpoints map[int]int // endpoints per service index
}

const benchNamespace = "bench"

func (l *loader) ensure(b *testing.B, services, endpoints int) {
	b.Helper()
	ctx := context.Background()
	if l.endpoints == nil {
		l.endpoints = map[int]int{}
		_, _ = l.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNamespace}}, metav1.CreateOptions{})
	}
	start := time.Now()
	work := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := l.one(ctx, i, endpoints); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range services {
		if l.endpoints[i] != endpoints {
			work <- i
		}
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	for i := range services {
		l.endpoints[i] = endpoints
	}
	b.Logf("loaded %d services × %d endpoints in %v", services, endpoints, time.Since(start).Round(time.Millisecond))
}

// one creates service i (if new) and writes its EndpointSlice with n endpoints.
func (l *loader) one(ctx context.Context, i, n int) error {
	name := fmt.Sprintf("svc-%d", i)
	if _, known := l.endpointsOf(i); !known {
		ip := fmt.Sprintf("10.96.%d.%d", 100+i/250, 1+i%250)
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: benchNamespace, Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		}
		if _, err := l.kube.CoreV1().Services(benchNamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNamespace, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for e := range n {
		// Pod addresses behind other nodes: 10.244.2.0/24 onwards, unique per endpoint.
		k := i*n + e
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{fmt.Sprintf("10.244.%d.%d", 2+k/250%250, 1+k%250)},
			NodeName:  ptr.To("node-2"),
		})
	}
	slices := l.kube.DiscoveryV1().EndpointSlices(benchNamespace)
	existing, err := slices.Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		slice.ResourceVersion = existing.ResourceVersion
		_, err = slices.Update(ctx, slice, metav1.UpdateOptions{})
		return err
	}
	_, err = slices.Create(ctx, slice, metav1.CreateOptions{})
	return err
}

func (l *loader) endpointsOf(i int) (int, bool) {
	n, ok := l.endpoints[i]
	return n, ok
}
