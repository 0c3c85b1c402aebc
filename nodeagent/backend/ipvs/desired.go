package ipvs

import (
	"net/netip"
	"slices"

	"kpo.dev/kpo/nodeagent/model"
)

// vsWant is one virtual server a service port needs.
type vsWant struct {
	svc   Service
	dests []netip.AddrPort
	// dummy: the address goes on kpo-ipvs0 (ClusterIP, external and LB IPs);
	// NodePort virtual servers use the node's own addresses.
	dummy bool
	// external: the VIP takes traffic from outside the cluster (companion
	// rules: masquerade for policy Cluster, drop for Local without endpoints).
	external bool
}

// portPlan is what one service port makes: its virtual servers and its
// entries in the companion sets.
type portPlan struct {
	wants []vsWant
	sets  []setEntry
}

// routeOptions are the options the model resolves a family's routes with.
func (b *Backend) routeOptions(f model.Family, node *model.NodeInfo) model.RouteOptions {
	return model.RouteOptions{MasqueradeAll: b.settings.MasqueradeAll, PodsKnown: node.HasLocalDetector(f), Dialect: model.DialectIPVS}
}

// plan translates a service port's routes.
func (b *Backend) plan(sp *model.ServicePort, node *model.NodeInfo, nodeIPs []netip.Addr) portPlan {
	routes := sp.Routes(b.routeOptions(sp.Key.Family, node))
	return portPlan{wants: b.render(sp, &routes, nodeIPs), sets: setEntries(sp, &routes, nodeIPs)}
}

// render maps one service port to its virtual servers. IPVS keys services by
// address, and a virtual server has one set of destinations for every
// source (the model's IPVS dialect gives every source the same route): the
// ClusterIP's route for the ClusterIP, the external route for NodePort,
// external and LB IPs.
func (b *Backend) render(sp *model.ServicePort, routes *model.Routes, nodeIPs []netip.Addr) []vsWant {
	proto, ok := protoOf(sp.Protocol)
	if !ok {
		return nil
	}
	base := Service{Scheduler: b.cfg.Scheduler}
	if sp.AffinityTimeout > 0 {
		// IPVS persistence times out in whole seconds; round up, as a
		// shorter affinity than asked would break sessions early.
		secs := (sp.AffinityTimeout.Nanoseconds() + 1e9 - 1) / 1e9
		base.Persistent, base.Timeout = true, uint32(secs)
	}
	var out []vsWant
	add := func(a netip.Addr, port int32, eps []model.Endpoint, dummy, external bool) {
		if !a.IsValid() || port <= 0 || port > 65535 {
			return
		}
		s := base
		s.VSKey = VSKey{Addr: a.Unmap(), Protocol: proto, Port: uint16(port)}
		w := vsWant{svc: s, dummy: dummy, external: external}
		for _, e := range eps {
			ap := netip.AddrPortFrom(e.IP.Unmap(), uint16(e.Port))
			if !slices.Contains(w.dests, ap) {
				w.dests = append(w.dests, ap)
			}
		}
		out = append(out, w)
	}
	add(sp.ClusterIP, sp.Port, routes.Cluster.Outside.Endpoints, true, false)
	external := routes.External.Outside.Endpoints
	if sp.NodePort != 0 {
		for _, ip := range nodeIPs {
			add(ip, sp.NodePort, external, false, true)
		}
	}
	for _, ip := range sp.ExternalIPs {
		add(ip, sp.Port, external, true, true)
	}
	for _, ip := range sp.LoadBalancerIPs {
		add(ip, sp.Port, external, true, true)
	}
	return out
}

// nodePortIPs returns the NodePort addresses by family: the snapshot's when
// set, else the node's own (through Links, or WithNodeAddrs). Listing the
// node's addresses is a netlink dump, so a partial sync does it only when
// some service port has a NodePort; otherwise the last list stands.
func (b *Backend) nodePortIPs(snap *model.Snapshot, full bool) (map[model.Family][]netip.Addr, error) {
	out := map[model.Family][]netip.Addr{}
	var lookup []model.Family
	for _, f := range b.families {
		if ips := snap.Node.NodePortIPs[f]; ips != nil {
			out[f] = familyOnly(ips, f)
		} else {
			lookup = append(lookup, f)
		}
	}
	if len(lookup) == 0 {
		return out, nil
	}
	if !full && !hasNodePort(snap) {
		for _, f := range lookup {
			out[f] = b.nodeIPs[f]
		}
		return out, nil
	}
	var all []netip.Addr
	if b.nodeAddrs == nil {
		var err error
		if all, err = b.links.NodeAddrs(dummyName); err != nil {
			return nil, err
		}
	}
	for _, f := range lookup {
		if b.nodeAddrs == nil {
			out[f] = familyOnly(all, f)
			continue
		}
		ips, err := b.nodeAddrs(f)
		if err != nil {
			return nil, err
		}
		out[f] = familyOnly(ips, f)
	}
	return out, nil
}

func familyOnly(ips []netip.Addr, f model.Family) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		if ip.IsValid() && model.FamilyOf(ip) == f {
			out = append(out, ip.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// excluded reports whether an address is in excludeCIDRs: virtual servers and
// dummy addresses there belong to someone else and are never deleted.
func (b *Backend) excluded(a netip.Addr) bool {
	for _, p := range b.cfg.ExcludeCIDRs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func hasNodePort(snap *model.Snapshot) bool {
	for _, sp := range snap.Services {
		if sp.NodePort != 0 {
			return true
		}
	}
	return false
}
