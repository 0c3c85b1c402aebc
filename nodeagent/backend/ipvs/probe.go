package ipvs

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
)

// Probe reports whether the running kernel has IPVS, with an error saying why
// not. It must not rely on moby/ipvs: on a kernel without IPVS its handle
// lists no services and no error, and its GetConfig panics.
type Probe func() error

// kernelProbe looks for the generic-netlink family "IPVS", which ip_vs
// registers when it loads: this is exactly what every IPVS request needs.
// /proc/net/ip_vs only completes the message, since a network namespace
// without IPVS state may still lack the file on some kernels.
func kernelProbe() error {
	_, gerr := netlink.GenlFamilyGet("IPVS")
	if gerr == nil {
		return nil
	}
	_, perr := os.Stat("/proc/net/ip_vs")
	switch {
	case errors.Is(perr, os.ErrNotExist):
		return fmt.Errorf("the kernel has no IPVS (generic netlink family IPVS: %v; /proc/net/ip_vs missing): "+
			"load the ip_vs module (modprobe ip_vs) or build the kernel with CONFIG_IP_VS", gerr)
	case perr != nil:
		return fmt.Errorf("generic netlink family IPVS: %v; /proc/net/ip_vs: %v", gerr, perr)
	}
	return fmt.Errorf("generic netlink family IPVS not found (%v) although /proc/net/ip_vs exists", gerr)
}
