// Package conntrack deletes stale UDP conntrack entries over netlink, the way
// kube-proxy v1.37 reconciles them (pkg/proxy/conntrack/cleanup.go): after
// every sync, one dump of each family's table, and every UDP entry whose
// original destination is a service address and port but whose reply comes
// from something that is not one of that service's serving endpoints is
// deleted.
//
// UDP has no connection to break: a flow's conntrack entry keeps sending a
// client's datagrams to the endpoint it first chose, even after that endpoint
// is gone, until the entry times out. And while a service has no endpoint its
// datagrams are rejected; clients that keep sending from the same port keep
// hitting the cached entry after an endpoint appears. Reconciling the whole
// table also clears flows orphaned while the agent was not running, and flows
// to an endpoint whose port changed.
package conntrack

import (
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"kpo.dev/kpo/nodeagent/model"
)

// Wanted is, for one family, which endpoints may answer each UDP service
// address: what the table should hold.
type Wanted struct {
	// ByAddress maps a service address and port (ClusterIP, external and
	// load-balancer IPs) to its serving endpoints; an empty set makes every
	// flow to it stale.
	ByAddress map[netip.AddrPort]map[netip.AddrPort]bool
	// ByNodePort maps a NodePort to its serving endpoints; only ports with
	// endpoints are listed (a flow to a NodePort without any is left alone).
	ByNodePort map[uint16]map[netip.AddrPort]bool
}

// Entry is what the reconcile reads of a UDP conntrack entry.
type Entry struct {
	// OrigDst is where the client sent the datagram; ReplySrc where the
	// answer comes from (the endpoint, after DNAT).
	OrigDst, ReplySrc netip.AddrPort
}

// Stale reports whether an entry's flow goes where its service no longer
// serves.
func (w Wanted) Stale(e Entry) bool {
	if eps, ok := w.ByAddress[e.OrigDst]; ok && !eps[e.ReplySrc] {
		return true
	}
	if eps, ok := w.ByNodePort[e.OrigDst.Port()]; ok && !eps[e.ReplySrc] {
		return true
	}
	return false
}

// WantedFor builds the family's Wanted from a snapshot's UDP service ports.
func WantedFor(snap *model.Snapshot, f model.Family) Wanted {
	w := Wanted{ByAddress: map[netip.AddrPort]map[netip.AddrPort]bool{}, ByNodePort: map[uint16]map[netip.AddrPort]bool{}}
	for k, sp := range snap.Services {
		if k.Family != f || sp.Protocol != "UDP" {
			continue
		}
		serving := map[netip.AddrPort]bool{}
		for _, ep := range sp.ServingEndpoints() {
			serving[ep.AddrPort()] = true
		}
		for _, a := range append(append([]netip.Addr{sp.ClusterIP}, sp.ExternalIPs...), sp.LoadBalancerIPs...) {
			w.ByAddress[netip.AddrPortFrom(a, uint16(sp.Port))] = serving
		}
		if sp.NodePort != 0 && len(serving) > 0 {
			w.ByNodePort[uint16(sp.NodePort)] = serving
		}
	}
	return w
}

// Cleaner reconciles conntrack entries in the current network namespace.
type Cleaner struct{}

// Reconcile deletes the family's stale UDP entries (one dump of the table:
// the kernel has no delete-by-filter) and returns how many went.
func (Cleaner) Reconcile(f model.Family, w Wanted) (int, error) {
	if len(w.ByAddress) == 0 && len(w.ByNodePort) == 0 {
		return 0, nil
	}
	fam := netlink.InetFamily(unix.AF_INET)
	if f == model.IPv6 {
		fam = unix.AF_INET6
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam, staleFilter{w})
	return int(n), err
}

// staleFilter selects the UDP entries Wanted calls stale.
type staleFilter struct{ w Wanted }

func (s staleFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	if flow.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	return s.w.Stale(Entry{
		OrigDst:  addrPort(flow.Forward.DstIP, flow.Forward.DstPort),
		ReplySrc: addrPort(flow.Reverse.SrcIP, flow.Reverse.SrcPort),
	})
}

func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}
