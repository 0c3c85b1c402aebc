package explain

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/nodeinfo"
	"kpo.dev/kpo/nodeagent/tracker"
)

// Objects are the API objects an explanation reads.
type Objects struct {
	Services     []*corev1.Service
	Slices       []*discoveryv1.EndpointSlice
	ServiceCIDRs []*networkingv1.ServiceCIDR
}

// Watched reports whether the agent's informers see an object with these
// labels: the agent lists Services and EndpointSlices without the
// service-proxy-name and headless labels (nodeagent/agent/agent.go).
func Watched(labels map[string]string) bool {
	_, other := labels[model.LabelServiceProxyName]
	_, headless := labels[model.LabelHeadless]
	return !other && !headless
}

// NodeModel is one node's model as its agent builds it from the same objects.
type NodeModel struct {
	Node       Node
	Snapshot   *model.Snapshot
	Rejections []model.Rejection
	objs       *Objects
	ctx        model.NodeContext
}

// NodeFacts are what the API says about a node besides the objects: the
// Node, its agent's configuration and the mode it runs, and its local
// addresses (nil: the Node's addresses and loopback).
type NodeFacts struct {
	Node   *corev1.Node
	Config *kpov1.AgentConfiguration
	// ActiveMode is the mode the node's ProxyNodeStatus reports ("" : the configuration's).
	ActiveMode kpov1.Mode
	Addrs      []netip.Addr
}

// BuildNode builds a node's model with the agent's tracker, as the agent
// does: every watched Service and EndpointSlice, the node's zone, then
// arbitration; the NodeInfo as nodeinfo.Resolve gives it.
func BuildNode(objs *Objects, f NodeFacts) *NodeModel {
	n := f.Node
	ctx := model.NodeContext{Name: n.Name, Zone: n.Labels[corev1.LabelTopologyZone]}
	t := tracker.New(ctx, nil)
	for _, s := range objs.Services {
		if Watched(s.Labels) {
			t.SetService(s)
		}
	}
	for _, s := range objs.Slices {
		if Watched(s.Labels) {
			t.SetEndpointSlice(s)
		}
	}
	snap, _ := t.Snapshot()
	addrs := f.Addrs
	if addrs == nil {
		addrs = nodeAddrs(n)
	}
	snap.Node = nodeinfo.Resolve(f.Config, n.Name, n, addrs, serviceCIDRs(objs.ServiceCIDRs))
	mode := cmp.Or(f.ActiveMode, f.Config.Mode)
	var npa []string
	for _, a := range f.Config.NodePortAddresses {
		npa = append(npa, string(a))
	}
	node := Node{Name: n.Name, Zone: ctx.Zone, Info: snap.Node, Mode: mode, MasqueradeAll: f.Config.MasqueradeAll,
		LocalhostNodePorts: f.Config.IPTables.LocalhostNodePorts == nil || *f.Config.IPTables.LocalhostNodePorts,
		NodePortAddresses:  npa, Addrs: addrs}
	node.Hairpin = HairpinSet(snap, &node)
	return &NodeModel{Node: node, Snapshot: snap, Rejections: t.Rejections(), objs: objs, ctx: ctx}
}

// nodeAddrs are the Node's addresses and loopback: what the API knows of a
// node's local addresses.
func nodeAddrs(n *corev1.Node) []netip.Addr {
	out := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
	for _, a := range n.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil && !slices.Contains(out, ip.Unmap()) {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

func serviceCIDRs(cs []*networkingv1.ServiceCIDR) map[model.Family][]netip.Prefix {
	out := map[model.Family][]netip.Prefix{}
	for _, c := range cs {
		for _, s := range c.Spec.CIDRs {
			if p, err := netip.ParsePrefix(s); err == nil {
				f := model.FamilyOf(p.Addr())
				out[f] = append(out[f], p)
			}
		}
	}
	return out
}

// Find returns the service port of Service namespace/name in the family of
// addr whose port matches: port is the port's name, or its number (the
// service port, or the NodePort when target is ToNodePort), or "" when the
// Service has one port.
func (m *NodeModel) Find(namespace, name, port string, target Target, addr netip.Addr) (*model.ServicePort, error) {
	var all []*model.ServicePort
	for _, sp := range m.Snapshot.Services {
		if sp.Key.Namespace == namespace && sp.Key.Name == name && sp.Key.Family == model.FamilyOf(addr) {
			all = append(all, sp)
		}
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("node %s proxies no %s port of service %s/%s (not found, not proxied, or skipped: see the rejections)",
			m.Node.Name, model.FamilyOf(addr), namespace, name)
	}
	slices.SortFunc(all, func(a, b *model.ServicePort) int { return cmp.Compare(a.Port, b.Port) })
	if port == "" {
		if len(all) > 1 {
			return nil, fmt.Errorf("service %s/%s has %d ports: name one with --port", namespace, name, len(all))
		}
		return all[0], nil
	}
	num, _ := strconv.Atoi(port)
	for _, sp := range all {
		if sp.Key.Port == port || target == ToNodePort && int(sp.NodePort) == num || target != ToNodePort && int(sp.Port) == num {
			return sp, nil
		}
	}
	return nil, fmt.Errorf("service %s/%s has no port %q", namespace, name, port)
}

// Explain explains q on this node for service port sp.
func (m *NodeModel) Explain(sp *model.ServicePort, q Query) Explanation {
	e := Explain(sp, m.candidates(sp.Key), &m.Node, q)
	for _, r := range m.Rejections {
		if r.Namespace == sp.Key.Namespace && (r.Kind == model.KindService && r.Name == sp.Key.Name ||
			r.Kind == model.KindEndpointSlice && m.sliceOf(r.Name) == sp.Key.Name) {
			e.Reasons = append(e.Reasons, Reason{ReasonRejected, r.Kind + " " + r.Name, r.Reason + ": " + r.Message})
		}
	}
	return e
}

func (m *NodeModel) sliceOf(slice string) string {
	for _, s := range m.objs.Slices {
		if s.Name == slice {
			return s.Labels[discoveryv1.LabelServiceName]
		}
	}
	return ""
}

// candidates are the endpoints of key as BuildServicePorts sees them: the
// Service's slices in name order, as the tracker hands them over.
func (m *NodeModel) candidates(key model.ServicePortKey) []model.Candidate {
	var svc *corev1.Service
	for _, s := range m.objs.Services {
		if s.Namespace == key.Namespace && s.Name == key.Name {
			svc = s
		}
	}
	if svc == nil {
		return nil
	}
	byName := map[string]*discoveryv1.EndpointSlice{}
	for _, s := range m.objs.Slices {
		if s.Namespace == key.Namespace && s.Labels[discoveryv1.LabelServiceName] == key.Name && Watched(s.Labels) {
			byName[s.Name] = s
		}
	}
	var ordered []*discoveryv1.EndpointSlice
	for _, n := range slices.Sorted(maps.Keys(byName)) {
		ordered = append(ordered, byName[n])
	}
	return model.Candidates(svc, ordered, m.ctx)[key]
}

// Load reads the objects the agents watch: every Service, EndpointSlice
// and ServiceCIDR (arbitration between Services is cluster-wide).
func Load(ctx context.Context, c client.Reader) (*Objects, error) {
	objs := &Objects{}
	var svcs corev1.ServiceList
	var sl discoveryv1.EndpointSliceList
	var cidrs networkingv1.ServiceCIDRList
	if err := c.List(ctx, &svcs); err != nil {
		return nil, fmt.Errorf("listing Services: %w", err)
	}
	if err := c.List(ctx, &sl); err != nil {
		return nil, fmt.Errorf("listing EndpointSlices: %w", err)
	}
	// ServiceCIDRs only name the ranges (what an unallocated address gets):
	// a cluster without the API still explains every Service.
	_ = c.List(ctx, &cidrs)
	for i := range svcs.Items {
		objs.Services = append(objs.Services, &svcs.Items[i])
	}
	for i := range sl.Items {
		objs.Slices = append(objs.Slices, &sl.Items[i])
	}
	for i := range cidrs.Items {
		objs.ServiceCIDRs = append(objs.ServiceCIDRs, &cidrs.Items[i])
	}
	return objs, nil
}

// ExplainService explains q for the port of Service namespace/name that
// port names (see Find; the port is looked up as lookup's port, and q.Port
// is set from it when zero). A Service the agents do not proxy at all is
// explained as not handled, with why.
func (m *NodeModel) ExplainService(namespace, name, port string, lookup Target, q Query) (Explanation, error) {
	sp, err := m.Find(namespace, name, port, lookup, q.Addr)
	if err != nil {
		if r, ok := m.notProxied(namespace, name); ok {
			return Explanation{Node: m.Node.Name, Service: namespace + "/" + name, Query: q, SourceClass: "-",
				Outcome: NotHandled, Reasons: []Reason{r}}, nil
		}
		return Explanation{}, err
	}
	if q.Port == 0 {
		q.Port = sp.Port
		if q.Target == ToNodePort {
			q.Port = sp.NodePort
		}
	}
	return m.Explain(sp, q), nil
}

// notProxied says why the agents leave a Service alone, if they do.
func (m *NodeModel) notProxied(namespace, name string) (Reason, bool) {
	for _, s := range m.objs.Services {
		if s.Namespace != namespace || s.Name != name {
			continue
		}
		if v, ok := s.Labels[model.LabelServiceProxyName]; ok {
			return Reason{ReasonNotServed, "label " + model.LabelServiceProxyName, fmt.Sprintf(
				"the Service is handed to the proxy %q: kpo's agents ignore it", v)}, true
		}
		if !model.Proxied(s) {
			return Reason{ReasonNotServed, "spec.type / spec.clusterIP",
				"a headless or ExternalName Service has no virtual address to proxy"}, true
		}
	}
	return Reason{}, false
}
