package conformance

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"kpo.dev/kpo/hack/netns"
)

// Probe is one question to the dataplane: from a vantage point, to an address,
// over a protocol. Probes are derived from the objects alone.
type Probe struct {
	// Case, Service and Port say what the probe is about; Target says which of
	// the service's addresses it uses ("clusterIP", "nodePort@node-2", ...).
	Case, Service, Port, Target string
	// Network is tcp, udp or http (a GET of Path).
	Network, Addr, Path string
	// From names the vantage point; ns is its namespace.
	From string
	ns   *netns.NS
	// LocalAddr fixes the source (ip:port), for flows whose conntrack entry
	// must follow a change.
	LocalAddr string
	// Sticky: the service has ClientIP affinity; which endpoint it sticks to
	// is random, how many it uses is not.
	Sticky bool
	// FromEndpoint: the vantage point is one of the service's endpoints.
	FromEndpoint bool
	// Step is the case step the probe runs after ("" for the initial state).
	Step string
}

// ID identifies a probe across the runs of both proxies.
func (p Probe) ID() string {
	s := fmt.Sprintf("%s | %s:%s %s %s %s | from %s", p.Case, p.Service, p.Port, p.Target, p.Network, p.Addr, p.From)
	if p.Path != "" {
		s += " " + p.Path
	}
	if p.LocalAddr != "" {
		s += " (source " + p.LocalAddr + ")"
	}
	if p.Step != "" {
		s = "[" + p.Step + "] " + s
	}
	return s
}

// Observation is what a probe saw. Two proxies behave alike for a probe when
// their observations are equal: sets, never counts or timings.
type Observation struct {
	// Outcomes: answered, refused, reset, host-unreachable, net-unreachable,
	// denied, timeout, eof, or error: <text>.
	Outcomes []string
	// Servers that answered ("n1p0:8080"), or for sticky probes how many did.
	Servers []string
	// Sources: the client addresses the servers saw, by name.
	Sources []string
	// HTTP: status code and normalised body of an http probe.
	HTTP string
}

func (o Observation) String() string {
	var parts []string
	parts = append(parts, strings.Join(o.Outcomes, "+"))
	if len(o.Servers) > 0 {
		parts = append(parts, "servers "+strings.Join(o.Servers, ","))
	}
	if len(o.Sources) > 0 {
		parts = append(parts, "source "+strings.Join(o.Sources, ","))
	}
	if o.HTTP != "" {
		parts = append(parts, o.HTTP)
	}
	return strings.Join(parts, "; ")
}

// Equal reports whether two observations are the same.
func (o Observation) Equal(p Observation) bool {
	return slices.Equal(o.Outcomes, p.Outcomes) && slices.Equal(o.Servers, p.Servers) &&
		slices.Equal(o.Sources, p.Sources) && o.HTTP == p.HTTP
}

// Budgets of one probe. A new server, source or outcome resets the count of
// quiet attempts; a probe ends after quietFor(seen) quiet ones, so that an
// endpoint of n goes unseen with probability below about 1e-5.
const (
	dialTimeout  = 600 * time.Millisecond
	maxAttempts  = 120
	maxTimeouts  = 2
	probeWorkers = 32
)

func quietFor(seen int) int { return 12 + 14*seen }

// runProbes runs every probe (concurrently) and returns observations by ID.
func (w *World) runProbes(probes []Probe) map[string]Observation {
	out := make(map[string]Observation, len(probes))
	var mu sync.Mutex
	work := make(chan Probe)
	var wg sync.WaitGroup
	for range probeWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				o := w.observe(p)
				mu.Lock()
				out[p.ID()] = o
				mu.Unlock()
			}
		}()
	}
	for _, p := range probes {
		work <- p
	}
	close(work)
	wg.Wait()
	return out
}

func (w *World) observe(p Probe) Observation {
	if p.Network == "http" {
		return Observation{Outcomes: []string{"answered"}, HTTP: httpGet(p)}
	}
	o := &observed{outcomes: set{}, servers: set{}, sources: set{}}
	record := func(server, client, outcome string) bool {
		grew := o.outcomes.add(outcome)
		if server != "" {
			grew = o.servers.add(server) || grew
			grew = o.sources.add(w.Name(hostOf(client))) || grew
		}
		return grew
	}
	// A first timeout is tried again a few times at once (cheap, in
	// parallel): one endpoint of two may be unreachable from here.
	if server, client, outcome := dialSettled(p); outcome != "timeout" {
		record(server, client, outcome)
	} else {
		for _, r := range dialParallel(p, firstTimeoutRetries) {
			record(r.server, r.client, r.outcome)
		}
	}
	quiet, timeouts := 0, 0
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if len(o.servers) == 0 && (attempt >= 2 || o.outcomes["timeout"]) || timeouts >= maxTimeouts {
			break
		}
		server, client, outcome := dial(p)
		if outcome == "timeout" && len(o.servers) > 0 {
			// Among answers, a timeout is a signal only if it repeats: a
			// second try (longer) answering says it was the machine's noise.
			if s2, c2, o2 := dialWith(p, 3*dialTimeout); o2 != "timeout" {
				server, client, outcome = s2, c2, o2
			}
		}
		if outcome == "timeout" && len(o.servers) == 0 {
			server, client, outcome = settle(p, server, client, outcome)
		}
		if outcome == "timeout" {
			timeouts++
		}
		if record(server, client, outcome) {
			quiet = 0
		} else if quiet++; quiet >= quietFor(len(o.servers)) {
			break
		}
	}
	obs := Observation{Outcomes: o.outcomes.sorted(), Servers: o.servers.sorted(), Sources: o.sources.sorted()}
	if p.Sticky && len(obs.Servers) > 0 {
		// Which endpoint it sticks to is random, and what source that
		// endpoint sees depends on the draw (a pod reaching itself is
		// masqueraded, a host-network endpoint on the node is reached without
		// postrouting): only how many answered is compared.
		obs.Servers = []string{fmt.Sprintf("%d server(s), sticky", len(obs.Servers))}
		obs.Sources = nil
	}
	return obs
}

// settleTimeout outlasts a TCP SYN's first retransmission (one second).
// Linux (6.18 here) honours an ICMP refusal of a SYN only for the
// retransmission (tcpdump: the port unreachable comes back at once and is
// ignored), so a refusal by ICMP — nftables' reject of IPv6 TCP, in either
// proxy — reaches the client after about a second: past an attempt's 600 ms,
// except when the machine is so loaded that the deadline fires late. Read
// against the short deadline alone, the same probe said "timeout" in one run
// and "refused+timeout" in the next (random seeds 130, 274 under a load
// average of 30).
const settleTimeout = 2500 * time.Millisecond

// settle makes a TCP attempt that timed out read as a patient client sees
// it: one more attempt with settleTimeout, whose refusal replaces the
// timeout. Anything else keeps the timeout (an answer is left to the retries,
// which see every endpoint).
func settle(p Probe, server, client, outcome string) (string, string, string) {
	if p.Network != "tcp" || outcome != "timeout" {
		return server, client, outcome
	}
	if s, c, o := dialWith(p, settleTimeout); o == "refused" {
		return s, c, o
	}
	return server, client, outcome
}

// dialSettled is one attempt, settled.
func dialSettled(p Probe) (server, client, outcome string) {
	server, client, outcome = dial(p)
	return settle(p, server, client, outcome)
}

// firstTimeoutRetries are the parallel attempts after a first timeout.
const firstTimeoutRetries = 16

type observed struct{ outcomes, servers, sources set }

type dialResult struct{ server, client, outcome string }

func dialParallel(p Probe, n int) []dialResult {
	out := make([]dialResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, c, o := dial(p)
			out[i] = dialResult{s, c, o}
		}()
	}
	wg.Wait()
	return out
}

type set map[string]bool

func (s set) add(v string) bool {
	if s[v] {
		return false
	}
	s[v] = true
	return true
}

func (s set) sorted() []string {
	out := make([]string, 0, len(s))
	for k := range s {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return h
}

// dial makes one connection (TCP) or exchange (UDP) and classifies the result.
func dial(p Probe) (server, client, outcome string) { return dialWith(p, dialTimeout) }

func dialWith(p Probe, timeout time.Duration) (server, client, outcome string) {
	var line string
	err := p.ns.Do(func() error {
		d := net.Dialer{Timeout: timeout}
		if p.LocalAddr != "" {
			var err error
			if p.Network == "udp" {
				d.LocalAddr, err = net.ResolveUDPAddr("udp", p.LocalAddr)
			} else {
				d.LocalAddr, err = net.ResolveTCPAddr("tcp", p.LocalAddr)
			}
			if err != nil {
				return err
			}
		}
		c, err := d.Dial(p.Network, p.Addr)
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(timeout))
		if p.Network == "udp" {
			if _, err := c.Write([]byte("ping\n")); err != nil {
				return err
			}
		}
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	if err != nil {
		return "", "", classify(err)
	}
	server, client, _ = strings.Cut(strings.TrimSpace(line), " ")
	if !strings.Contains(server, ":") {
		server += ":8080" // testnet's own echo servers name only the pod
	}
	return server, client, "answered"
}

func classify(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "host-unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		return "net-unreachable"
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return "denied"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, io.EOF):
		return "eof"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "error: " + err.Error()
}

// httpGet fetches http://Addr/Path from the vantage point and returns
// "<code> <body>", the body normalised (JSON with times blanked).
func httpGet(p Probe) string {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := p.ns.Do(func() error {
				var err error
				c, err = (&net.Dialer{Timeout: dialTimeout}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 2 * dialTimeout}
	resp, err := cl.Get("http://" + p.Addr + p.Path)
	if err != nil {
		return classify(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return fmt.Sprintf("%d %s", resp.StatusCode, normaliseBody(body))
}

// timeKeys are JSON fields whose values are times, blanked for comparison.
var timeKeys = map[string]bool{"lastUpdated": true, "currentTime": true}

func normaliseBody(body []byte) string {
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return strings.TrimSpace(string(body))
	}
	blankTimes(v)
	out, _ := json.Marshal(v)
	return string(out)
}

func blankTimes(v any) {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if timeKeys[k] {
				x[k] = "<time>"
			} else {
				blankTimes(val)
			}
		}
	case []any:
		for _, val := range x {
			blankTimes(val)
		}
	}
}
