package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"kpo.dev/kpo/hack/netns"

	"kpo.dev/kpo/test/testnet"
)

// metrics is one Prometheus text scrape: series (name plus labels, as
// exposed) to value.
type metrics map[string]float64

// scrape fetches http://addr/metrics from inside ns. The socket is opened and
// read on the namespace's thread (ns.Do): http.Client would dial from another
// goroutine, i.e. from the root namespace, where nothing listens.
func scrape(ns *netns.NS, addr string) (metrics, error) {
	var body []byte
	err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
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
	m := metrics{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			m[line[:i]] = v
		}
	}
	return m, nil
}

// sum adds up every series of name whose labels contain all of labels (e.g.
// `type="full"`). kube-proxy runs one proxier per IP family and both observe
// into the same histograms, so a metric is the sum over its series.
func (m metrics) sum(name string, labels ...string) float64 {
	var total float64
	for k, v := range m {
		base, rest, _ := strings.Cut(k, "{")
		if base != name {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
			}
		}
		if ok {
			total += v
		}
	}
	return total
}

// procStats is what /proc says about one process.
type procStats struct {
	RSSMiB, PeakRSSMiB float64
	// CPUSeconds is user+system time of the process and of its waited-for
	// children: kube-proxy does its kernel work in iptables-restore and nft
	// child processes, which a process-only figure would leave out.
	CPUSeconds float64
	// ChildCPUSeconds is the children's share of CPUSeconds.
	ChildCPUSeconds float64
}

// clockTicks is USER_HZ, which is 100 on every Linux architecture Go supports.
const clockTicks = 100

func readProc(pid int) (procStats, error) {
	var s procStats
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
	if !ok {
		return s, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(rest)
	// rest starts at field 3 (state): utime..cstime are fields 14..17.
	if len(f) < 15 {
		return s, fmt.Errorf("short /proc/%d/stat", pid)
	}
	var ticks [4]float64
	for i, x := range f[11:15] {
		ticks[i], _ = strconv.ParseFloat(x, 64)
	}
	s.CPUSeconds = (ticks[0] + ticks[1] + ticks[2] + ticks[3]) / clockTicks
	s.ChildCPUSeconds = (ticks[2] + ticks[3]) / clockTicks
	return s, nil
}

// loadAverage is the 1-minute load average: the machine is shared, and a busy
// neighbour shows in every figure.
func loadAverage() float64 {
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

// ruleset counts the rules in ns the way an operator would see them: rules in
// `nft -j list ruleset` (nftables) or -A lines of iptables-save and ip6tables-save
// (iptables), and the size of that dump, which also covers set and map
// elements that nft prints many to a line.
func ruleset(ns *netns.NS, mode string) (rules, bytes int, err error) {
	var dumps []string
	if mode == "nftables" {
		out, err := ns.Run("nft", "list", "ruleset")
		if err != nil {
			return 0, 0, err
		}
		dumps = append(dumps, out)
		// Rules and set/map elements both: a layout that keeps endpoints in
		// maps (kpo's) and one that keeps them in rules (kube-proxy's) are then
		// counted alike. The JSON form tells them apart; the text form cannot.
		js, err := ns.Run("nft", "-j", "list", "ruleset")
		if err != nil {
			return 0, 0, err
		}
		if rules, err = nftObjects(js); err != nil {
			return 0, 0, err
		}
	} else {
		for _, tool := range []string{"iptables-save", "ip6tables-save"} {
			out, err := ns.Run(tool)
			if err != nil {
				return 0, 0, err
			}
			dumps = append(dumps, out)
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, "-A ") {
					rules++
				}
			}
		}
	}
	for _, d := range dumps {
		bytes += len(d)
	}
	return rules, bytes, nil
}

// nftObjects counts the rules and the set and map elements of `nft -j list
// ruleset` output.
func nftObjects(js string) (int, error) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(js), &doc); err != nil {
		return 0, err
	}
	n := 0
	for _, obj := range doc.Nftables {
		if _, ok := obj["rule"]; ok {
			n++
		}
		for _, kind := range []string{"set", "map"} {
			if raw, ok := obj[kind]; ok {
				var set struct {
					Elem []json.RawMessage `json:"elem"`
				}
				if err := json.Unmarshal(raw, &set); err != nil {
					return 0, err
				}
				n += len(set.Elem)
			}
		}
	}
	return n, nil
}
