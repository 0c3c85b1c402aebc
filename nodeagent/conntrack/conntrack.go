// Package conntrack deletes stale UDP conntrack entries over netlink (one
// netlink dump-and-delete per request, not a conntrack process per entry).
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

// Cleaner deletes conntrack entries in the current network namespace.
type Cleaner struct{}

// ClearEndpoint deletes UDP flows to vip:port that were DNATed to endpoint.
func (Cleaner) ClearEndpoint(vip netip.Addr, port int32, endpoint netip.Addr) error {
	f, err := udpFlowsTo(vip, port)
	if err != nil {
		return err
	}
	if err := f.AddIP(netlink.ConntrackReplySrcIP, endpoint.AsSlice()); err != nil {
		return err
	}
	_, err = netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family(vip), f)
	return err
}

// ClearVIP deletes every UDP flow to vip:port.
func (Cleaner) ClearVIP(vip netip.Addr, port int32) error {
	f, err := udpFlowsTo(vip, port)
	if err != nil {
		return err
	}
	_, err = netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family(vip), f)
	return err
}

// udpFlowsTo matches UDP flows whose original destination is vip:port.
func udpFlowsTo(vip netip.Addr, port int32) (*netlink.ConntrackFilter, error) {
	f := &netlink.ConntrackFilter{}
	if err := f.AddProtocol(syscall.IPPROTO_UDP); err != nil {
		return nil, err
	}
	if err := f.AddIP(netlink.ConntrackOrigDstIP, vip.AsSlice()); err != nil {
		return nil, err
	}
	if err := f.AddPort(netlink.ConntrackOrigDstPort, uint16(port)); err != nil {
		return nil, err
	}
	return f, nil
}

func family(a netip.Addr) netlink.InetFamily {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}
