package iptables

import (
	"bytes"
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"kpo.dev/kpo/nodeagent/model"
)

type keySet = map[model.ServicePortKey]struct{}

// nodeView is the part of model.NodeInfo that shapes one family's rules.
type nodeView struct {
	clusterCIDRs []netip.Prefix
	// localIface is the detect-local interface match ("br0", "veth+"), or "".
	localIface  string
	nodePortIPs []netip.Addr
	explicitNP  bool // NodePortIPs given (nil means every local address)
}

func nodeViewOf(n model.NodeInfo, f model.Family) nodeView {
	ips, explicit := n.NodePortIPs[f]
	v := nodeView{clusterCIDRs: n.ClusterCIDRs[f], nodePortIPs: ips, explicitNP: explicit && ips != nil}
	if n.LocalInterface != "" {
		v.clusterCIDRs, v.localIface = nil, n.LocalInterface
		if n.LocalInterfacePrefix {
			v.localIface += "+"
		}
	}
	return v
}

// famState is what the backend believes one family's tables hold: the rendered
// rules of every service port it programmed and the shared dispatch chains'
// membership. It is the source of truth between full syncs (no listing).
type famState struct {
	fam         model.Family
	r           *renderer
	node        nodeView
	randomFully bool

	svcs          map[model.ServicePortKey]*rendered
	natBuckets    map[uint8]keySet // members of nat KPO-DST-xx
	filterBuckets map[uint8]keySet // members of filter KPO-DST-xx
	natNP         keySet           // members with a nat KPO-NODEPORTS rule
	filterNP      keySet
	natTop        []uint8 // buckets KPO-SERVICES jumps to, as programmed
	filterTop     []uint8
	// Endpoint addresses needing a hairpin check, by bucket (last byte), with
	// the number of service ports using them: shared between services, so a
	// bucket chain is rewritten only when an address comes or goes.
	hairpin    map[uint8]map[netip.Addr]int
	hairpinIPs int
	hairpinTop []uint8 // buckets KPO-HAIRPIN jumps to, as programmed
	svcRules   int     // sum of rendered.rules
	fixedRules int     // base chains other than the dispatch tops
}

func newFamState(f model.Family, r *renderer, node nodeView, randomFully bool) *famState {
	return &famState{
		fam: f, r: r, node: node, randomFully: randomFully,
		svcs:          map[model.ServicePortKey]*rendered{},
		natBuckets:    map[uint8]keySet{},
		filterBuckets: map[uint8]keySet{},
		natNP:         keySet{},
		filterNP:      keySet{},
		hairpin:       map[uint8]map[netip.Addr]int{},
	}
}

func (s *famState) rules() int {
	return s.svcRules + s.fixedRules + len(s.natTop) + len(s.filterTop) + s.hairpinIPs + len(s.hairpinTop)
}

// tableWriter accumulates one table's section of an iptables-restore input:
// chain declarations first (a declaration flushes an existing chain under
// --noflush), then rules, then deletions. Deleting last matters: a chain can
// only go once no rule jumps to it, and the rules that did were flushed by
// the declarations above.
type tableWriter struct {
	name     string
	declared map[string]bool
	decl     bytes.Buffer
	body     bytes.Buffer
	edits    bytes.Buffer // jumps inserted into / deleted from built-in chains
	del      bytes.Buffer
}

func newTableWriter(name string) *tableWriter {
	return &tableWriter{name: name, declared: map[string]bool{}}
}

func (t *tableWriter) declare(name string) {
	if t.declared[name] {
		return
	}
	t.declared[name] = true
	t.decl.WriteString(":" + name + " - [0:0]\n")
}

func (t *tableWriter) write(c chain) {
	t.declare(c.name)
	for _, r := range c.rules {
		t.body.WriteString("-A ")
		t.body.WriteString(c.name)
		t.body.WriteByte(' ')
		t.body.WriteString(r)
		t.body.WriteByte('\n')
	}
}

// edit adds a command on a built-in chain ("-I chain rule", "-D chain rule").
// Edits come after the rules, so that an inserted jump's target (declared in
// the same section) exists, and before the deletions, so that a chain is no
// longer referenced when it goes.
func (t *tableWriter) edit(cmd string) {
	t.edits.WriteString(cmd + "\n")
}

func (t *tableWriter) remove(name string) {
	t.declare(name)
	t.del.WriteString("-X " + name + "\n")
}

func (t *tableWriter) empty() bool { return len(t.declared) == 0 && t.edits.Len() == 0 }

func (t *tableWriter) appendTo(out *bytes.Buffer) {
	if t.empty() {
		return
	}
	out.WriteString("*" + t.name + "\n")
	out.Write(t.decl.Bytes())
	out.Write(t.body.Bytes())
	out.Write(t.edits.Bytes())
	out.Write(t.del.Bytes())
	out.WriteString("COMMIT\n")
}

func compareKeys(a, b model.ServicePortKey) int {
	return cmp.Or(
		strings.Compare(a.Namespace, b.Namespace),
		strings.Compare(a.Name, b.Name),
		strings.Compare(a.Port, b.Port),
		strings.Compare(string(a.Protocol), string(b.Protocol)),
		cmp.Compare(a.Family, b.Family))
}

func sortedKeys(s keySet) []model.ServicePortKey {
	keys := make([]model.ServicePortKey, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKeys)
	return keys
}

func addMember(m map[uint8]keySet, b uint8, k model.ServicePortKey) {
	s := m[b]
	if s == nil {
		s = keySet{}
		m[b] = s
	}
	s[k] = struct{}{}
}

// write renders sp (nil: removed) as key's rules, records it, and writes
// its chains (removing those it no longer has).
func (s *famState) write(k model.ServicePortKey, sp *model.ServicePort, d *dirty, nat *tableWriter) {
	var nr *rendered
	if sp != nil {
		nr = s.r.render(sp)
	}
	for _, name := range s.apply(k, nr, d) {
		nat.remove(name)
	}
	if nr != nil {
		for _, c := range nr.nat {
			nat.write(c)
		}
	}
}

// apply records that key now renders as nr (nil: removed) and marks what it
// touches as dirty. It returns the chains the old version had that the new
// one does not.
func (s *famState) apply(k model.ServicePortKey, nr *rendered, d *dirty) []string {
	old := s.svcs[k]
	// New references first: an address the service keeps then never drops
	// to zero, and its hairpin bucket is not rewritten for nothing.
	if nr != nil {
		s.countHairpin(nr.hairpin, 1, d)
	}
	if old != nil {
		s.countHairpin(old.hairpin, -1, d)
	}
	var gone []string
	if old != nil {
		s.svcRules -= old.rules
		keep := map[string]bool{}
		if nr != nil {
			for _, c := range nr.nat {
				keep[c.name] = true
			}
		}
		for _, c := range old.nat {
			if !keep[c.name] {
				gone = append(gone, c.name)
			}
		}
		for _, dr := range old.natDispatch {
			delete(s.natBuckets[dr.bucket], k)
			d.nat[dr.bucket] = true
		}
		for _, dr := range old.filterDispatch {
			delete(s.filterBuckets[dr.bucket], k)
			d.filter[dr.bucket] = true
		}
		if old.natNodePort != "" {
			delete(s.natNP, k)
			d.natNP = true
		}
		if old.filterNodePort != "" || len(old.filterExternal) > 0 {
			delete(s.filterNP, k)
			d.filterNP = true
		}
		delete(s.svcs, k)
	}
	if nr == nil {
		return gone
	}
	s.svcs[k] = nr
	s.svcRules += nr.rules
	for _, dr := range nr.natDispatch {
		addMember(s.natBuckets, dr.bucket, k)
		d.nat[dr.bucket] = true
	}
	for _, dr := range nr.filterDispatch {
		addMember(s.filterBuckets, dr.bucket, k)
		d.filter[dr.bucket] = true
	}
	if nr.natNodePort != "" {
		s.natNP[k] = struct{}{}
		d.natNP = true
	}
	if nr.filterNodePort != "" || len(nr.filterExternal) > 0 {
		s.filterNP[k] = struct{}{}
		d.filterNP = true
	}
	return gone
}

// countHairpin adds delta references to ips; a bucket is dirty when an
// address appears in it or leaves it.
func (s *famState) countHairpin(ips []netip.Addr, delta int, d *dirty) {
	for _, ip := range ips {
		b := bucketOf(ip)
		m := s.hairpin[b]
		if m == nil {
			m = map[netip.Addr]int{}
			s.hairpin[b] = m
		}
		n := m[ip] + delta
		switch n {
		case 0:
			delete(m, ip)
			s.hairpinIPs--
			d.hairpin[b] = true
		case delta: // was absent
			m[ip] = n
			s.hairpinIPs++
			d.hairpin[b] = true
		default:
			m[ip] = n
		}
	}
}

// dirty is what a sync must rewrite in the shared chains.
type dirty struct {
	nat, filter, hairpin map[uint8]bool
	natNP, filterNP      bool
}

func newDirty() *dirty {
	return &dirty{nat: map[uint8]bool{}, filter: map[uint8]bool{}, hairpin: map[uint8]bool{}}
}

// writeShared rewrites the dirty dispatch chains and, when the set of
// non-empty buckets changed (or force), the KPO-SERVICES tops.
func (s *famState) writeShared(d *dirty, nat, filter *tableWriter, force bool) {
	s.natTop = s.writeBuckets(nat, s.natBuckets, d.nat, s.natTop, force, true,
		func(r *rendered) []dispatchRule { return r.natDispatch })
	s.filterTop = s.writeBuckets(filter, s.filterBuckets, d.filter, s.filterTop, force, false,
		func(r *rendered) []dispatchRule { return r.filterDispatch })
	if d.natNP || force {
		s.writeNodePorts(nat, s.natNP, func(r *rendered) string { return r.natNodePort })
	}
	if d.filterNP || force {
		s.writeNodePorts(filter, s.filterNP, func(r *rendered) string { return r.filterNodePort })
		s.writeExternal(filter)
	}
	s.writeHairpin(d.hairpin, nat, force)
}

// writeHairpin rewrites the dirty hairpin buckets and, when the set of
// non-empty buckets changed (or force: KPO-POSTROUTING jumps to it, so a
// full sync always declares it), KPO-HAIRPIN.
func (s *famState) writeHairpin(dirtyB map[uint8]bool, t *tableWriter, force bool) {
	for b := range dirtyB {
		name := hairpinChain(b)
		ips := s.hairpin[b]
		if len(ips) == 0 {
			delete(s.hairpin, b)
			if slices.Contains(s.hairpinTop, b) {
				t.remove(name)
			}
			continue
		}
		sorted := make([]netip.Addr, 0, len(ips))
		for ip := range ips {
			sorted = append(sorted, ip)
		}
		slices.SortFunc(sorted, netip.Addr.Compare)
		c := chain{name: name, rules: make([]string, len(sorted))}
		for i, ip := range sorted {
			c.rules[i] = hairpinRule(ip, s.randomFully)
		}
		t.write(c)
	}
	top := make([]uint8, 0, len(s.hairpin))
	for b := range s.hairpin {
		top = append(top, b)
	}
	slices.Sort(top)
	if force || !slices.Equal(top, s.hairpinTop) {
		c := chain{name: chainHairpin}
		for _, b := range top {
			c.rules = append(c.rules, bucketMatch(s.fam, b)+" -j "+hairpinChain(b))
		}
		t.write(c)
	}
	s.hairpinTop = top
}

func (s *famState) writeBuckets(t *tableWriter, members map[uint8]keySet, dirtyB map[uint8]bool, top []uint8, force, nodePorts bool, rules func(*rendered) []dispatchRule) []uint8 {
	for b := range dirtyB {
		name := bucketChain(b)
		if len(members[b]) == 0 {
			delete(members, b)
			if slices.Contains(top, b) {
				t.remove(name)
			}
			continue
		}
		c := chain{name: name}
		for _, k := range sortedKeys(members[b]) {
			for _, dr := range rules(s.svcs[k]) {
				if dr.bucket == b {
					c.rules = append(c.rules, dr.rule)
				}
			}
		}
		t.write(c)
	}
	newTop := make([]uint8, 0, len(members))
	for b := range members {
		newTop = append(newTop, b)
	}
	slices.Sort(newTop)
	if force || !slices.Equal(newTop, top) {
		c := chain{name: chainServices}
		for _, b := range newTop {
			c.rules = append(c.rules, bucketMatch(s.fam, b)+" -j "+bucketChain(b))
		}
		// Node ports last: they match on the port alone, after every VIP.
		// (The filter table's refusals of node ports are KPO-EXTERNAL-SERVICES'.)
		if nodePorts {
			c.rules = append(c.rules, s.r.nodePortDispatch(s.node.nodePortIPs, s.node.explicitNP)...)
		}
		t.write(c)
	}
	return newTop
}

func (s *famState) writeNodePorts(t *tableWriter, members keySet, rule func(*rendered) string) {
	c := chain{name: chainNodePorts}
	for _, k := range sortedKeys(members) {
		if r := rule(s.svcs[k]); r != "" {
			c.rules = append(c.rules, r)
		}
	}
	t.write(c)
}

// writeExternal writes KPO-EXTERNAL-SERVICES: the refusals of external and
// LB IPs without endpoints, then the node ports' (on every local address,
// whatever nodePortAddresses says, as kube-proxy).
func (s *famState) writeExternal(t *tableWriter) {
	c := chain{name: chainExternalServices}
	for _, k := range sortedKeys(s.filterNP) {
		c.rules = append(c.rules, s.svcs[k].filterExternal...)
	}
	c.rules = append(c.rules, "-m addrtype --dst-type LOCAL -j "+chainNodePorts)
	t.write(c)
}
