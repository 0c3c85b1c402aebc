package iptables

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"kpo.dev/kpo/nodeagent/model"
)

// The rules that protect and open the host rather than translate services,
// as kube-proxy's iptables mode installs them (pkg/proxy/iptables/proxier.go,
// v1.37): KUBE-FORWARD and the localnet guard of KUBE-FIREWALL.

// Sysctls kpo's iptables mode reads or writes. Both are per network namespace.
const (
	// sysctlRouteLocalnet is set to 1 when node ports answer on 127.0.0.1
	// (DNAT of a loopback destination to a pod is dropped as martian
	// otherwise). Like kube-proxy, Cleanup leaves it set: kube-proxy never
	// restores it, and kubelet's KUBE-FIREWALL guards the node as
	// KPO-FIREWALL does.
	sysctlRouteLocalnet = "net/ipv4/conf/all/route_localnet"
	// sysctlTCPBeLiberal, when non-zero, makes conntrack mark only
	// out-of-window RSTs INVALID; kube-proxy then installs no INVALID drop.
	sysctlTCPBeLiberal = "net/netfilter/nf_conntrack_tcp_be_liberal"
)

// Sysctls reads and writes kernel settings under /proc/sys (names are paths
// relative to it), in the calling thread's network namespace.
type Sysctls interface {
	Get(name string) (string, error)
	Set(name, value string) error
}

type procSysctls struct{}

func (procSysctls) Get(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	return strings.TrimSpace(string(b)), err
}

func (procSysctls) Set(name, value string) error {
	return os.WriteFile(filepath.Join("/proc/sys", name), []byte(value), 0o644)
}

// FakeSysctls is an in-memory Sysctls for tests; a missing name reads as an
// error, as a missing /proc/sys file does.
type FakeSysctls map[string]string

// Get implements Sysctls.
func (f FakeSysctls) Get(name string) (string, error) {
	v, ok := f[name]
	if !ok {
		return "", fmt.Errorf("sysctl %s: %w", name, os.ErrNotExist)
	}
	return v, nil
}

// Set implements Sysctls.
func (f FakeSysctls) Set(name, value string) error {
	f[name] = value
	return nil
}

// localhostNodePorts reports whether node ports answer on 127.0.0.1 in this
// family: IPv4 only, when asked for and when the node-port addresses include
// an IPv4 loopback address (all addresses do), as kube-proxy decides it
// (NewProxier: nodePortAddresses.ContainsIPv4Loopback()).
func (n nodeView) localhostNodePorts(f model.Family, asked bool) bool {
	if f != model.IPv4 || !asked {
		return false
	}
	if !n.explicitNP {
		return true
	}
	for _, ip := range n.nodePortIPs {
		if ip.Is4() && ip.IsLoopback() {
			return true
		}
	}
	return false
}

// hostState is what the host rules depend on besides settings, read on full syncs.
type hostState struct {
	localnet bool // route_localnet set: the localnet guard is needed
	liberal  bool // nf_conntrack_tcp_be_liberal set: no INVALID drop
}

// loopback4 is 127.0.0.0/8.
var loopback4 = netip.MustParsePrefix("127.0.0.0/8")

// hostFilter are the filter chains KPO-FORWARD and KPO-FIREWALL.
func (r *renderer) hostFilter(h hostState) []chain {
	fwd := chain{name: chainForward, rules: ForwardRules(r.settings.MasqueradeMark(), !h.liberal)}
	fw := chain{name: chainFirewall}
	if h.localnet && r.fam == model.IPv4 {
		// route_localnet lets packets from the network reach 127.0.0.0/8
		// (kubernetes#90259): only our own DNAT (node ports on localhost)
		// and replies may.
		fw.rules = append(fw.rules, `-m comment --comment "block incoming localnet connections" -d `+loopback4.String()+
			" ! -s "+loopback4.String()+" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")
	}
	return []chain{fwd, fw}
}

// prepareHost sets route_localnet when node ports answer on localhost and
// reads nf_conntrack_tcp_be_liberal, as kube-proxy's NewProxier does.
func (b *Backend) prepareHost(f model.Family, node nodeView) (hostState, error) {
	var h hostState
	if node.localhostNodePorts(f, b.settings.LocalhostNodePorts) {
		if err := b.sysctls.Set(sysctlRouteLocalnet, "1"); err != nil {
			return h, fmt.Errorf("route_localnet: %w", err)
		}
		h.localnet = true
	}
	// A namespace without conntrack's sysctls reads as not liberal, as in
	// kube-proxy (GetSysctl fails, the DROP rule is installed).
	v, err := b.sysctls.Get(sysctlTCPBeLiberal)
	h.liberal = err == nil && v != "" && v != "0"
	return h, nil
}
