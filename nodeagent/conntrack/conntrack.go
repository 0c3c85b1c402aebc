// Package conntrack deletes stale UDP conntrack entries over netlink (one
// dump-and-delete per address family and sync, not a conntrack process per
// entry).
//
// UDP has no connection to break: a flow's conntrack entry keeps sending a
// client's datagrams to the endpoint it first chose, even after that endpoint
// is gone, until the entry times out. And while a service has no endpoint its
// datagrams are rejected; clients that keep sending from the same port keep
// hitting the cached entry after an endpoint appears. kube-proxy deletes those
// entries; so does kpo.
package conntrack

import (
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
)

// Flow selects UDP conntrack entries by their original destination and,
// optionally, the endpoint they were DNATed to.
type Flow struct {
	// Dst is the original destination: a service VIP. Invalid (the zero
	// Addr) for a NodePort, whose flows may go to any of the node's addresses.
	Dst netip.Addr
	// IPv6 is the family of a NodePort flow (when Dst is invalid).
	IPv6 bool
	// Port is the original destination port: the service port, or the NodePort.
	Port int32
	// Endpoint, when valid, keeps only the flows DNATed to it (their reply's source).
	Endpoint netip.Addr
}

func (f Flow) isV6() bool {
	if f.Dst.IsValid() {
		return f.Dst.Is6()
	}
	return f.IPv6
}

// Cleaner deletes conntrack entries in the current network namespace.
type Cleaner struct{}

// Clear deletes the UDP flows that match any of flows. The kernel has no
// delete-by-filter: each family's table is dumped once and matching entries
// are deleted one by one, so all of a sync's flows go in one call.
func (Cleaner) Clear(flows []Flow) error {
	byFamily := map[netlink.InetFamily][]netlink.CustomConntrackFilter{}
	for _, fl := range flows {
		f, err := filterFor(fl)
		if err != nil {
			return err
		}
		fam := netlink.InetFamily(netlink.FAMILY_V4)
		if fl.isV6() {
			fam = netlink.FAMILY_V6
		}
		byFamily[fam] = append(byFamily[fam], f)
	}
	for fam, filters := range byFamily {
		if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam, filters...); err != nil {
			return err
		}
	}
	return nil
}

func filterFor(fl Flow) (*netlink.ConntrackFilter, error) {
	f := &netlink.ConntrackFilter{}
	if err := f.AddProtocol(syscall.IPPROTO_UDP); err != nil {
		return nil, err
	}
	if fl.Dst.IsValid() {
		if err := f.AddIP(netlink.ConntrackOrigDstIP, fl.Dst.AsSlice()); err != nil {
			return nil, err
		}
	}
	if err := f.AddPort(netlink.ConntrackOrigDstPort, uint16(fl.Port)); err != nil {
		return nil, err
	}
	if fl.Endpoint.IsValid() {
		if err := f.AddIP(netlink.ConntrackReplySrcIP, fl.Endpoint.AsSlice()); err != nil {
			return nil, err
		}
	}
	return f, nil
}
