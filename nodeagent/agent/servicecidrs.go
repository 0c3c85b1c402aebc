package agent

import (
	"net/netip"
	"slices"
	"sync"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/tools/cache"

	"kpo.dev/kpo/nodeagent/model"
)

// serviceCIDRs tracks the cluster's service ranges (networking.k8s.io/v1
// ServiceCIDR objects, as kube-proxy v1.37's nftables mode does): traffic to
// an address in them that no Service holds is dropped.
type serviceCIDRs struct {
	mu     sync.Mutex
	byName map[string][]string
}

// servesServiceCIDRs reports whether the API server serves ServiceCIDRs
// (Kubernetes 1.33 and later by default). Without them there is nothing to
// watch, and waiting for an informer that cannot list would stall the agent.
func servesServiceCIDRs(d discovery.DiscoveryInterface) bool {
	list, err := d.ServerResourcesForGroupVersion(networkingv1.SchemeGroupVersion.String())
	if err != nil {
		return false
	}
	return slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == "servicecidrs" })
}

// handler keeps the ranges current and calls changed after each change
// (they shape every rule of the fixed chains: the next sync is full).
func (s *serviceCIDRs) handler(changed func()) cache.ResourceEventHandler {
	set := func(o any) {
		if c, ok := o.(*networkingv1.ServiceCIDR); ok {
			s.mu.Lock()
			s.byName[c.Name] = slices.Clone(c.Spec.CIDRs)
			s.mu.Unlock()
			changed()
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    set,
		UpdateFunc: func(_, o any) { set(o) },
		DeleteFunc: func(o any) {
			if c, ok := unwrap[*networkingv1.ServiceCIDR](o); ok {
				s.mu.Lock()
				delete(s.byName, c.Name)
				s.mu.Unlock()
				changed()
			}
		},
	}
}

// prefixes are the ranges by family, sorted and without duplicates.
func (s *serviceCIDRs) prefixes() map[model.Family][]netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[model.Family][]netip.Prefix{}
	for _, cidrs := range s.byName {
		for _, c := range cidrs {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				continue
			}
			p = p.Masked()
			f := model.FamilyOf(p.Addr())
			if !slices.Contains(out[f], p) {
				out[f] = append(out[f], p)
			}
		}
	}
	for _, ps := range out {
		slices.SortFunc(ps, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	}
	return out
}
