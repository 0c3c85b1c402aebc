// Package ipvs is kpo's IPVS dataplane: it renders a model.Snapshot into IPVS
// virtual servers (one per VIP: ClusterIP, NodePort on each node address,
// external and load-balancer IPs) whose real servers are the endpoints, binds
// the VIPs to the dummy interface kpo-ipvs0, and keeps the few iptables rules
// and ipsets IPVS cannot do without (masquerade, hairpin, reject, source
// ranges). See docs/ipvs-backend.md.
//
// IPVS has no transactions: a sync is a sequence of netlink requests, each
// atomic by itself. Syncs diff instead of flushing, so that neither a sync nor
// an agent restart cuts established connections.
package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"time"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
)

// dummyName is the interface holding the VIPs; like kube-proxy's kube-ipvs0,
// an address there is what marks a virtual server as kpo's.
const dummyName = "kpo-ipvs0"

// DefaultTerminationBound is how long a removed endpoint drains (weight 0)
// before it is deleted even with connections left.
const DefaultTerminationBound = 15 * time.Second

// Stats are counters of the last successful sync.
type Stats struct {
	// NetlinkOps is how many IPVS and rtnetlink requests the sync made.
	NetlinkOps int
	// VirtualServers and Destinations are what kpo holds after the sync.
	VirtualServers, Destinations int
	// Terminating is how many destinations drain (weight 0).
	Terminating int
	// Full tells whether the sync was full.
	Full bool
}

// Backend is the ipvs mode. It is used by one goroutine at a time.
type Backend struct {
	settings backend.Settings
	cfg      Config
	families []model.Family

	raw       Handle
	rawLinks  Links
	handle    *countingHandle
	links     Links
	linkOps   int
	rules     Rules
	probe     Probe
	now       func() time.Time
	nodeAddrs func(model.Family) ([]netip.Addr, error)

	// What the kernel holds, as far as this process knows. It is rebuilt from
	// the kernel by every full sync, so a restart or drift loses nothing.
	svcs     map[model.ServicePortKey]*spState
	vs       map[VSKey]*vsState
	addrRefs map[netip.Addr]int
	// term are the destinations draining: deadline by destination.
	term    map[destKey]time.Time
	nodeIPs map[model.Family][]netip.Addr

	needFull bool
	inFull   bool
	stats    Stats
}

// spState is what one service port made.
type spState struct {
	sp   *model.ServicePort
	keys []VSKey
	// sets are its entries in the companion ipsets.
	sets []setEntry
}

// vsState is a programmed virtual server.
type vsState struct {
	svc   Service
	dummy bool
	owner model.ServicePortKey
	// dests: weight by destination; 0 means draining.
	dests map[netip.AddrPort]int
}

type destKey struct {
	vs   VSKey
	dest netip.AddrPort
}

var _ backend.Backend = (*Backend)(nil)

// New returns the ipvs backend for families (both when none are given). It
// does not touch the kernel: Check says whether IPVS is there.
func New(settings backend.Settings, cfg Config, families []model.Family, opts ...Option) (*Backend, error) {
	if len(families) == 0 {
		families = []model.Family{model.IPv4, model.IPv6}
	}
	if settings.MasqueradeBit < 0 || settings.MasqueradeBit > 31 {
		return nil, fmt.Errorf("masquerade bit %d out of range 0..31", settings.MasqueradeBit)
	}
	if cfg.Scheduler == "" {
		cfg.Scheduler = "rr"
	}
	if !slices.Contains(knownSchedulers, cfg.Scheduler) {
		return nil, fmt.Errorf("unknown IPVS scheduler %q", cfg.Scheduler)
	}
	if cfg.TerminationBound <= 0 {
		cfg.TerminationBound = DefaultTerminationBound
	}
	b := &Backend{settings: settings, cfg: cfg, families: slices.Clone(families), now: time.Now, needFull: true}
	b.reset()
	for _, o := range opts {
		o(b)
	}
	if b.probe == nil {
		b.probe = kernelProbe
	}
	if b.rawLinks == nil {
		b.rawLinks = netlinkLinks{}
	}
	b.links = countingLinks{l: b.rawLinks, ops: &b.linkOps}
	if b.rules == nil {
		b.rules = newCompanionRules(settings, nil, nil)
	}
	return b, nil
}

func (b *Backend) reset() {
	b.svcs = map[model.ServicePortKey]*spState{}
	b.vs = map[VSKey]*vsState{}
	b.addrRefs = map[netip.Addr]int{}
	b.term = map[destKey]time.Time{}
	b.nodeIPs = map[model.Family][]netip.Addr{}
}

// Mode implements backend.Backend.
func (b *Backend) Mode() kpov1.Mode { return kpov1.ModeIPVS }

// Stats returns the counters of the last successful sync.
func (b *Backend) Stats() Stats { return b.stats }

// Check implements backend.Backend.
func (b *Backend) Check(ctx context.Context) error {
	if err := b.probe(); err != nil {
		return fmt.Errorf("%w: ipvs: %v", backend.ErrUnavailable, err)
	}
	if _, err := b.ensureHandle(); err != nil {
		return fmt.Errorf("%w: ipvs: %v", backend.ErrUnavailable, err)
	}
	return nil
}

// ensureHandle opens the real handle once the probe passed: moby/ipvs cannot
// be trusted on a kernel without IPVS.
func (b *Backend) ensureHandle() (*countingHandle, error) {
	if b.handle != nil {
		return b.handle, nil
	}
	if b.raw == nil {
		if err := b.probe(); err != nil {
			return nil, err
		}
		h, err := newKernelHandle()
		if err != nil {
			return nil, err
		}
		b.raw = h
	}
	b.handle = &countingHandle{h: b.raw}
	return b.handle, nil
}

// Sync implements backend.Backend.
func (b *Backend) Sync(ctx context.Context, snap *model.Snapshot, changes *backend.Changes) (backend.SyncResult, error) {
	if err := ctx.Err(); err != nil {
		return backend.SyncResult{}, err
	}
	h, err := b.ensureHandle()
	if err != nil {
		return backend.SyncResult{}, fmt.Errorf("%w: ipvs: %v", backend.ErrUnavailable, err)
	}
	h.ops, b.linkOps = 0, 0
	if b.needFull {
		changes = nil
	}
	full := changes == nil
	nodeIPs, err := b.nodePortIPs(snap, full)
	if err != nil {
		b.needFull = true
		return backend.SyncResult{}, fmt.Errorf("ipvs: node addresses: %w", err)
	}
	var written int
	if full {
		b.inFull = true
		written, err = b.syncFull(snap, nodeIPs)
		b.inFull = false
	} else {
		written, err = b.syncPartial(snap, b.withNodePortChanges(snap, changes, nodeIPs), nodeIPs)
	}
	if err == nil {
		err = b.drain()
	}
	if err == nil {
		err = b.syncRules(snap, full)
	}
	if err != nil {
		// What the kernel holds is now unknown: the next sync reads it again.
		b.needFull = true
		return backend.SyncResult{}, fmt.Errorf("ipvs sync: %w", err)
	}
	b.needFull = false
	b.nodeIPs = nodeIPs
	b.stats = Stats{NetlinkOps: h.ops + b.linkOps, VirtualServers: len(b.vs), Terminating: len(b.term), Full: full}
	for _, v := range b.vs {
		b.stats.Destinations += len(v.dests)
	}
	return backend.SyncResult{Full: full, ServicePortsWritten: written,
		Rules: b.stats.VirtualServers + b.stats.Destinations, Draining: len(b.term)}, nil
}

// withNodePortChanges adds to changes the service ports with a NodePort
// when the node's addresses changed since the last sync: NodePort virtual
// servers exist per node address, which the backend finds itself when the
// snapshot names none (a change the agent cannot see).
func (b *Backend) withNodePortChanges(snap *model.Snapshot, changes *backend.Changes, nodeIPs map[model.Family][]netip.Addr) *backend.Changes {
	moved := false
	for _, f := range b.families {
		moved = moved || !slices.Equal(nodeIPs[f], b.nodeIPs[f])
	}
	if !moved {
		return changes
	}
	out := &backend.Changes{Changed: slices.Clone(changes.Changed), Removed: changes.Removed}
	for k, sp := range snap.Services {
		if sp.NodePort != 0 && !slices.Contains(out.Changed, k) {
			out.Changed = append(out.Changed, k)
		}
	}
	return out
}

// wanted reports whether a service port is of one of our families.
func (b *Backend) wanted(k model.ServicePortKey) bool {
	return slices.Contains(b.families, k.Family)
}

// syncFull reloads the kernel's state, then diffs every service port against
// it. Nothing is flushed: what already matches costs only the reads.
func (b *Backend) syncFull(snap *model.Snapshot, nodeIPs map[model.Family][]netip.Addr) (int, error) {
	if err := b.prepare(); err != nil {
		return 0, err
	}
	onDummy, err := b.links.Addrs(dummyName)
	if err != nil {
		return 0, fmt.Errorf("listing %s: %w", dummyName, err)
	}
	dummySet := map[netip.Addr]bool{}
	for _, a := range onDummy {
		dummySet[a] = true
	}
	kernel, err := b.handle.GetServices()
	if err != nil {
		return 0, fmt.Errorf("listing virtual servers: %w", err)
	}
	// Before this sync's rules rewrite it: what the last sync made, maybe in
	// another process.
	owned, err := b.rules.Owned(b.families)
	if err != nil {
		return 0, err
	}
	prev := b.vs
	oldTerm := b.term
	b.reset()
	desired := b.desired(snap, nodeIPs)
	mine := func(s Service) bool {
		_, made := prev[s.VSKey]
		return dummySet[s.Addr] || made || owned[s.VSKey]
	}
	if err := b.reload(kernel, desired, mine); err != nil {
		return 0, err
	}
	for _, d := range desired {
		if err := b.apply(d.w, d.owner, oldTerm); err != nil {
			return 0, err
		}
	}
	return len(b.svcs), b.bindAddrs(onDummy, dummySet)
}

// wantedVS is a virtual server a service port wants.
type wantedVS struct {
	w     vsWant
	owner model.ServicePortKey
}

// desired plans every service port and returns the virtual servers they
// want, the first owner winning a conflict.
func (b *Backend) desired(snap *model.Snapshot, nodeIPs map[model.Family][]netip.Addr) map[VSKey]wantedVS {
	desired := map[VSKey]wantedVS{}
	for k, sp := range snap.Services {
		if !b.wanted(k) {
			continue
		}
		p := b.plan(sp, &snap.Node, nodeIPs[k.Family])
		st := &spState{sp: sp, sets: p.sets}
		for _, w := range p.wants {
			if _, dup := desired[w.svc.VSKey]; dup {
				continue
			}
			desired[w.svc.VSKey] = wantedVS{w, k}
			st.keys = append(st.keys, w.svc.VSKey)
		}
		b.svcs[k] = st
	}
	return desired
}

// reload loads the kernel's view of the desired virtual servers (with their
// draining destinations) and deletes the undesired ones that are kpo's
// (mine), never those in excludeCIDRs.
func (b *Backend) reload(kernel []Service, desired map[VSKey]wantedVS, mine func(Service) bool) error {
	for _, s := range kernel {
		if !slices.Contains(b.families, model.FamilyOf(s.Addr)) {
			continue
		}
		if _, ok := desired[s.VSKey]; ok {
			ds, err := b.handle.GetDestinations(s.VSKey)
			if err != nil {
				return fmt.Errorf("listing destinations of %v: %w", s.VSKey, err)
			}
			vs := &vsState{svc: s, dests: map[netip.AddrPort]int{}}
			for _, d := range ds {
				vs.dests[d.Addr] = d.Weight
			}
			b.vs[s.VSKey] = vs
			continue
		}
		if b.excluded(s.Addr) || !mine(s) {
			continue
		}
		if err := b.handle.DelService(s.VSKey); err != nil && !notFound(err) {
			return fmt.Errorf("deleting %v: %w", s.VSKey, err)
		}
	}
	return nil
}

// bindAddrs makes kpo-ipvs0 hold exactly the VIPs, plus whatever
// excludeCIDRs protects, given what it holds (onDummy, also as a set).
func (b *Backend) bindAddrs(onDummy []netip.Addr, dummySet map[netip.Addr]bool) error {
	for a := range b.addrRefs {
		if !dummySet[a] {
			if err := b.links.AddAddr(dummyName, a); err != nil && !errors.Is(err, syscall.EEXIST) {
				return fmt.Errorf("adding %v to %s: %w", a, dummyName, err)
			}
		}
	}
	for _, a := range onDummy {
		if b.addrRefs[a] == 0 && !b.excluded(a) && slices.Contains(b.families, model.FamilyOf(a)) {
			if err := b.links.DelAddr(dummyName, a); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
				return fmt.Errorf("removing %v from %s: %w", a, dummyName, err)
			}
		}
	}
	return nil
}

// prepare makes what every virtual server relies on: the dummy interface, the
// global timeouts and the sysctls.
func (b *Backend) prepare() error {
	if err := b.links.EnsureDummy(dummyName); err != nil {
		return err
	}
	if !b.cfg.Timeouts.zero() {
		cur, err := b.handle.GetConfig()
		if err != nil {
			return fmt.Errorf("reading IPVS timeouts: %w", err)
		}
		t := b.cfg.Timeouts
		if (t.TCP != 0 && t.TCP != cur.TCP) || (t.TCPFin != 0 && t.TCPFin != cur.TCPFin) || (t.UDP != 0 && t.UDP != cur.UDP) {
			if err := b.handle.SetConfig(t); err != nil {
				return fmt.Errorf("setting IPVS timeouts: %w", err)
			}
		}
	}
	sysctls := [][2]string{
		// iptables sees IPVS connections only with vs/conntrack: masquerade
		// and hairpin rules depend on it.
		{"net/ipv4/vs/conntrack", "1"},
		// Connections to a deleted destination are dropped at once rather
		// than kept until they time out, and persistence templates of
		// quiescent (weight 0) destinations expire, so affinity moves on.
		{"net/ipv4/vs/expire_nodest_conn", "1"},
		{"net/ipv4/vs/expire_quiescent_template", "1"},
		{"net/ipv4/ip_forward", "1"},
	}
	if b.cfg.StrictARP {
		sysctls = append(sysctls, [2]string{"net/ipv4/conf/all/arp_ignore", "1"}, [2]string{"net/ipv4/conf/all/arp_announce", "2"})
	}
	for _, s := range sysctls {
		if err := b.links.SetSysctl(s[0], s[1]); err != nil {
			return fmt.Errorf("sysctl %s: %w", s[0], err)
		}
	}
	return nil
}

// syncPartial rewrites the changed service ports and removes those that
// went away: first every virtual server they no longer want is released
// (deleted, unless another of them takes it over), then they take what
// they want. A virtual server can move between service ports in one sync
// (a port renamed, a VIP arbitrated to another Service); its old owner is
// then in the change set too.
func (b *Backend) syncPartial(snap *model.Snapshot, changes *backend.Changes, nodeIPs map[model.Family][]netip.Addr) (int, error) {
	type move struct {
		k  model.ServicePortKey
		sp *model.ServicePort // nil: removed
		portPlan
	}
	var moves []move
	moving := map[model.ServicePortKey]bool{}
	wantedBy := map[VSKey]model.ServicePortKey{}
	add := func(k model.ServicePortKey, sp *model.ServicePort) {
		if !b.wanted(k) || moving[k] || (sp == nil && b.svcs[k] == nil) {
			return
		}
		m := move{k: k, sp: sp}
		if sp != nil {
			m.portPlan = b.plan(sp, &snap.Node, nodeIPs[k.Family])
		}
		for _, w := range m.wants {
			if _, taken := wantedBy[w.svc.VSKey]; !taken {
				wantedBy[w.svc.VSKey] = k
			}
		}
		moving[k] = true
		moves = append(moves, m)
	}
	for _, k := range changes.Changed {
		add(k, snap.Services[k])
	}
	for _, k := range changes.Removed {
		add(k, nil)
	}
	for _, m := range moves {
		if old := b.svcs[m.k]; old != nil {
			for _, key := range old.keys {
				if _, taken := wantedBy[key]; !taken {
					if err := b.deleteVS(key); err != nil {
						return 0, err
					}
				}
			}
		}
	}
	written := 0
	for _, m := range moves {
		written++
		if m.sp == nil {
			delete(b.svcs, m.k)
			continue
		}
		st := &spState{sp: m.sp, sets: m.sets}
		for _, w := range m.wants {
			key := w.svc.VSKey
			if cur := b.vs[key]; wantedBy[key] != m.k || (cur != nil && cur.owner != m.k && !moving[cur.owner]) {
				continue // another service port's VIP: first owner wins
			}
			if err := b.apply(w, m.k, b.term); err != nil {
				return written, err
			}
			st.keys = append(st.keys, key)
		}
		b.svcs[m.k] = st
	}
	return written, nil
}

// apply makes one virtual server match w, given what b.vs holds of it.
// oldTerm carries drain deadlines over a full sync's reload.
func (b *Backend) apply(w vsWant, owner model.ServicePortKey, oldTerm map[destKey]time.Time) error {
	key := w.svc.VSKey
	cur := b.vs[key]
	if cur == nil {
		if err := b.handle.NewService(w.svc); err != nil {
			return fmt.Errorf("adding %v: %w", key, err)
		}
		cur = &vsState{svc: w.svc, dests: map[netip.AddrPort]int{}}
		b.vs[key] = cur
	} else if !cur.svc.sameConfig(w.svc) {
		if err := b.handle.UpdateService(w.svc); err != nil {
			return fmt.Errorf("updating %v: %w", key, err)
		}
		cur.svc = w.svc
	}
	if cur.owner != owner || cur.dummy != w.dummy {
		// First time this sync's state sees the VIP: count its address.
		if cur.dummy && cur.owner != (model.ServicePortKey{}) {
			b.unref(key.Addr)
		}
		cur.owner, cur.dummy = owner, w.dummy
		if w.dummy {
			if b.addrRefs[key.Addr]++; b.addrRefs[key.Addr] == 1 && !b.inFull {
				// A full sync binds addresses at its end, from a listing.
				if err := b.links.AddAddr(dummyName, key.Addr); err != nil && !errors.Is(err, syscall.EEXIST) {
					return fmt.Errorf("adding %v to %s: %w", key.Addr, dummyName, err)
				}
			}
		}
	}
	for _, d := range w.dests {
		wt, ok := cur.dests[d]
		switch {
		case !ok:
			if err := b.handle.NewDestination(key, Destination{Addr: d, Weight: 1}); err != nil {
				return fmt.Errorf("adding %v to %v: %w", d, key, err)
			}
		case wt != 1:
			// A draining endpoint came back (or someone changed the weight).
			if err := b.handle.UpdateDestination(key, Destination{Addr: d, Weight: 1}); err != nil {
				return fmt.Errorf("reweighting %v of %v: %w", d, key, err)
			}
		}
		cur.dests[d] = 1
		delete(b.term, destKey{key, d})
	}
	for d, wt := range cur.dests {
		if slices.Contains(w.dests, d) {
			continue
		}
		dk := destKey{key, d}
		if wt != 0 {
			// Graceful termination: no new connections, existing ones go on.
			if err := b.handle.UpdateDestination(key, Destination{Addr: d, Weight: 0}); err != nil {
				return fmt.Errorf("quiescing %v of %v: %w", d, key, err)
			}
			cur.dests[d] = 0
		}
		if _, ok := b.term[dk]; !ok {
			if dl, ok := oldTerm[dk]; ok {
				b.term[dk] = dl
			} else {
				b.term[dk] = b.now().Add(b.cfg.TerminationBound)
			}
		}
	}
	return nil
}

func (b *Backend) unref(a netip.Addr) {
	if b.addrRefs[a]--; b.addrRefs[a] <= 0 {
		delete(b.addrRefs, a)
	}
}

// deleteVS deletes a virtual server and, when it was the last on its
// address, the address from kpo-ipvs0.
func (b *Backend) deleteVS(key VSKey) error {
	cur := b.vs[key]
	if err := b.handle.DelService(key); err != nil && !notFound(err) {
		return fmt.Errorf("deleting %v: %w", key, err)
	}
	delete(b.vs, key)
	for dk := range b.term {
		if dk.vs == key {
			delete(b.term, dk)
		}
	}
	if cur != nil && cur.dummy {
		b.unref(key.Addr)
		if b.addrRefs[key.Addr] == 0 && !b.excluded(key.Addr) {
			if err := b.links.DelAddr(dummyName, key.Addr); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
				return fmt.Errorf("removing %v from %s: %w", key.Addr, dummyName, err)
			}
		}
	}
	return nil
}

// drain deletes the draining destinations that have no connections left or
// whose bound passed: one GetDestinations per virtual server with any.
func (b *Backend) drain() error {
	if len(b.term) == 0 {
		return nil
	}
	byVS := map[VSKey][]netip.AddrPort{}
	for dk := range b.term {
		byVS[dk.vs] = append(byVS[dk.vs], dk.dest)
	}
	now := b.now()
	for key, dests := range byVS {
		ds, err := b.handle.GetDestinations(key)
		if err != nil {
			return fmt.Errorf("listing destinations of %v: %w", key, err)
		}
		for _, d := range dests {
			dk := destKey{key, d}
			i := slices.IndexFunc(ds, func(x Destination) bool { return x.Addr == d })
			if i >= 0 && ds[i].ActiveConnections+ds[i].InactiveConnections > 0 && now.Before(b.term[dk]) {
				continue
			}
			if i >= 0 {
				if err := b.handle.DelDestination(key, d); err != nil && !errors.Is(err, syscall.ENOENT) {
					return fmt.Errorf("deleting %v of %v: %w", d, key, err)
				}
			}
			delete(b.term, dk)
			if v := b.vs[key]; v != nil {
				delete(v.dests, d)
			}
		}
	}
	return nil
}

// Cleanup implements backend.Backend: it deletes the virtual servers on
// kpo-ipvs0's addresses, those this process made and those the VIP-PORTS
// sets record (node ports on node addresses made by an earlier agent, such
// as the ipvs agent before a mode switch), the interface, and the companion
// rules.
func (b *Backend) Cleanup(ctx context.Context) error {
	prev := b.vs
	b.reset()
	b.needFull = true
	var errs []error
	owned, err := b.rules.Owned(b.families)
	if err != nil {
		errs = append(errs, err)
	}
	if err := b.rules.Cleanup(b.families); err != nil {
		errs = append(errs, err)
	}
	onDummy, err := b.links.Addrs(dummyName)
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		errs = append(errs, err)
	}
	if b.probe() == nil {
		if h, err := b.ensureHandle(); err != nil {
			errs = append(errs, err)
		} else if svcs, err := h.GetServices(); err != nil {
			errs = append(errs, err)
		} else {
			for _, s := range svcs {
				_, mine := prev[s.VSKey]
				if (mine || owned[s.VSKey] || slices.Contains(onDummy, s.Addr)) && !b.excluded(s.Addr) {
					if err := h.DelService(s.VSKey); err != nil && !notFound(err) {
						errs = append(errs, err)
					}
				}
			}
		}
	}
	if err == nil {
		if err := b.links.DeleteDummy(dummyName); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// String is for test failures and logs.
func (s Stats) String() string {
	return fmt.Sprintf("ops=%d vs=%d dests=%d terminating=%d full=%v", s.NetlinkOps, s.VirtualServers, s.Destinations, s.Terminating, s.Full)
}

// notFound: the kernel answers ESRCH for a missing service (ENOENT for a
// missing destination); either means the deletion already happened.
func notFound(err error) bool { return errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT) }
