package behaviour

import (
	"context"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/nodeports"
	"kpo.dev/kpo/nodeagent/tracker"
)

// The one-node world of the backend levels (fakes, the kernel in
// namespaces, the VM): hack/netns.OneNode's addresses, pods in the order
// of Pods; the remote pod sits behind node-1 too, but its EndpointSlice
// puts it on node-2, which is all the rules see.
var oneNodeHosts = Hosts{
	PodA:        {IP4: "10.244.1.10", IP6: "fd10:244:0:1::a", NodeName: NodeName},
	PodB:        {IP4: "10.244.1.11", IP6: "fd10:244:0:1::b", NodeName: NodeName},
	Remote:      {IP4: "10.244.1.12", IP6: "fd10:244:0:1::c", NodeName: RemoteNode},
	ClientPod:   {IP4: "10.244.1.13", IP6: "fd10:244:0:1::d", NodeName: NodeName},
	Node:        {IP4: "198.51.100.1", IP6: "2001:db8:1::1"},
	Client:      {IP4: "198.51.100.200", IP6: "2001:db8:1::200"},
	OtherClient: {IP4: "198.51.100.201", IP6: "2001:db8:1::201"},
}

// OneNodeHosts are the hosts of the backend levels.
func OneNodeHosts() Hosts { return oneNodeHosts }

// nodeLocal are node-1's own addresses in the one-node world: its node
// network addresses, its pod links' gateway addresses, loopback.
var nodeLocal = []netip.Addr{
	netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8:1::1"),
	netip.MustParseAddr("10.244.1.1"), netip.MustParseAddr("fd10:244:0:1::1"),
	netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback(),
}

// IsNodeAddr reports whether a is one of node-1's own addresses in the
// one-node world (for the fakes' tracers: the fib/addrtype local type).
func IsNodeAddr(a netip.Addr) bool {
	for _, l := range nodeLocal {
		if l == a.Unmap() {
			return true
		}
	}
	return false
}

// NodeInfo is what the agent tells a backend of node-1 with the default
// settings (cluster CIDRs from the address plan; node ports as
// nodePortAddresses' default resolves in the mode).
func NodeInfo(mode kpov1.Mode) model.NodeInfo {
	node := &corev1.Node{Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: oneNodeHosts[Node].IP4}, {Type: corev1.NodeInternalIP, Address: oneNodeHosts[Node].IP6},
	}}}
	prefixes := func(v4, v6 string) map[model.Family][]netip.Prefix {
		return map[model.Family][]netip.Prefix{model.IPv4: {netip.MustParsePrefix(v4)}, model.IPv6: {netip.MustParsePrefix(v6)}}
	}
	return model.NodeInfo{
		Name:         NodeName,
		ClusterCIDRs: prefixes("10.244.0.0/16", "fd10:244::/48"),
		ServiceCIDRs: prefixes("10.96.0.0/16", "fd10:96::/112"),
		NodePortIPs:  nodeports.Resolve(nil, mode, node, nodeLocal),
	}
}

// syncer is the Apply of the backend levels: the Services go through the
// agent's tracker (which keeps the pointer of an unchanged service port and
// reports the changes), and the backend syncs the snapshot as the agent
// does: fully the first time, with the tracker's change set after. in runs
// the sync where the backend's kernel is (a node's namespace).
func syncer(mode kpov1.Mode, h Hosts, b backend.Backend, in func(func() error) error) func(t *testing.T, services []Service) {
	tr := tracker.New(model.NodeContext{Name: NodeName}, func() {})
	held := map[string][]*discoveryv1.EndpointSlice{} // by Service name
	first := true
	return func(t *testing.T, services []Service) {
		t.Helper()
		want := map[string]bool{}
		for _, s := range services {
			svc, slices := s.Objects(h)
			tr.SetService(svc)
			held[s.Name] = nil
			for _, sl := range slices {
				tr.SetEndpointSlice(sl)
				held[s.Name] = append(held[s.Name], sl)
			}
			want[s.Name] = true
		}
		for name, slices := range held {
			if !want[name] {
				tr.DeleteService(Namespace, name)
				for _, sl := range slices {
					tr.DeleteEndpointSlice(sl)
				}
				delete(held, name)
			}
		}
		snap, change := tr.Snapshot()
		snap.Node = NodeInfo(mode)
		var changes *backend.Changes
		if !first {
			changes = backend.ChangesOf(change.Changed, change.Removed)
		}
		if err := in(func() error { _, err := b.Sync(context.Background(), snap, changes); return err }); err != nil {
			t.Fatalf("sync: %v", err)
		}
		first = false
	}
}

// RunBackend runs the table against a backend of the one-node world:
// check checks the probes (a fake's tracer, or real connections), in runs
// the syncs where the backend's kernel is.
func RunBackend(t *testing.T, mode kpov1.Mode, b backend.Backend, in func(func() error) error,
	check func(t *testing.T, p Probe, want Outcome)) {
	t.Helper()
	h := OneNodeHosts()
	Run(t, Level{Mode: mode, Hosts: h, Apply: syncer(mode, h, b, in), Check: check}, Table())
}

// RunFake runs the table against a backend over a fake kernel, tracing
// each probe with tr (TraceCheck says what that proves).
func RunFake(t *testing.T, mode kpov1.Mode, b backend.Backend, tr Tracer) {
	t.Helper()
	RunBackend(t, mode, b, func(fn func() error) error { return fn() }, TraceCheck(OneNodeHosts(), tr))
}
