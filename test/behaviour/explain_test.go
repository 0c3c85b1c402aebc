package behaviour

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/explain"
)

// TestExplainPredictsTheTable checks kubectl kpo explain's predictions
// against the behaviour table in every mode, IPVS included: the table's
// expectations are what the packets do (the backend levels check them on
// fakes, on the real kernel in namespaces and, for IPVS, in the VM), so an
// explanation that disagrees with the table says something the dataplane
// does not do. The harness of test/conformance checks explanations against
// real packets, but only in the modes it runs kube-proxy in (iptables,
// nftables); this covers IPVS without a VM.
//
// For every case and step (as Run applies them: every case's Services at
// once, then each step), node-1's model is built as the plugin builds it
// (explain.BuildNode on the objects with the node, the agent configuration
// of the mode with the table's settings, and the node's local addresses);
// each probe is explained as `kubectl kpo explain` asks it, and the
// explanation is turned into the outcome it implies in the one-node world
// of the backend levels.
func TestExplainPredictsTheTable(t *testing.T) {
	for _, mode := range []kpov1.Mode{kpov1.ModeIPTables, kpov1.ModeNFTables, kpov1.ModeIPVS} {
		t.Run(string(mode), func(t *testing.T) {
			x := &explainLevel{mode: mode, hosts: OneNodeHosts()}
			Run(t, Level{Mode: mode, Hosts: x.hosts, Apply: x.apply, Check: x.check}, Table())
			t.Logf("%s: %d predictions checked, %d probes outside what explain answers", mode, x.checked, x.skipped)
			if x.checked == 0 {
				t.Errorf("no prediction checked")
			}
		})
	}
}

// explainLevel is the table run against explain's predictions.
type explainLevel struct {
	mode     kpov1.Mode
	hosts    Hosts
	services []Service
	model    *explain.NodeModel
	checked  int
	skipped  int
}

// explainConfig is the agent configuration of the backend levels in mode:
// the defaults, with the address plan's pod networks as cluster CIDRs (what
// NodeInfo gives the backends), resolved as the plugin resolves it.
func explainConfig(t *testing.T, mode kpov1.Mode) *kpov1.AgentConfiguration {
	cfg := &kpov1.AgentConfiguration{ConfigurationName: "behaviour", ConfigurationGeneration: 1, Mode: mode}
	cfg.ClusterCIDRs = []kpov1.CIDR{"10.244.0.0/16", "fd10:244::/48"}
	resolved, err := kpov1.Resolve(cfg.Mode, &cfg.ProxySettings, nil)
	if err != nil {
		t.Fatalf("configuration: %v", err)
	}
	cfg.Mode = resolved
	return cfg
}

// explainNode is node-1 as the API holds it: its node-network addresses.
func explainNode(h Hosts) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: NodeName, Labels: map[string]string{corev1.LabelHostname: NodeName}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: h[Node].IP4}, {Type: corev1.NodeInternalIP, Address: h[Node].IP6},
		}}}
}

// apply builds node-1's model from services, as the plugin does. Only
// node-1 is modelled: in the one-node world every probe goes through it
// (the remote pod is on node-2 only as its EndpointSlice says).
func (x *explainLevel) apply(t *testing.T, services []Service) {
	t.Helper()
	// The address plan's service ranges, as the API server's default
	// ServiceCIDR names them.
	objs := &explain.Objects{ServiceCIDRs: []*networkingv1.ServiceCIDR{{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"},
		Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.96.0.0/16", "fd10:96::/112"}}}}}
	for _, s := range services {
		svc, slices := s.Objects(x.hosts)
		objs.Services = append(objs.Services, svc)
		objs.Slices = append(objs.Slices, slices...)
	}
	x.services = services
	x.model = explain.BuildNode(objs, explain.NodeFacts{Node: explainNode(x.hosts), Config: explainConfig(t, x.mode), Addrs: nodeLocal})
	// The model must see node-1 as the backend levels tell it to their
	// backends, or the comparison says nothing about them.
	if want := NodeInfo(x.mode); !reflect.DeepEqual(x.model.Node.Info, want) {
		t.Fatalf("explain's node info %+v, the backend levels' %+v", x.model.Node.Info, want)
	}
}

// query is how `kubectl kpo explain` asks about probe p: the Service whose
// address p dials and the kind of that address; ok is false when p dials
// no Service address explain answers for.
func (x *explainLevel) query(p Probe) (svc string, q explain.Query, ok bool) {
	dst := netip.MustParseAddrPort(p.To)
	addr, port := dst.Addr(), int32(dst.Port())
	src := x.source(p.From, addr)
	for _, s := range x.services {
		q := explain.Query{Addr: addr, Port: port, Source: src}
		svcPort := int32(80)
		if s.UDP {
			svcPort = 53
		}
		switch {
		case slices.Contains(s.ClusterIPs, addr.String()) && port == svcPort:
			q.Target = explain.ToClusterIP
		case slices.Contains(s.ExternalIPs, addr.String()) && port == svcPort:
			q.Target = explain.ToExternalIP
		case (slices.Contains(s.Ingress, addr.String()) || slices.Contains(s.ProxyIngress, addr.String())) && port == svcPort:
			q.Target = explain.ToLoadBalancerIP
		case s.NodePort != 0 && port == s.NodePort && IsNodeAddr(addr):
			q.Target = explain.ToNodePort
		default:
			continue
		}
		return s.Name, q, true
	}
	return "", explain.Query{}, false
}

// source is role r as explain's --from names it: a pod with its address
// and node, node-1 itself with its address of the family (which of its
// addresses the kernel sends from does not change the table's outcomes:
// its probes check no source), a client by its address.
func (x *explainLevel) source(r Role, dst netip.Addr) explain.Source {
	ip := x.hosts.Addr(r, dst)
	switch {
	case r == Node:
		return explain.Source{Kind: explain.FromNode, Name: NodeName, IP: ip, Node: NodeName}
	case slices.Contains(Pods, r):
		return explain.Source{Kind: explain.FromPod, Name: Namespace + "/" + string(r), IP: ip, Node: x.hosts[r].NodeName}
	}
	return explain.Source{Kind: explain.FromExternal, IP: ip}
}

// check explains p on node-1 and compares the outcome it implies with want.
func (x *explainLevel) check(t *testing.T, p Probe, want Outcome) {
	t.Helper()
	svc, q, ok := x.query(p)
	if !ok {
		// A port no Service has (the ClusterIP's wrong port) or an address
		// no Service holds any more (a deleted Service): explain answers
		// for a Service's port, and `kubectl kpo explain` refuses both
		// ("no port", "not found"). The backend levels check them.
		x.skipped++
		t.Skipf("%s dials no Service port: outside what explain answers", p.To)
	}
	e, err := x.model.ExplainService(Namespace, svc, "", q.Target, q)
	if err != nil {
		t.Fatalf("explain %s %+v: %v", svc, q, err)
	}
	x.checked++
	got := x.predict(p, &e)
	if err := got.matches(x.hosts, p, want); err != nil {
		t.Errorf("%s %s from %s to %s (%s of %s/%s)\n  predicted: %s\n  table (%s): %s\n  %v\n%s",
			x.mode, p.Network(), p.From, p.To, q.Target, Namespace, svc, got, x.mode, want, err, explain.Text(&e, false))
	}
}

// predicted is the outcome an explanation implies: Outcome, with whether
// each answering endpoint sees the node's address.
type predicted struct {
	Outcome
	masqueraded map[Role]bool
}

func (p predicted) String() string {
	if p.Answer != Served {
		return p.Answer.String()
	}
	var parts []string
	for _, r := range p.By {
		src := "source kept"
		if p.masqueraded[r] {
			src = "masqueraded"
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", r, src))
	}
	s := "served by " + strings.Join(parts, ", ")
	if p.Sticky {
		s += ", sticky"
	}
	return s
}

// predict turns e into the outcome it implies in the one-node world. Every
// endpoint sits behind node-1, so every reply comes back through the node
// that translated the request (no reply goes around it, as it can in
// test/conformance's two-node world); a connection is masqueraded when the
// route masquerades or it goes back to its sender (hairpin). Traffic the
// node's rules leave alone is refused when it is addressed to the node
// itself (nothing listens there) and dropped otherwise (the levels route
// the service and external ranges into a sink), as HopOf says.
func (x *explainLevel) predict(p Probe, e *explain.Explanation) predicted {
	switch e.Outcome {
	case explain.Refused:
		return predicted{Outcome: refused}
	case explain.Dropped:
		return predicted{Outcome: dropped}
	case explain.NotHandled:
		if IsNodeAddr(e.Query.Addr) {
			return predicted{Outcome: refused}
		}
		return predicted{Outcome: dropped}
	}
	out := predicted{Outcome: Outcome{Answer: Served, Sticky: e.Affinity != ""}, masqueraded: map[Role]bool{}}
	for _, ep := range e.Endpoints {
		r := x.hosts.RoleOf(netip.MustParseAddrPort(ep.Address).Addr())
		if r == "" {
			r = Role(ep.Address) // not a role of the world: reported as it is
		}
		out.By = append(out.By, r)
		out.masqueraded[r] = e.Masquerade || ep.Hairpin
	}
	return out
}

// matches says how p (the prediction for probe pr) differs from want: the
// answer, the endpoints (each of want.By and no other), the source each
// endpoint sees (checkSource: a hairpin connection is always masqueraded),
// and affinity.
func (p predicted) matches(h Hosts, pr Probe, want Outcome) error {
	if p.Answer != want.Answer {
		return fmt.Errorf("%s, the table says %s", p.Answer, want.Answer)
	}
	if want.Answer != Served {
		return nil
	}
	if !sameRoles(p.By, want.By) {
		return fmt.Errorf("endpoints %v, the table says %v", p.By, want.By)
	}
	if p.Sticky != want.Sticky {
		return fmt.Errorf("sticky %v, the table says %v", p.Sticky, want.Sticky)
	}
	own := h.Addr(pr.From, netip.MustParseAddrPort(pr.To).Addr())
	for _, r := range p.By {
		if err := checkSource(want.Source, pr.From, r, own, p.masqueraded[r]); err != nil {
			return fmt.Errorf("%s: %w", r, err)
		}
	}
	return nil
}

func sameRoles(a, b []Role) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
