package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"kpo.dev/kpo/nodeagent/model"
)

// Every chain of this mode starts with chainPrefix, and none with
// IPVSChainPrefix; Cleanup and drift repair delete exactly those (ownChain),
// so kube-proxy's KUBE-* chains and the ipvs mode's companion chains are never
// touched.
const (
	chainPrefix = "KPO-"
	// IPVSChainPrefix starts the chains of the ipvs mode's companion rules
	// (package ipvs), which live in the same tables. They are the ipvs mode's
	// to create and delete: during a mode switch both modes' rules coexist,
	// and each mode's cleanup removes only its own (make-before-break).
	IPVSChainPrefix = "KPO-IPVS-"

	// Base chains: declared by every full sync's restore, never deleted by drift repair.
	chainServices  = "KPO-SERVICES"  // nat and filter: dispatch by destination
	chainNodePorts = "KPO-NODEPORTS" // nat and filter: dispatch by node port
	// filter: refusals of external traffic (external and LB IPs, node ports)
	// without endpoints, on input and forward only (kube-proxy's
	// KUBE-EXTERNAL-SERVICES): the node's own traffic to a node port meets
	// them on input, and to an LB IP leaves untouched, as with kube-proxy.
	chainExternalServices = "KPO-EXTERNAL-SERVICES"
	chainPostrouting      = "KPO-POSTROUTING"  // nat: masquerade marked packets
	chainMarkMasq         = "KPO-MARK-MASQ"    // nat: set the masquerade bit
	chainClusterMasq      = "KPO-CLUSTER-MASQ" // nat: mark unless the source is a pod
	bucketChainPrefix     = "KPO-DST-"         // + 2 hex digits: one per last address byte
	chainHairpin          = "KPO-HAIRPIN"      // nat: dispatch by the last byte of the endpoint
	hairpinPrefix         = "KPO-HAIRPIN-"     // + 2 hex digits: hairpin checks of endpoints
	chainForward          = "KPO-FORWARD"      // filter: accept service traffic, drop INVALID (kube-proxy's KUBE-FORWARD)
	chainFirewall         = "KPO-FIREWALL"     // filter: the localnet guard (kube-proxy's KUBE-FIREWALL)

	// iptables rejects user chain names longer than 28 characters
	// (XT_EXTENSION_MAXNAMELEN - 1, including the terminating NUL).
	maxChainName = 28
)

const (
	tableNAT    = "nat"
	tableFilter = "filter"
)

// serviceChains are the names of the per-service-port chains.
type serviceChains struct {
	svc string // load balances over ClusterEndpoints
	svx string // load balances over ExternalEndpoints when they differ
	scc string // load balances over ShortCircuitEndpoints when they differ from both
	ext string // external traffic: masquerade / policy Local short-circuits
	fw  string // load-balancer source ranges
}

// ownChain reports whether a chain belongs to this mode.
func ownChain(name string) bool {
	return strings.HasPrefix(name, chainPrefix) && !strings.HasPrefix(name, IPVSChainPrefix)
}

func chainsFor(k model.ServicePortKey) serviceChains { return chainsForKey(k.String()) }

// chainsForKey is chainsFor with the key already formatted (render formats it once).
func chainsForKey(key string) serviceChains {
	h := hash16(key)
	return serviceChains{
		svc: "KPO-SVC-" + h,
		svx: "KPO-SVX-" + h,
		scc: "KPO-SCC-" + h,
		ext: "KPO-EXT-" + h,
		fw:  "KPO-FW-" + h,
	}
}

// sepChain names the chain of one endpoint of one service port. The service
// port key is part of the hash so that two services sharing a pod get distinct
// chains (and distinct "recent" lists for affinity).
func sepChain(k model.ServicePortKey, ep model.Endpoint) string {
	return sepChainForKey(k.String(), ep)
}

func sepChainForKey(key string, ep model.Endpoint) string {
	return "KPO-SEP-" + hash16(key+"|"+ep.String())
}

// hash16 is the first 16 base32 characters of sha256, as kube-proxy names its
// chains: 80 bits, collision-free in practice, and chain names stay ≤ 24 chars.
func hash16(s string) string {
	h := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(h[:10])
}

// bucketOf is the dispatch bucket of a destination: its last byte. Service IPs
// are allocated sequentially or at random, so the last byte spreads them evenly.
func bucketOf(a netip.Addr) uint8 {
	b := a.As16()
	return b[15]
}

func bucketChain(b uint8) string { return fmt.Sprintf("%s%02X", bucketChainPrefix, b) }

func hairpinChain(b uint8) string { return fmt.Sprintf("%s%02X", hairpinPrefix, b) }

// bucketMatch matches destinations whose last byte is b with a non-contiguous
// mask, which both iptables-legacy and iptables-nft accept.
func bucketMatch(f model.Family, b uint8) string {
	if f == model.IPv6 {
		return fmt.Sprintf("-d ::%x/::ff", b)
	}
	return fmt.Sprintf("-d 0.0.0.%d/0.0.0.255", b)
}

func hostCIDR(a netip.Addr) string {
	if a.Is4() {
		return a.String() + "/32"
	}
	return a.String() + "/128"
}

func protoName(p corev1.Protocol) string { return strings.ToLower(string(p)) }

// protoPort is "-p tcp -m tcp --dport 80".
func protoPort(p corev1.Protocol, port int32) string {
	n := protoName(p)
	return "-p " + n + " -m " + n + " --dport " + strconv.Itoa(int(port))
}
