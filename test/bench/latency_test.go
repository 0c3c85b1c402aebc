package bench

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// The backends: one namespace behind the node that owns every address the
// loader gives its endpoints (10.244.2.0 to 10.244.255.255, routed "local" to
// its loopback) and answers on TCP 8080 of each with that address. So every
// Service has real backends, and an answer names the endpoint that served it.
const (
	backendsIP4 = "10.244.1.254"
	backendsIP6 = "fd10:244:0:1::fe"
)

// backendPrefixes cover 10.244.2.0–10.244.255.255 (not 10.244.1.0/24: the
// node's own pod subnet, where the backends namespace and its gateway live).
var backendPrefixes = []string{"10.244.2.0/23", "10.244.4.0/22", "10.244.8.0/21", "10.244.16.0/20",
	"10.244.32.0/19", "10.244.64.0/18", "10.244.128.0/17"}

func addBackends(b testing.TB, node *testnet.Node) {
	be := netns.New(b, "backends")
	netns.PlugPod(b, node.NS, "vpbe", be, backendsIP4, backendsIP6, netns.PodGateway4, netns.PodGateway6)
	for _, p := range backendPrefixes {
		node.Route(b, p, backendsIP4, "vpbe")
		be.MustRun(b, "ip", "route", "add", "local", p, "dev", "lo")
	}
	var l net.Listener
	if err := be.Do(func() error {
		var err error
		l, err = net.Listen("tcp4", "0.0.0.0:8080")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				host, _, _ := net.SplitHostPort(c.LocalAddr().String())
				_, _ = fmt.Fprintf(c, "%s\n", host)
				_ = c.Close()
			}()
		}
	}()
}

// prober dials services from inside a namespace with a few goroutines that
// stay on threads in it (netns.NS.Do costs a thread per call, too much for
// thousands of probes).
type prober struct{ reqs chan probeReq }

type probeReq struct {
	addr  string
	reply chan probe
}

// probe is one connection: how long connect() took (the SYN through the
// proxy's rules to the SYN-ACK) and the backend's answer.
type probe struct {
	connect time.Duration
	answer  string
	err     error
}

func newProber(b testing.TB, ns *netns.NS, workers int) *prober {
	p := &prober{reqs: make(chan probeReq)}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = ns.Do(func() error {
				for r := range p.reqs {
					r.reply <- dialOnce(r.addr)
				}
				return nil
			})
		}()
	}
	b.Cleanup(func() { close(p.reqs); wg.Wait() })
	return p
}

func dialOnce(addr string) probe {
	t0 := time.Now()
	c, err := net.DialTimeout("tcp4", addr, time.Second)
	if err != nil {
		return probe{err: err}
	}
	d := time.Since(t0)
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return probe{connect: d, answer: strings.TrimSpace(line), err: err}
}

func (p *prober) dial(addr string) probe {
	r := probeReq{addr: addr, reply: make(chan probe, 1)}
	p.reqs <- r
	return <-r.reply
}

// connectLatency is the first-packet figure: the median connect() time to the
// service that comes first and the one that comes last in the proxy's
// dispatch, over samples connections each, alternating between the two.
func connectLatency(p *prober, first, last string, samples int) (f, l time.Duration, err error) {
	var df, dl []time.Duration
	for range samples {
		for _, x := range []struct {
			ip string
			to *[]time.Duration
		}{{first, &df}, {last, &dl}} {
			r := p.dial(net.JoinHostPort(x.ip, "80"))
			if r.err != nil || r.answer == "" {
				return 0, 0, fmt.Errorf("connecting to %s: %v (answer %q)", x.ip, r.err, r.answer)
			}
			*x.to = append(*x.to, r.connect)
		}
	}
	return percentile(df, 0.5), percentile(dl, 0.5), nil
}

// percentile is the nearest-rank percentile q (0..1] of ds.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

var (
	serviceIP = regexp.MustCompile(`10\.96\.1\d\d\.\d+`) // the loader's, not the API server's 10.96.0.1
	jumpTo    = regexp.MustCompile(`-j (\S+)`)
)

// dispatchOrder lists the loader's ClusterIPs in the order the proxy's rules
// consider them. iptables: a walk of the nat table from the dispatch chain
// (KUBE-SERVICES, KPO-SERVICES) that descends into jumps without a ClusterIP
// match (kpo's per-byte KPO-DST-xx chains) and records the ClusterIP of the
// others, rule by rule. nftables: both dispatch through the service-ips
// verdict map, a hash lookup: the order is the dump's and means nothing.
func dispatchOrder(ns *netns.NS, impl, mode string) ([]string, error) {
	if mode == "nftables" {
		table := "kpo"
		if impl == "kube-proxy" {
			table = "kube-proxy"
		}
		out, err := ns.Run("nft", "list", "map", "ip", table, "service-ips")
		if err != nil {
			return nil, err
		}
		return uniq(serviceIP.FindAllString(out, -1)), nil
	}
	out, err := ns.Run("iptables-save", "-t", "nat")
	if err != nil {
		return nil, err
	}
	chains := map[string][]string{}
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(line, "-A "); ok {
			name, rule, _ := strings.Cut(rest, " ")
			chains[name] = append(chains[name], rule)
		}
	}
	root := "KPO-SERVICES"
	if impl == "kube-proxy" {
		root = "KUBE-SERVICES"
	}
	var ips []string
	seen := map[string]bool{}
	var walk func(chain string, depth int)
	walk = func(chain string, depth int) {
		if depth > 3 || seen[chain] {
			return
		}
		seen[chain] = true
		for _, rule := range chains[chain] {
			if ip := serviceIP.FindString(rule); ip != "" {
				ips = append(ips, ip)
			} else if m := jumpTo.FindStringSubmatch(rule); m != nil {
				walk(m[1], depth+1)
			}
		}
	}
	walk(root, 0)
	return uniq(ips), nil
}

func uniq(ips []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, ip := range ips {
		if !seen[ip] {
			seen[ip] = true
			out = append(out, ip)
		}
	}
	return out
}

// churnResult is network programming latency under steady churn.
type churnResult struct {
	Impl     string `json:"impl"`
	Mode     string `json:"mode"`
	Services int    `json:"services"`
	// MinSyncPeriod and SyncPeriod are the settings of both proxies in this run.
	MinSyncPeriod string  `json:"minSyncPeriod"`
	SyncPeriod    string  `json:"syncPeriod"`
	Changes       int     `json:"changes"`
	RatePerS      float64 `json:"ratePerSecond"`
	P50MS         float64 `json:"p50ms"`
	P99MS         float64 `json:"p99ms"`
	MaxMS         float64 `json:"maxms"`
	// NotLive counts changes whose new endpoint did not answer within the
	// deadline; they count as the deadline in the percentiles.
	NotLive int `json:"notLive"`
	// CPUS is the proxy's CPU time (with children) during the churn.
	CPUS   float64 `json:"cpuSeconds"`
	Capped bool    `json:"capped"`
	CapS   float64 `json:"capSeconds"`
}

// churn retargets one service every 1/rate to a new endpoint (a new address
// of the backends namespace) and, for each change, connects to the service
// until the new address answers: the EndpointSlice write to a live rule. The
// probes back off with the time elapsed (elapsed/20, 2–100 ms), so that their
// resolution is ~5% and slow proxies do not drown in probes.
func churn(b testing.TB, l *testnet.Loader, p *prober, services, changes int, rate float64) (lat []time.Duration, notLive int, actualRate float64) {
	const deadline = time.Minute
	var mu sync.Mutex
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	start := time.Now()
	for k := range changes {
		<-tick.C
		resultsMu.Lock()
		touches++
		gen := touches
		resultsMu.Unlock()
		// 7919 is prime: k*7919 mod services visits distinct services.
		i, addr := k*7919%services, testnet.ChangedEndpointIP(gen)
		t0 := time.Now()
		if err := l.Retarget(context.Background(), i, addr); err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			target := net.JoinHostPort(testnet.BenchServiceIP(i), "80")
			for {
				r := p.dial(target)
				el := time.Since(t0)
				if r.err == nil && r.answer == addr {
					mu.Lock()
					lat = append(lat, el)
					mu.Unlock()
					return
				}
				if el > deadline {
					mu.Lock()
					lat, notLive = append(lat, deadline), notLive+1
					mu.Unlock()
					return
				}
				time.Sleep(min(max(el/20, 2*time.Millisecond), 100*time.Millisecond)) // probe interval, bounded by the deadline
			}
		}()
	}
	actualRate = float64(changes) / time.Since(start).Seconds()
	wg.Wait()
	return lat, notLive, actualRate
}
