package ipvs

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/iptables"
	"kpo.dev/kpo/nodeagent/model"
)

// The companion rules. IPVS only translates destinations; what kube-proxy's
// IPVS mode adds with iptables (pkg/proxy/ipvs/proxier.go, v1.37), kpo adds
// too, with a fixed set of chains whose rules match ipsets, so that a service
// change touches set elements only:
//
//	nat    PREROUTING, OUTPUT -> KPO-IPVS-SERVICES
//	         CLUSTER-IP dst,dst -> KPO-IPVS-CLUSTER-MASQ (RETURN for pod CIDRs, else mark)
//	         EXTERNAL dst,dst   -> KPO-IPVS-MARK-MASQ (policy Cluster loses the source)
//	nat    POSTROUTING -> KPO-IPVS-POSTROUTING
//	         LOOP-BACK dst,dst,src -> MASQUERADE (hairpin: a pod reaching itself)
//	         marked -> clear the mark, MASQUERADE
//	filter INPUT, FORWARD, OUTPUT (ctstate NEW) -> KPO-IPVS-SERVICES
//	         FW dst,dst -> KPO-IPVS-FIREWALL (FW-SRC dst,dst,src RETURN; DROP)
//	         REJECT dst,dst -> REJECT  (VIP without endpoints)
//	         DROP dst,dst -> DROP      (policy Local without local endpoints)
//	filter INPUT -> KPO-IPVS-FILTER (kube-proxy's KUBE-IPVS-FILTER)
//	         VIP-PORTS dst,dst RETURN; HEALTH-CHECK dst RETURN
//	         ctstate NEW, IPVS-IPS dst -> REJECT (a host port on a service IP)
//	filter FORWARD -> KPO-IPVS-FORWARD (kube-proxy's KUBE-FORWARD)
//	         masquerade mark ACCEPT; RELATED,ESTABLISHED ACCEPT
//
// The chains are KPO-IPVS-* (iptables.IPVSChainPrefix) rather than the
// iptables mode's KPO-*, so that the two modes' cleanups never delete each
// other's chains. Masquerading needs the sysctl net.ipv4.vs.conntrack=1 (set
// by prepare): without it IPVS traffic bypasses conntrack and NAT. Unlike
// its iptables mode, kube-proxy's IPVS mode drops no INVALID packets, and
// neither does this one.

// Set names, without the family prefix (KPO- for IPv4, KPO6- for IPv6).
const (
	setClusterIP = "CLUSTER-IP"
	setExternal  = "EXTERNAL"
	setLoopBack  = "LOOP-BACK"
	setReject    = "REJECT"
	setDrop      = "DROP"
	setFW        = "FW"
	setFWSrc     = "FW-SRC"
	// setVIPPorts: every virtual server's VIP:port, node ports on node
	// addresses included. The host-port filter returns for them (kube-proxy's
	// CLUSTER-IP, EXTERNAL-IP, EXTERNAL-IP-LOCAL and LOAD-BALANCER sets in
	// one), and it is kpo's ownership record in the kernel: a virtual server
	// on a node address carries no mark of its maker, so a later agent (a
	// restart, or another mode's cleaning up) finds kpo's there.
	setVIPPorts = "VIP-PORTS"
	// setIPVSIPs: the addresses on kpo-ipvs0 (kube-proxy's KUBE-IPVS-IPS).
	setIPVSIPs = "IPVS-IPS"
	// setHealthCheck: health-check node ports, matched by port on any
	// address (kube-proxy's KUBE-HEALTH-CHECK-NODE-PORT).
	setHealthCheck = "HEALTH-CHECK"
)

// setTypes are each set's type and creation options (family added per set).
var setTypes = map[string]string{
	setClusterIP: "hash:ip,port", setExternal: "hash:ip,port", setLoopBack: "hash:ip,port,ip",
	setReject: "hash:ip,port", setDrop: "hash:ip,port", setFW: "hash:ip,port", setFWSrc: "hash:ip,port,net",
	setVIPPorts: "hash:ip,port", setIPVSIPs: "hash:ip", setHealthCheck: "bitmap:port range 0-65535",
}

// createSpec is the "create" line's type and options of a set.
func createSpec(name string) string {
	typ := setTypes[strings.TrimPrefix(strings.TrimPrefix(name, "KPO6-"), "KPO-")]
	if strings.HasPrefix(typ, "bitmap:") {
		return typ // a port bitmap has no family
	}
	if strings.HasPrefix(name, "KPO6-") {
		return typ + " family inet6"
	}
	return typ + " family inet"
}

// SetName is the ipset of a family.
func SetName(f model.Family, set string) string {
	if f == model.IPv6 {
		return "KPO6-" + set
	}
	return "KPO-" + set
}

// setEntry is one element of one ipset, in ipset's syntax ("10.0.0.1,tcp:80").
type setEntry struct {
	set   string // full name
	entry string
}

// setEntries translates a service port's routes into its elements in the
// companion ipsets.
func setEntries(sp *model.ServicePort, routes *model.Routes, nodeIPs []netip.Addr) []setEntry {
	proto, ok := protoOf(sp.Protocol)
	if !ok {
		return nil
	}
	f := sp.Key.Family
	var out []setEntry
	add := func(set string, parts ...string) {
		out = append(out, setEntry{SetName(f, set), strings.Join(parts, ",")})
	}
	ipPort := func(a netip.Addr, port int32) string {
		return a.Unmap().String() + "," + protoName(proto) + ":" + fmt.Sprint(port)
	}
	verdictSet := func(v model.Verdict) string {
		if v == model.Drop {
			return setDrop
		}
		return setReject
	}
	vip := ipPort(sp.ClusterIP, sp.Port)
	// Every ClusterIP: KPO-IPVS-CLUSTER-MASQ marks the sources
	// RuleSet.ClusterMasquerade names.
	add(setClusterIP, vip)
	// The VIPs on kpo-ipvs0, for the host-port filter.
	for _, ip := range slices.Concat([]netip.Addr{sp.ClusterIP}, sp.ExternalIPs, sp.LoadBalancerIPs) {
		add(setVIPPorts, ipPort(ip, sp.Port))
		add(setIPVSIPs, ip.Unmap().String())
	}
	if sp.NodePort != 0 {
		for _, ip := range nodeIPs {
			add(setVIPPorts, ipPort(ip, sp.NodePort))
		}
	}
	if sp.HealthCheckNodePort != 0 {
		add(setHealthCheck, fmt.Sprint(sp.HealthCheckNodePort))
	}
	cluster := &routes.Cluster.Outside
	if len(cluster.Endpoints) == 0 {
		add(verdictSet(cluster.Empty), vip)
	}
	// Hairpin: a pod reaching itself through a virtual server, where that
	// traffic is not masqueraded anyway.
	hairpin := slices.Clone(cluster.Endpoints)
	x := &routes.External.Outside
	if sp.HasExternal() && !x.Masquerade {
		for _, e := range x.Endpoints {
			if !slices.ContainsFunc(hairpin, func(c model.Endpoint) bool { return c.AddrPort() == e.AddrPort() }) {
				hairpin = append(hairpin, e)
			}
		}
	}
	for _, e := range hairpin {
		add(setLoopBack, ipPort(e.IP, e.Port), e.IP.Unmap().String())
	}
	var ext []string
	if sp.NodePort != 0 {
		for _, ip := range nodeIPs {
			ext = append(ext, ipPort(ip, sp.NodePort))
		}
	}
	for _, ip := range sp.ExternalIPs {
		ext = append(ext, ipPort(ip, sp.Port))
	}
	for _, ip := range sp.LoadBalancerIPs {
		ext = append(ext, ipPort(ip, sp.Port))
		if routes.Firewall != nil {
			add(setFW, ipPort(ip, sp.Port))
			for _, r := range routes.Firewall {
				add(setFWSrc, ipPort(ip, sp.Port), r.Masked().String())
			}
		}
	}
	for _, e := range ext {
		switch {
		case len(x.Endpoints) == 0:
			add(verdictSet(x.Empty), e)
		case x.Masquerade:
			add(setExternal, e)
		}
	}
	return out
}

// RuleSet is everything the companion rules hold.
type RuleSet struct {
	Families []model.Family
	// Sets: element set by full ipset name; every set of every family is
	// present, empty or not.
	Sets map[string]map[string]bool
	// ClusterCIDRs are the pod networks (detect-local for masquerading), or,
	// when LocalInterface is set ("br0", or "veth+" for a prefix), the
	// interface pods' traffic arrives on.
	ClusterCIDRs   map[model.Family][]netip.Prefix
	LocalInterface string
	// ClusterMasquerade is, by family, which sources of ClusterIP traffic
	// are masqueraded (model.RouteOptions.ClusterMasquerade).
	ClusterMasquerade map[model.Family]model.Source
}

// Rules programs the companion ipsets and iptables chains. Apply gets the
// complete desired state each sync; implementations write only what changed
// since their last successful Apply unless full.
type Rules interface {
	Apply(rs *RuleSet, full bool) error
	Cleanup(families []model.Family) error
	// Owned lists the virtual servers the kernel's VIP-PORTS sets record
	// (what kpo's last sync made; none when the sets do not exist).
	Owned(families []model.Family) (map[VSKey]bool, error)
}

// parseVSEntry reads a VIP-PORTS element ("10.96.0.10,tcp:80").
func parseVSEntry(e string) (VSKey, bool) {
	ip, pp, ok := strings.Cut(e, ",")
	proto, port, ok2 := strings.Cut(pp, ":")
	a, err := netip.ParseAddr(ip)
	n, err2 := strconv.ParseUint(port, 10, 16)
	if !ok || !ok2 || err != nil || err2 != nil {
		return VSKey{}, false
	}
	for _, p := range []uint16{protoTCP, protoUDP, protoSCTP} {
		if protoName(p) == proto {
			return VSKey{Addr: a.Unmap(), Protocol: p, Port: uint16(n)}, true
		}
	}
	return VSKey{}, false
}

// syncRules collects every service port's set entries and applies them.
func (b *Backend) syncRules(snap *model.Snapshot, full bool) error {
	rs := &RuleSet{Families: b.families, Sets: map[string]map[string]bool{}, ClusterCIDRs: snap.Node.ClusterCIDRs,
		ClusterMasquerade: map[model.Family]model.Source{}}
	if n := snap.Node; n.LocalInterface != "" {
		rs.ClusterCIDRs, rs.LocalInterface = nil, n.LocalInterface
		if n.LocalInterfacePrefix {
			rs.LocalInterface += "+"
		}
	}
	for _, f := range b.families {
		for set := range setTypes {
			rs.Sets[SetName(f, set)] = map[string]bool{}
		}
		rs.ClusterMasquerade[f] = b.routeOptions(f, &snap.Node).ClusterMasquerade()
	}
	for _, st := range b.svcs {
		for _, e := range st.sets {
			rs.Sets[e.set][e.entry] = true
		}
	}
	if err := b.rules.Apply(rs, full); err != nil {
		return fmt.Errorf("companion rules: %w", err)
	}
	return nil
}

// Chain names (see the layout above).
const (
	chainServices     = "KPO-IPVS-SERVICES"
	chainPostrouting  = "KPO-IPVS-POSTROUTING"
	chainMarkMasq     = "KPO-IPVS-MARK-MASQ"
	chainClusterMasq  = "KPO-IPVS-CLUSTER-MASQ"
	chainFirewall     = "KPO-IPVS-FIREWALL"
	chainFilter       = "KPO-IPVS-FILTER"
	chainForward      = "KPO-IPVS-FORWARD"
	companionComment  = "kpo ipvs"
	companionChainPfx = iptables.IPVSChainPrefix
)

// companionJumps send traffic from the built-in chains to the companion
// chains.
var companionJumps = []iptables.Jump{
	{Table: "nat", Chain: "PREROUTING", Rule: []string{"-m", "comment", "--comment", companionComment, "-j", chainServices}},
	{Table: "nat", Chain: "OUTPUT", Rule: []string{"-m", "comment", "--comment", companionComment, "-j", chainServices}},
	{Table: "nat", Chain: "POSTROUTING", Rule: []string{"-m", "comment", "--comment", companionComment, "-j", chainPostrouting}},
	{Table: "filter", Chain: "INPUT", Rule: newOnly("-j", chainServices)},
	{Table: "filter", Chain: "FORWARD", Rule: newOnly("-j", chainServices)},
	{Table: "filter", Chain: "OUTPUT", Rule: newOnly("-j", chainServices)},
	{Table: "filter", Chain: "INPUT", Rule: []string{"-m", "comment", "--comment", companionComment, "-j", chainFilter}},
	{Table: "filter", Chain: "FORWARD", Rule: []string{"-m", "comment", "--comment", companionComment, "-j", chainForward}},
}

func newOnly(target ...string) []string {
	return append([]string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", companionComment}, target...)
}

// localMatches are the detect-local matches of a family: "-s <cidr>" per pod
// network, or "-i <interface>".
func (rs *RuleSet) localMatches(f model.Family) []string {
	if rs.LocalInterface != "" {
		return []string{"-i " + rs.LocalInterface}
	}
	var out []string
	for _, c := range rs.ClusterCIDRs[f] {
		out = append(out, "-s "+c.Masked().String())
	}
	return out
}

// renderChains renders a family's companion chains for iptables-restore
// --noflush: declaring a chain flushes it, so the text replaces them whole.
// KPO-IPVS-CLUSTER-MASQ marks the sources in masq
// (model.RouteOptions.ClusterMasquerade): all, or all but pods (returning
// for the local matches first), or none.
func renderChains(f model.Family, s backend.Settings, masq model.Source, local []string, randomFully bool) map[string][]string {
	mark := s.MasqueradeMark()
	set := func(name string) string { return SetName(f, name) }
	in := func(chain string, rules ...string) []string {
		out := make([]string, len(rules))
		for i, r := range rules {
			out[i] = "-A " + chain + " " + r
		}
		return out
	}
	var clusterMasq []string
	switch masq {
	case model.AllSources:
		clusterMasq = []string{"-j " + chainMarkMasq}
	case model.FromNode | model.FromOutside:
		clusterMasq = iptables.UnlessPodsRules(local, chainMarkMasq)
	}
	nat := slices.Concat([]string{
		":" + chainServices + " - [0:0]", ":" + chainPostrouting + " - [0:0]",
		":" + chainMarkMasq + " - [0:0]", ":" + chainClusterMasq + " - [0:0]",
		"-A " + chainMarkMasq + " " + iptables.MarkRule(mark),
		"-A " + chainServices + " -m set --match-set " + set(setClusterIP) + " dst,dst -j " + chainClusterMasq,
		"-A " + chainServices + " -m set --match-set " + set(setExternal) + " dst,dst -j " + chainMarkMasq,
	}, in(chainClusterMasq, clusterMasq...),
		// Hairpin: plain MASQUERADE, as kube-proxy's KUBE-LOOP-BACK rule.
		in(chainPostrouting, "-m set --match-set "+set(setLoopBack)+" dst,dst,src -j MASQUERADE"),
		in(chainPostrouting, iptables.MasqueradeRules(mark, randomFully)...))
	filter := []string{
		":" + chainServices + " - [0:0]", ":" + chainFirewall + " - [0:0]",
		":" + chainFilter + " - [0:0]", ":" + chainForward + " - [0:0]",
		"-A " + chainServices + " -m set --match-set " + set(setFW) + " dst,dst -j " + chainFirewall,
		"-A " + chainServices + " -m set --match-set " + set(setReject) + " dst,dst -j REJECT",
		"-A " + chainServices + " -m set --match-set " + set(setDrop) + " dst,dst -j DROP",
		"-A " + chainFirewall + " -m set --match-set " + set(setFWSrc) + " dst,dst,src -j RETURN",
		"-A " + chainFirewall + " -j DROP",
		// Every service IP is a local address on kpo-ipvs0, so without this a
		// daemon listening on all addresses (sshd on :22) answers on every
		// ClusterIP (kubernetes#72236): only the services' own ports, and
		// health-check node ports, pass.
		"-A " + chainFilter + " -m set --match-set " + set(setVIPPorts) + " dst,dst -j RETURN",
		"-A " + chainFilter + " -m set --match-set " + set(setHealthCheck) + " dst -j RETURN",
		"-A " + chainFilter + " -m conntrack --ctstate NEW -m set --match-set " + set(setIPVSIPs) + " dst -j REJECT",
	}
	filter = append(filter, in(chainForward, iptables.ForwardRules(mark, false)...)...)
	return map[string][]string{"nat": nat, "filter": filter}
}

// ipsetRestore renders the ipset restore script from cur (nil: unknown, the
// sets are rebuilt and swapped in whole) to want.
func ipsetRestore(rs *RuleSet, cur map[string]map[string]bool) string {
	var sb strings.Builder
	for _, name := range slices.Sorted(maps.Keys(rs.Sets)) {
		want := rs.Sets[name]
		spec := createSpec(name)
		have, known := cur[name]
		if cur == nil || !known {
			// Swap keeps the set referenced by rules and never empty mid-way.
			tmp := name + "-T"
			fmt.Fprintf(&sb, "create %s %s -exist\n", name, spec)
			fmt.Fprintf(&sb, "create %s %s -exist\nflush %s\n", tmp, spec, tmp)
			for _, e := range slices.Sorted(maps.Keys(want)) {
				fmt.Fprintf(&sb, "add %s %s\n", tmp, e)
			}
			fmt.Fprintf(&sb, "swap %s %s\ndestroy %s\n", tmp, name, tmp)
			continue
		}
		for _, e := range slices.Sorted(maps.Keys(have)) {
			if !want[e] {
				fmt.Fprintf(&sb, "del %s %s -exist\n", name, e)
			}
		}
		for _, e := range slices.Sorted(maps.Keys(want)) {
			if !have[e] {
				fmt.Fprintf(&sb, "add %s %s -exist\n", name, e)
			}
		}
	}
	return sb.String()
}

// FakeRules records what the backend asked for.
type FakeRules struct {
	// Last is the last applied rule set; Applies and Fulls count calls.
	Last           *RuleSet
	Applies, Fulls int
	Cleaned        bool
	Err            error
}

// Apply implements Rules.
func (r *FakeRules) Apply(rs *RuleSet, full bool) error {
	if r.Err != nil {
		return r.Err
	}
	r.Last, r.Cleaned = rs, false
	r.Applies++
	if full {
		r.Fulls++
	}
	return nil
}

// Cleanup implements Rules.
func (r *FakeRules) Cleanup([]model.Family) error {
	r.Last, r.Cleaned = nil, true
	return nil
}

// Owned implements Rules: the last applied VIP-PORTS sets, as the kernel
// keeps them across agent restarts.
func (r *FakeRules) Owned(families []model.Family) (map[VSKey]bool, error) {
	out := map[VSKey]bool{}
	if r.Last == nil {
		return out, nil
	}
	for _, f := range families {
		for e := range r.Last.Sets[SetName(f, setVIPPorts)] {
			if k, ok := parseVSEntry(e); ok {
				out[k] = true
			}
		}
	}
	return out, nil
}

// Has reports whether the last rule set has the element.
func (r *FakeRules) Has(set, entry string) bool {
	return r.Last != nil && r.Last.Sets[set][entry]
}
