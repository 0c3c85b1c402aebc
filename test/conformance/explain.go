package conformance

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

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
		onHandlerHost := epName == handler.Name
		masq := (e.Masquerade || ep.Hairpin) && !onHandlerHost
		// A node host's UDP echo server answers from an address the kernel
		// picks (its wildcard socket): in IPv6, one on the interface towards
		// the client (RFC 6724 rule 5), else the longest match. Towards its
		// own pods, or its own pod-link address, that is the pod-link
		// address, not the one the datagram was translated to: conntrack
		// cannot reverse the translation and the client drops the answer.
		// Observed alike with kube-proxy (random seed 20).
		// In IPv4 the same happens towards its own pods: the route's source
		// is the pod-link address (random seeds 46, 57, 77).
		hostUDP := p.Network == "udp" && epHome != nil && epName == epHome.Name && !masq &&
			(ap.Addr().Is6() && replyViaPodLink(v, epHome, dst) || ap.Addr().Is4() && v.home == epHome && v.kind == explain.FromPod)
		if hostUDP || !masq && epHome != handler && v.home != handler {
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

// replyViaPodLink says whether a node host's reply to v leaves by one of
// its pod links, or to its own pod-link address: v is a pod of that node,
// or the node itself sending to the service or pod ranges (fd10::/16),
// for which IPv6 source selection picks its pod-link address.
func replyViaPodLink(v where, host *testnet.Node, dst netip.Addr) bool {
	if v.home != host {
		return false
	}
	switch v.kind {
	case explain.FromPod:
		return true
	case explain.FromNode:
		return netip.MustParsePrefix("fd10::/16").Contains(dst)
	}
	return false
}
