package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netlinkLinks is the real Links, over rtnetlink.
type netlinkLinks struct{}

func (netlinkLinks) EnsureDummy(name string) error {
	l, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		d := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(d); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("creating %s: %w", name, err)
		}
		l, err = netlink.LinkByName(name)
	}
	if err != nil {
		return fmt.Errorf("finding %s: %w", name, err)
	}
	// kube-proxy keeps kube-ipvs0 down as well: the kernel accepts packets to
	// addresses of a down interface (they are local routes), and a down dummy
	// never answers ARP for the VIPs.
	if l.Type() != "dummy" {
		return fmt.Errorf("%s exists and is a %s, not a dummy interface", name, l.Type())
	}
	return nil
}

func (netlinkLinks) DeleteDummy(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return fmt.Errorf("link %s: %w", name, unix.ENOENT)
		}
		return err
	}
	return netlink.LinkDel(l)
}

func (netlinkLinks) Addrs(name string) ([]netip.Addr, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("link %s: %w", name, unix.ENOENT)
		}
		return nil, err
	}
	as, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

func hostAddr(a netip.Addr) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}
}

func (netlinkLinks) AddAddr(name string, a netip.Addr) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.AddrAdd(l, hostAddr(a))
}

func (netlinkLinks) DelAddr(name string, a netip.Addr) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.AddrDel(l, hostAddr(a))
}

func (netlinkLinks) NodeAddrs(skip string) ([]netip.Addr, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, l := range links {
		if l.Attrs().Name == skip {
			continue
		}
		as, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, err
		}
		for _, a := range as {
			ip, ok := netip.AddrFromSlice(a.IP)
			// Loopback and link-local addresses do not take NodePort traffic
			// in kube-proxy's IPVS mode either.
			if ok && ip.Unmap().IsGlobalUnicast() {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// SetSysctl writes /proc/sys of the calling thread's network namespace.
func (netlinkLinks) SetSysctl(name, value string) error {
	return os.WriteFile(filepath.Join("/proc/sys", name), []byte(value), 0o644)
}
