package conformance

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/explain"
	"kpo.dev/kpo/test/testnet"
)

// The explanation check: for every probe of a Service address (ClusterIP,
// external and load-balancer IPs, NodePorts on every address), kubectl kpo
// explain's model (package explain, on the objects read back from the API
// server, with the agent's configuration) predicts what the packets do, and
// the prediction is compared with what kpo's agent did. The prediction is
// the explanation of the node that handles the probe, put into this world:
// which node handles it (the vantage point's own node for service
// addresses, the addressed node for NodePorts), and whether a reply can
// come back (a connection that keeps its source answers only when the
// endpoint or the sender sits behind the node that translated it).

// explainCheck is one run's comparison of explanations with reality.
type explainCheck struct {
	Checked int
	Wrong   []string
	// Unstable predictions missed once and held when the probe ran again
	// (the harness's own noise: a lost datagram, a slow answer).
	Unstable int
}

// explainable reports whether a probe asks about a Service address (the
// wrong-port, global and HTTP probes are about the node, not a Service).
func explainable(p Probe) bool {
	if p.Network == "http" || p.Case == "node" || strings.Contains(p.Target, "wrong port") {
		return false
	}
	return p.Target == "clusterIP" || p.Target == "externalIP" || p.Target == "loadBalancerIP" || strings.HasPrefix(p.Target, "nodePort@")
}

// checkExplanations predicts each explainable probe and compares; a miss
// counts when the probe, run again at once, misses again.
func (s *Suite) checkExplanations(settings Settings, probes []Probe, obs map[string]Observation) (*explainCheck, error) {
	models, err := s.nodeModels(settings)
	if err != nil {
		return nil, err
	}
	out := &explainCheck{}
	type miss struct {
		p    Probe
		pred prediction
		text string
	}
	var misses []miss
	for _, p := range probes {
		o, ok := obs[p.ID()]
		if !explainable(p) || !ok {
			continue
		}
		out.Checked++
		pred, text, err := s.predict(models, p)
		if err != nil {
			out.Wrong = append(out.Wrong, fmt.Sprintf("%s\n    explain error: %v", p.ID(), err))
			continue
		}
		if !pred.matches(o) {
			misses = append(misses, miss{p, pred, text})
		}
	}
	if len(misses) == 0 {
		return out, nil
	}
	again := make([]Probe, len(misses))
	for i, m := range misses {
		again[i] = m.p
	}
	obs2 := s.World.runProbes(again)
	for _, m := range misses {
		o := obs2[m.p.ID()]
		if m.pred.matches(o) {
			out.Unstable++
			continue
		}
		out.Wrong = append(out.Wrong, fmt.Sprintf("%s\n    predicted: %s\n    kpo did:   %s (then %s)\n%s", m.p.ID(), m.pred, obs[m.p.ID()], o, m.text))
	}
	return out, nil
}

// nodeModels builds every node's model as kubectl kpo explain does, from
// the objects as the API server holds them now.
func (s *Suite) nodeModels(settings Settings) (map[string]*explain.NodeModel, error) {
	ctx := context.Background()
	objs, err := explain.Load(ctx, s.API.Client)
	if err != nil {
		return nil, err
	}
	cfg := kpoConfig(settings)
	out := map[string]*explain.NodeModel{}
	for _, node := range s.World.Nodes {
		n := &corev1.Node{}
		if err := s.API.Client.Get(ctx, client.ObjectKey{Name: node.Name}, n); err != nil {
			return nil, err
		}
		gw4, gw6 := netns.PodGateways(node.Index)
		var addrs []netip.Addr
		for _, a := range []string{node.IP4, node.IP6, gw4, gw6, "127.0.0.1", "::1"} {
			addrs = append(addrs, netip.MustParseAddr(a))
		}
		out[node.Name] = explain.BuildNode(objs, explain.NodeFacts{Node: n, Config: cfg, ActiveMode: settings.Mode, Addrs: addrs})
	}
	return out, nil
}

// where is a vantage point in this world: its home node (nil for a
// client), its addresses, and the node its service traffic goes through.
type where struct {
	name     string
	kind     explain.SourceKind
	home     *testnet.Node
	ip4, ip6 string
	via      *testnet.Node
	iface    string // the interface its traffic arrives on at home
}

func (w *World) where(name string) where {
	for _, node := range w.Nodes {
		if node.Name == name {
			return where{name: name, kind: explain.FromNode, home: node, ip4: node.IP4, ip6: node.IP6, via: node}
		}
		for k, p := range node.Pods {
			if p.Name == name {
				return where{name: name, kind: explain.FromPod, home: node, ip4: p.IP4, ip6: p.IP6, via: node, iface: fmt.Sprintf("vp%d", k)}
			}
		}
	}
	for _, c := range w.Clients {
		if c.Name == name {
			return where{name: name, kind: explain.FromExternal, ip4: c.IP4, ip6: c.IP6, via: w.Nodes[c.Via-1]}
		}
	}
	panic("no vantage point " + name)
}

func (w *World) nodeNamed(name string) *testnet.Node {
	for _, n := range w.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// predict explains a probe on the node that handles it and turns the
// explanation into the observation it implies here.
func (s *Suite) predict(models map[string]*explain.NodeModel, p Probe) (prediction, string, error) {
	w := s.World
	host, portStr, _ := net.SplitHostPort(p.Addr)
	addr := netip.MustParseAddr(host)
	port, _ := strconv.Atoi(portStr)
	v := w.where(p.From)
	handler := v.via
	target := explain.Target(p.Target)
	if strings.HasPrefix(p.Target, "nodePort@") {
		target = explain.ToNodePort
		if at := strings.TrimSuffix(strings.TrimPrefix(p.Target, "nodePort@"), "(pod-gw)"); at != "localhost" {
			handler = w.nodeNamed(at)
		}
	}
	m := models[handler.Name]
	src := explain.Source{Kind: v.kind, Name: v.name, IP: netip.MustParseAddr(v.ip4)}
	if addr.Is6() {
		src.IP = netip.MustParseAddr(v.ip6)
	}
	if v.kind == explain.FromNode {
		// A host has several addresses: the one it sends from is the
		// kernel's choice (a pod-link address towards its own pods and,
		// in IPv6, towards the service range).
		src.IP = sourceTowards(v.home, addr)
	}
	if v.home != nil {
		src.Node = v.home.Name
	}
	src.Interface = "eth0"
	if v.home == handler && v.kind == explain.FromPod {
		src.Interface = v.iface
	}
	e, err := m.ExplainService(Namespace, p.Service, portStr, target, explain.Query{Target: target, Addr: addr, Port: int32(port), Source: src})
	if err != nil {
		return prediction{}, "", err
	}
	return w.observationOf(e, v, handler, addr, p), explain.Text(&e, false), nil
}

// prediction is an expected observation; Partial says that some endpoints
// cannot answer from the vantage point, so that the probe may stop before
// it has seen every server (its timeouts end it) and, with affinity,
// answers or times out depending on the first draw.
type prediction struct {
	Observation
	Partial bool
	Sticky  bool
}

func (p prediction) String() string {
	s := p.Observation.String()
	if p.Partial {
		s += " (some endpoints cannot answer from here)"
	}
	return s
}

func (p prediction) matches(o Observation) bool {
	if !p.Partial {
		return p.Equal(o)
	}
	if p.Sticky {
		return slices.Equal(o.Outcomes, []string{"timeout"}) || slices.Equal(o.Outcomes, []string{"answered"}) && slices.Equal(o.Servers, []string{"1 server(s), sticky"})
	}
	subset := func(a, b []string) bool {
		return !slices.ContainsFunc(a, func(x string) bool { return !slices.Contains(b, x) })
	}
	return subset(o.Outcomes, p.Outcomes) && slices.Contains(o.Outcomes, "timeout") &&
		subset(o.Servers, p.Servers) && subset(o.Sources, p.Sources)
}

// observationOf is what the explanation implies in this world.
func (w *World) observationOf(e explain.Explanation, v where, handler *testnet.Node, dst netip.Addr, p Probe) prediction {
	sticky := p.Sticky
	// A node's own UDP datagram refused or dropped on output fails to send
	// (EPERM); NodePorts are refused on input, where it gets the ICMP error.
	onOutput := v.home == handler && v.kind == explain.FromNode && p.Network == "udp" && e.Query.Target != explain.ToNodePort
	switch e.Outcome {
	case explain.Refused:
		switch {
		case onOutput:
			return prediction{Observation: Observation{Outcomes: []string{"denied"}}}
		}
		// nftables refuses IPv6 TCP with ICMPv6, which reaches the client
		// after about a second: the probe waits for it (settle).
		return prediction{Observation: Observation{Outcomes: []string{"refused"}}}
	case explain.Dropped:
		if onOutput {
			return prediction{Observation: Observation{Outcomes: []string{"denied"}}}
		}
		return prediction{Observation: Observation{Outcomes: []string{"timeout"}}}
	case explain.NotHandled:
		// Nothing listens on a NodePort of a local address; service and
		// external addresses are routed into the sink.
		local := dst.IsLoopback() || slices.ContainsFunc(w.nodeAddrs(handler), func(a string) bool { return netip.MustParseAddr(a) == dst })
		if local {
			return prediction{Observation: Observation{Outcomes: []string{"refused"}}}
		}
		return prediction{Observation: Observation{Outcomes: []string{"timeout"}}}
	}
	servers, sources, outcomes := set{}, set{}, set{}
	partial := false
	for _, ep := range e.Endpoints {
		ap := netip.MustParseAddrPort(ep.Address)
		epName := w.Name(ap.Addr().String())
		epHome := w.homeOf(epName)
		// Masquerading is done on the way out (POSTROUTING): traffic
		// delivered to the handling node's own host from elsewhere is not,
		// the node's own traffic to itself is.
		onHandlerHost := epName == handler.Name
		fromHandler := v.kind == explain.FromNode && v.home == handler
		masq := (e.Masquerade || ep.Hairpin) && (!onHandlerHost || fromHandler)
		// A node host's UDP echo server answers from the address the
		// kernel picks towards the client (its wildcard socket), not
		// necessarily the one the datagram was translated to: then
		// conntrack cannot reverse the translation and the client drops
		// the answer (the same under kube-proxy). It does towards the
		// node's own pods (the pod-link address), towards the host itself
		// when it sent to another of its own addresses, and in IPv6
		// towards the service range (random seeds 20, 46, 57, 77, 776).
		hostUDP := p.Network == "udp" && epHome != nil && epName == epHome.Name && !masq &&
			sourceTowards(epHome, e.Query.Source.IP) != ap.Addr()
		// Not masqueraded, a pod reaching itself answers itself directly
		// (never through the node's conntrack): it drops the answer.
		self := v.kind == explain.FromPod && epName == v.name && !masq
		if hostUDP || self || !masq && epHome != handler && v.home != handler {
			// The reply goes straight back from the endpoint's node,
			// around the node that translated the request.
			partial = true
			outcomes.add("timeout")
			continue
		}
		outcomes.add("answered")
		servers.add(fmt.Sprintf("%s:%d", epName, ap.Port()))
		if masq {
			sources.add(handler.Name)
		} else {
			sources.add(v.name)
		}
	}
	o := Observation{Outcomes: outcomes.sorted(), Servers: servers.sorted(), Sources: sources.sorted()}
	if sticky && len(o.Servers) > 0 {
		o.Servers, o.Sources = []string{"1 server(s), sticky"}, nil
	}
	return prediction{Observation: o, Partial: partial, Sticky: sticky}
}

// homeOf is the node a pod or node host named so sits on (nil for others).
func (w *World) homeOf(name string) *testnet.Node {
	for _, node := range w.Nodes {
		if node.Name == name {
			return node
		}
		for _, p := range node.Pods {
			if p.Name == name {
				return node
			}
		}
	}
	return nil
}

func (w *World) nodeAddrs(n *testnet.Node) []string {
	gw4, gw6 := netns.PodGateways(n.Index)
	return []string{n.IP4, n.IP6, gw4, gw6}
}

// sourceTowards is the address node n's host sends to dst from: what the
// kernel picks for an unbound socket (a connected UDP socket's local
// address; nothing is sent). Routes do not change in a world, so the
// answers are kept.
func sourceTowards(n *testnet.Node, dst netip.Addr) netip.Addr {
	key := sourceKey{n, dst}
	sourcesMu.Lock()
	defer sourcesMu.Unlock()
	if a, ok := kernelSources[key]; ok {
		return a
	}
	var src netip.Addr
	err := n.Do(func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(dst, 9).String())
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }()
		src = c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
		return nil
	})
	if err != nil {
		panic(fmt.Sprintf("source towards %s on %s: %v", dst, n.Name, err))
	}
	kernelSources[key] = src
	return src
}

var (
	sourcesMu     sync.Mutex
	kernelSources = map[sourceKey]netip.Addr{}
)

type sourceKey struct {
	node *testnet.Node
	dst  netip.Addr
}
