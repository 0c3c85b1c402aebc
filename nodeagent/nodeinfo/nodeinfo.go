// Package nodeinfo resolves what the backends need to know about a node
// (model.NodeInfo) from the agent's configuration and the Node: the agent
// calls it before every sync, and kubectl kpo explain calls it for each node
// it explains, so that both see the node alike.
package nodeinfo

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/nodeports"
)

// Resolve is the node's NodeInfo: detect-local (clusterCIDRs, or the node's
// podCIDRs, or an interface), the NodePort addresses (nodePortAddresses
// resolved against local, the node's interface addresses) and the
// cluster's service ranges. node may be nil (not seen yet).
func Resolve(cfg *kpov1.AgentConfiguration, nodeName string, node *corev1.Node, local []netip.Addr,
	serviceCIDRs map[model.Family][]netip.Prefix) model.NodeInfo {
	info := model.NodeInfo{Name: nodeName, ClusterCIDRs: map[model.Family][]netip.Prefix{}}
	cidrs := cfg.ClusterCIDRs
	switch cfg.DetectLocalMode {
	case kpov1.DetectLocalNodeCIDR:
		// This node's pod ranges (kube-proxy waits for them to be set).
		cidrs = nil
		if node != nil {
			for _, c := range node.Spec.PodCIDRs {
				cidrs = append(cidrs, kpov1.CIDR(c))
			}
		}
	case kpov1.DetectLocalBridgeInterface:
		cidrs, info.LocalInterface = nil, cfg.DetectLocal.BridgeInterface
	case kpov1.DetectLocalInterfaceNamePrefix:
		cidrs, info.LocalInterface, info.LocalInterfacePrefix = nil, cfg.DetectLocal.InterfaceNamePrefix, true
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(string(c)); err == nil {
			f := model.FamilyOf(p.Addr())
			info.ClusterCIDRs[f] = append(info.ClusterCIDRs[f], p.Masked())
		}
	}
	var setting []string
	for _, npa := range cfg.NodePortAddresses {
		setting = append(setting, string(npa))
	}
	info.NodePortIPs = nodeports.Resolve(setting, cfg.Mode, node, local)
	info.ServiceCIDRs = serviceCIDRs
	return info
}
