package modeltest

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	"kpo.dev/kpo/nodeagent/model"
)

// Fuzzing the backends: DecodeSyncs turns fuzzed bytes into two snapshots,
// the second derived from the first as the tracker derives them (unchanged
// service ports keep their pointer), and CheckContract says whether a
// snapshot is one the backends must program without a refusal.
//
// Values come from small pools of the address plan, so that fuzzed service
// ports collide (same VIP, same NodePort, shared endpoints) as often as real
// clusters make them; a few pool entries are out of contract on purpose
// (port 0 and 70000, an address of the other family, overlapping CIDRs).
// Exhausted input reads as zeros, which pick the first, ordinary entries.

type byteReader struct {
	b []byte
	i int
}

func (r *byteReader) next() byte {
	if r.i >= len(r.b) {
		return 0
	}
	c := r.b[r.i]
	r.i++
	return c
}

func (r *byteReader) pick(n int) int { return int(r.next()) % n }

// rare is true for about one byte value in 16.
func (r *byteReader) rare() bool { return r.next() >= 240 }

func (r *byteReader) flag() bool { return r.next()&1 == 1 }

// from picks from common most of the time and from odd otherwise.
func from[T any](r *byteReader, common, odd []T) T {
	if len(odd) > 0 && r.rare() {
		return odd[r.pick(len(odd))]
	}
	return common[r.pick(len(common))]
}

var (
	poolClusterIPs = map[model.Family][]string{
		model.IPv4: {"10.96.0.1", "10.96.0.2", "10.96.0.3", "10.96.0.4"},
		model.IPv6: {"fd10:96::1", "fd10:96::2", "fd10:96::3", "fd10:96::4"},
	}
	// External and load-balancer IPs; the last one is a ClusterIP.
	poolExternalIPs = map[model.Family][]string{
		model.IPv4: {"203.0.113.1", "203.0.113.2", "10.96.0.1"},
		model.IPv6: {"2001:db8:2::1", "2001:db8:2::2", "fd10:96::1"},
	}
	poolPodIPs = map[model.Family][]string{
		model.IPv4: {"10.244.1.10", "10.244.1.11", "10.244.1.12", "10.244.2.10", "10.244.2.11", "10.244.3.10"},
		model.IPv6: {"fd10:244:0:1::a", "fd10:244:0:1::b", "fd10:244:0:1::c", "fd10:244:0:2::a", "fd10:244:0:2::b", "fd10:244:0:3::a"},
	}
	poolSourceRanges = map[model.Family][]string{
		model.IPv4: {"198.51.100.0/24", "198.51.100.200/32", "10.0.0.0/8", "0.0.0.0/0"},
		model.IPv6: {"2001:db8:1::/64", "2001:db8:1::200/128", "fd10::/16", "::/0"},
	}
	poolPorts          = []int32{80, 443, 53, 8080}
	poolOddPorts       = []int32{0, 65535, 70000, -1}
	poolNodePorts      = []int32{0, 0, 30080, 30081, 32767}
	poolOddNodePorts   = []int32{65535, 70000}
	poolTargetPorts    = []int32{8080, 9090, 80}
	poolProtocols      = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}
	poolNames          = []string{"a", "b", "c", "d", "e"}
	poolPortNames      = []string{"", "http", "dns"}
	poolAffinity       = []time.Duration{0, 0, 0, time.Second, 10800 * time.Second, 86400 * time.Second}
	poolOddAffinity    = []time.Duration{1500 * time.Millisecond, 86401 * time.Second}
	poolNodeNames      = []string{"node", "node"}
	poolClusterCIDRSet = []map[model.Family][]netip.Prefix{
		PodNetworks(),
		nil,
		{model.IPv4: {netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.1.0/24")}},
		{model.IPv4: {netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("10.244.2.0/24")},
			model.IPv6: {netip.MustParsePrefix("fd10:244::/48"), netip.MustParsePrefix("fd10:244:0:1::/64")}},
	}
	poolNodePortIPs = []map[model.Family][]netip.Addr{
		nil,
		{model.IPv4: {netip.MustParseAddr("198.51.100.1")}},
		{model.IPv4: {netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")},
			model.IPv6: {netip.MustParseAddr("2001:db8:1::1")}},
		{model.IPv4: {}},
	}
)

func other(f model.Family) model.Family {
	if f == model.IPv4 {
		return model.IPv6
	}
	return model.IPv4
}

// addr picks an address of pool, very rarely of the other family (a
// snapshot holds many addresses: one wrong one puts it out of contract).
func (r *byteReader) addr(pool map[model.Family][]string, f model.Family) netip.Addr {
	if r.next() >= 254 {
		f = other(f)
	}
	return netip.MustParseAddr(pool[f][r.pick(len(pool[f]))])
}

func (r *byteReader) addrs(pool map[model.Family][]string, f model.Family, max int) []netip.Addr {
	var out []netip.Addr
	for range r.pick(max + 1) {
		out = append(out, r.addr(pool, f))
	}
	return out
}

// endpoints decodes up to four endpoints, without repeats (the model drops
// them), rarely with a port out of range.
func (r *byteReader) endpoints(f model.Family) []model.Endpoint {
	var out []model.Endpoint
	for range r.pick(5) {
		e := model.Endpoint{IP: r.addr(poolPodIPs, f), Port: from(r, poolTargetPorts, poolOddPorts), Local: r.flag(), Ready: !r.rare()}
		if !slices.ContainsFunc(out, func(o model.Endpoint) bool { return o.AddrPort() == e.AddrPort() }) {
			out = append(out, e)
		}
	}
	return out
}

// servicePort decodes one service port; key, when set, is kept (a changed
// version of an existing port).
func (r *byteReader) servicePort(key *model.ServicePortKey) *model.ServicePort {
	var k model.ServicePortKey
	if key != nil {
		k = *key
	} else {
		f := model.IPv4
		if r.pick(3) == 2 {
			f = model.IPv6
		}
		k = model.ServicePortKey{ServicePortName: model.ServicePortName{Namespace: "ns",
			Name: poolNames[r.pick(len(poolNames))], Port: poolPortNames[r.pick(len(poolPortNames))],
			Protocol: poolProtocols[r.pick(len(poolProtocols))]}, Family: f}
	}
	f := k.Family
	sp := &model.ServicePort{Key: k, Protocol: k.Protocol, ClusterIP: r.addr(poolClusterIPs, f),
		Port: from(r, poolPorts, poolOddPorts), NodePort: from(r, poolNodePorts, poolOddNodePorts)}
	sp.ExternalIPs = r.addrs(poolExternalIPs, f, 2)
	sp.LoadBalancerIPs = r.addrs(poolExternalIPs, f, 1)
	if len(sp.LoadBalancerIPs) > 0 {
		for range r.pick(3) {
			rf := f
			if r.rare() {
				rf = other(f)
			}
			sp.SourceRanges = append(sp.SourceRanges, netip.MustParsePrefix(poolSourceRanges[rf][r.pick(len(poolSourceRanges[rf]))]))
		}
	}
	sp.AffinityTimeout = from(r, poolAffinity, poolOddAffinity)
	sp.ExternalPolicyLocal = sp.HasExternal() && r.flag()
	sp.InternalPolicyLocal = r.rare()
	sp.ClusterEndpoints = r.endpoints(f)
	if sp.HasExternal() {
		switch r.pick(3) {
		case 0:
			sp.ExternalEndpoints = sp.ClusterEndpoints
		case 1:
			for _, e := range sp.ClusterEndpoints {
				if e.Local {
					sp.ExternalEndpoints = append(sp.ExternalEndpoints, e)
				}
			}
		default:
			sp.ExternalEndpoints = r.endpoints(f)
		}
	}
	for _, e := range sp.ExternalEndpoints {
		if e.Local && e.Ready {
			sp.LocalEndpointCount++
		}
	}
	return sp
}

func (r *byteReader) node() model.NodeInfo {
	return model.NodeInfo{Name: poolNodeNames[r.pick(len(poolNodeNames))],
		ClusterCIDRs: poolClusterCIDRSet[r.pick(len(poolClusterCIDRSet))],
		NodePortIPs:  poolNodePortIPs[r.pick(len(poolNodePortIPs))]}
}

// DecodeSyncs decodes two consecutive snapshots from data: the second keeps,
// changes (same key, new pointer) or drops each service port of the first,
// adds new ones, and sometimes changes the node.
func DecodeSyncs(data []byte) (first, second *model.Snapshot) {
	r := &byteReader{b: data}
	first = Snapshot(r.node())
	for range r.pick(7) {
		sp := r.servicePort(nil)
		first.Services[sp.Key] = sp
	}
	second = With(first)
	if r.rare() {
		second.Node = r.node()
	}
	for _, k := range slices.SortedFunc(maps.Keys(first.Services), compareKeys) {
		switch r.pick(4) {
		case 2:
			second.Services[k] = r.servicePort(&k)
		case 3:
			delete(second.Services, k)
		}
	}
	for range r.pick(3) {
		sp := r.servicePort(nil)
		second.Services[sp.Key] = sp
	}
	return first, second
}

func compareKeys(a, b model.ServicePortKey) int { return cmp.Compare(a.String(), b.String()) }

// CheckContract returns why s is not a snapshot the backends must program
// without a refusal, or nil. The contract: every address of a service port
// in its family; ports 1–65535 (NodePort 0: none); a known protocol; an
// affinity of at most 86400 s (the API's bound), in whole seconds; no
// endpoint twice in a list; and no frontend claimed twice: a (VIP, protocol,
// port) belongs to one service port (which may list it as an external and a
// load-balancer IP, never also as its ClusterIP), a (protocol, NodePort) to
// one service port. The model does not enforce all of it yet (ports,
// conflicts between Services); the backends rely on it.
func CheckContract(s *model.Snapshot) error {
	type frontend struct {
		addr  netip.Addr
		proto corev1.Protocol
		port  int32
	}
	type claim struct {
		key     model.ServicePortKey
		cluster bool
	}
	frontends := map[frontend]claim{}
	nodePorts := map[frontend]model.ServicePortKey{}
	for _, k := range slices.SortedFunc(maps.Keys(s.Services), compareKeys) {
		sp := s.Services[k]
		if err := checkServicePort(k, sp); err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
		claimVIP := func(a netip.Addr, cluster bool) error {
			fe := frontend{a, sp.Protocol, sp.Port}
			if c, ok := frontends[fe]; ok && (c.key != k || c.cluster != cluster) {
				return fmt.Errorf("%s: %v:%d/%s already claimed by %s", k, a, sp.Port, sp.Protocol, c.key)
			}
			frontends[fe] = claim{k, cluster}
			return nil
		}
		if err := claimVIP(sp.ClusterIP, true); err != nil {
			return err
		}
		for _, a := range slices.Concat(sp.ExternalIPs, sp.LoadBalancerIPs) {
			if err := claimVIP(a, false); err != nil {
				return err
			}
		}
		if sp.NodePort != 0 {
			fe := frontend{netip.IPv4Unspecified(), sp.Protocol, sp.NodePort}
			if k.Family == model.IPv6 {
				fe.addr = netip.IPv6Unspecified()
			}
			if other, ok := nodePorts[fe]; ok {
				return fmt.Errorf("%s: NodePort %d/%s already claimed by %s", k, sp.NodePort, sp.Protocol, other)
			}
			nodePorts[fe] = k
		}
	}
	return nil
}

func checkServicePort(k model.ServicePortKey, sp *model.ServicePort) error {
	f := k.Family
	inFamily := func(a netip.Addr) bool { return a.IsValid() && model.FamilyOf(a) == f && !a.Is4In6() }
	validPort := func(p int32) bool { return p >= 1 && p <= 65535 }
	switch {
	case sp == nil || sp.Key != k:
		return fmt.Errorf("stored under another key")
	case sp.Protocol != k.Protocol || !slices.Contains(poolProtocols, sp.Protocol):
		return fmt.Errorf("protocol %q", sp.Protocol)
	case !inFamily(sp.ClusterIP):
		return fmt.Errorf("ClusterIP %v not %s", sp.ClusterIP, f)
	case !validPort(sp.Port):
		return fmt.Errorf("port %d", sp.Port)
	case sp.NodePort != 0 && !validPort(sp.NodePort):
		return fmt.Errorf("NodePort %d", sp.NodePort)
	case sp.AffinityTimeout < 0 || sp.AffinityTimeout > 86400*time.Second || sp.AffinityTimeout%time.Second != 0:
		return fmt.Errorf("affinity timeout %v", sp.AffinityTimeout)
	}
	for _, a := range slices.Concat(sp.ExternalIPs, sp.LoadBalancerIPs) {
		if !inFamily(a) {
			return fmt.Errorf("external or load-balancer IP %v not %s", a, f)
		}
	}
	for _, p := range sp.SourceRanges {
		if !inFamily(p.Addr()) {
			return fmt.Errorf("source range %v not %s", p, f)
		}
	}
	for _, eps := range [][]model.Endpoint{sp.ClusterEndpoints, sp.ExternalEndpoints} {
		seen := map[netip.AddrPort]bool{}
		for _, e := range eps {
			if !inFamily(e.IP) || !validPort(e.Port) || seen[e.AddrPort()] {
				return fmt.Errorf("endpoint %v:%d (family, port or repeated)", e.IP, e.Port)
			}
			seen[e.AddrPort()] = true
		}
	}
	return nil
}
