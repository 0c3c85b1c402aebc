package ipvs

import (
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Protocol numbers as IPVS wants them (IPPROTO_*).
const (
	protoTCP  uint16 = 6
	protoUDP  uint16 = 17
	protoSCTP uint16 = 132
)

func protoOf(p corev1.Protocol) (uint16, bool) {
	switch p {
	case corev1.ProtocolTCP:
		return protoTCP, true
	case corev1.ProtocolUDP:
		return protoUDP, true
	case corev1.ProtocolSCTP:
		return protoSCTP, true
	}
	return 0, false
}

func protoName(p uint16) string {
	switch p {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoSCTP:
		return "sctp"
	}
	return fmt.Sprint(p)
}

// VSKey identifies an IPVS virtual server: what the kernel keys services by.
type VSKey struct {
	Addr     netip.Addr
	Protocol uint16
	Port     uint16
}

func (k VSKey) String() string {
	return protoName(k.Protocol) + "/" + netip.AddrPortFrom(k.Addr, k.Port).String()
}

// Service is an IPVS virtual server, reduced to what kpo sets. The real
// handle translates to and from moby/ipvs's Service (address family, netmask,
// and the kernel-owned flag bits such as IP_VS_SVC_F_HASHED, which would
// otherwise make every listed service differ from the desired one).
type Service struct {
	VSKey
	Scheduler string
	// Persistent is ClientIP affinity (IP_VS_SVC_F_PERSISTENT), Timeout its
	// length in seconds.
	Persistent bool
	Timeout    uint32
}

// sameConfig reports whether two services need no UpdateService between them.
func (s Service) sameConfig(o Service) bool {
	return s.Scheduler == o.Scheduler && s.Persistent == o.Persistent && (!s.Persistent || s.Timeout == o.Timeout)
}

// Destination is an IPVS real server. kpo always forwards by masquerading
// (NAT), the only method that reaches pods on other nodes.
type Destination struct {
	Addr   netip.AddrPort
	Weight int
	// ActiveConnections and InactiveConnections are read-only, reported by the
	// kernel; graceful termination waits for both to reach zero.
	ActiveConnections   int
	InactiveConnections int
}

// Timeouts are IPVS's global connection timeouts; zero fields are not set.
type Timeouts struct {
	TCP, TCPFin, UDP time.Duration
}

func (t Timeouts) zero() bool { return t == Timeouts{} }

// Handle is what the backend needs of the IPVS netlink interface: a narrow
// seam over github.com/moby/ipvs, so that a fake enforcing the kernel's rules
// (FakeHandle) can stand in for it in unit tests.
type Handle interface {
	GetServices() ([]Service, error)
	NewService(s Service) error
	UpdateService(s Service) error
	DelService(k VSKey) error
	GetDestinations(k VSKey) ([]Destination, error)
	NewDestination(k VSKey, d Destination) error
	UpdateDestination(k VSKey, d Destination) error
	DelDestination(k VSKey, d netip.AddrPort) error
	GetConfig() (Timeouts, error)
	SetConfig(t Timeouts) error
}

// Links is what the backend needs of the node's network configuration: over
// rtnetlink, the dummy interface that holds the VIPs (so that the kernel
// accepts packets to them and hands them to IPVS at LOCAL_IN) and the node's
// own addresses (NodePort virtual servers); and the sysctls IPVS depends on.
type Links interface {
	// EnsureDummy creates the dummy interface when missing and sets it up.
	EnsureDummy(name string) error
	// DeleteDummy deletes it; ENOENT when it does not exist.
	DeleteDummy(name string) error
	// Addrs lists the addresses on the interface; ENOENT when it does not exist.
	Addrs(name string) ([]netip.Addr, error)
	AddAddr(name string, a netip.Addr) error
	DelAddr(name string, a netip.Addr) error
	// NodeAddrs lists the node's addresses that accept NodePort traffic by
	// default: global unicast addresses on interfaces other than skip.
	NodeAddrs(skip string) ([]netip.Addr, error)
	// SetSysctl writes a sysctl (name relative to /proc/sys) of the network
	// namespace.
	SetSysctl(name, value string) error
}

// countingHandle counts every netlink request it passes on: the issue asks for
// the number of netlink operations per (partial) sync.
type countingHandle struct {
	h   Handle
	ops int
}

func (c *countingHandle) GetServices() ([]Service, error) { c.ops++; return c.h.GetServices() }
func (c *countingHandle) NewService(s Service) error      { c.ops++; return c.h.NewService(s) }
func (c *countingHandle) UpdateService(s Service) error   { c.ops++; return c.h.UpdateService(s) }
func (c *countingHandle) DelService(k VSKey) error        { c.ops++; return c.h.DelService(k) }
func (c *countingHandle) GetDestinations(k VSKey) ([]Destination, error) {
	c.ops++
	return c.h.GetDestinations(k)
}
func (c *countingHandle) NewDestination(k VSKey, d Destination) error {
	c.ops++
	return c.h.NewDestination(k, d)
}
func (c *countingHandle) UpdateDestination(k VSKey, d Destination) error {
	c.ops++
	return c.h.UpdateDestination(k, d)
}
func (c *countingHandle) DelDestination(k VSKey, d netip.AddrPort) error {
	c.ops++
	return c.h.DelDestination(k, d)
}
func (c *countingHandle) GetConfig() (Timeouts, error) { c.ops++; return c.h.GetConfig() }
func (c *countingHandle) SetConfig(t Timeouts) error   { c.ops++; return c.h.SetConfig(t) }

// countingLinks counts rtnetlink requests the same way.
type countingLinks struct {
	l   Links
	ops *int
}

func (c countingLinks) EnsureDummy(n string) error { *c.ops++; return c.l.EnsureDummy(n) }
func (c countingLinks) DeleteDummy(n string) error { *c.ops++; return c.l.DeleteDummy(n) }
func (c countingLinks) Addrs(n string) ([]netip.Addr, error) {
	*c.ops++
	return c.l.Addrs(n)
}
func (c countingLinks) AddAddr(n string, a netip.Addr) error { *c.ops++; return c.l.AddAddr(n, a) }
func (c countingLinks) DelAddr(n string, a netip.Addr) error { *c.ops++; return c.l.DelAddr(n, a) }
func (c countingLinks) NodeAddrs(skip string) ([]netip.Addr, error) {
	*c.ops++
	return c.l.NodeAddrs(skip)
}

// SetSysctl is no netlink request: not counted.
func (c countingLinks) SetSysctl(name, value string) error { return c.l.SetSysctl(name, value) }
