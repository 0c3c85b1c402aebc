package model_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
)

// describe prints routes compactly: per source its endpoint set and count,
// +masq when masqueraded; then the verdict when the route from outside has
// no endpoint.
func describe(r *model.SourceRoutes) string {
	var parts []string
	for _, s := range model.Sources {
		rt := r.From(s)
		set := map[model.EndpointSet]string{model.ClusterSet: "C", model.ExternalSet: "X", model.ShortCircuitSet: "SC"}[rt.Set]
		m := ""
		if rt.Masquerade {
			m = "+masq"
		}
		parts = append(parts, fmt.Sprintf("%s%d%s", set, len(rt.Endpoints), m))
	}
	out := strings.Join(parts, " ")
	if len(r.Outside.Endpoints) == 0 {
		out += " " + r.Outside.Empty.String()
	}
	return out
}

// TestRoutes is kube-proxy's table of what each kind of traffic gets
// (pkg/proxy/nftables/proxier.go and iptables/proxier.go, syncProxyRules;
// ipvs/proxier.go for the IPVS dialect). Routes are written
// "pods node outside", each endpoint set (C cluster, X external, SC
// short-circuit), its size, and +masq when masqueraded.
func TestRoutes(t *testing.T) {
	ep := func(s string, local bool) model.Endpoint {
		ap := netip.MustParseAddrPort(s)
		return model.Endpoint{IP: ap.Addr(), Port: int32(ap.Port()), Local: local, Ready: true}
	}
	local, remote := ep("10.244.1.5:8080", true), ep("10.244.2.5:8080", false)
	plain := func() *model.ServicePort { return modeltest.ServicePort("ns", "a", "10.96.0.10", 80, local, remote) }
	nodePort := func() *model.ServicePort { sp := plain(); sp.NodePort = 30080; return sp }
	etpLocal := func(eps ...model.Endpoint) *model.ServicePort {
		sp := modeltest.LocalPolicy(nodePort(), eps...)
		return sp
	}
	noEndpoints := func() *model.ServicePort {
		sp := nodePort()
		sp.ClusterEndpoints, sp.ExternalEndpoints, sp.HasEndpoints = nil, nil, false
		return sp
	}
	itpLocalNone := func() *model.ServicePort {
		sp := nodePort()
		sp.InternalPolicyLocal, sp.ClusterEndpoints = true, nil // only remote endpoints
		return sp
	}
	detect := model.RouteOptions{PodsKnown: true}
	tests := []struct {
		name         string
		sp           *model.ServicePort
		opts         model.RouteOptions
		cluster, ext string
	}{
		{"ClusterIP with detect-local: all but pods masqueraded", plain(), detect, "C2 C2+masq C2+masq", ""},
		{"ClusterIP without detect-local: nothing masqueraded", plain(), model.RouteOptions{}, "C2 C2 C2", ""},
		{"masqueradeAll", plain(), model.RouteOptions{MasqueradeAll: true, PodsKnown: true}, "C2+masq C2+masq C2+masq", ""},
		{"NodePort, policy Cluster: masqueraded from everywhere", nodePort(), detect, "C2 C2+masq C2+masq", "X2+masq X2+masq X2+masq"},
		{"masqueradeAll leaves policy Cluster external traffic as it is", nodePort(), model.RouteOptions{MasqueradeAll: true}, "C2+masq C2+masq C2+masq", "X2+masq X2+masq X2+masq"},
		{"policy Local: pods and node short-circuit, the node masqueraded", etpLocal(local), detect, "C2 C2+masq C2+masq", "SC2 SC2+masq X1"},
		{"policy Local without detect-local: pods cannot be told apart", etpLocal(local), model.RouteOptions{}, "C2 C2 C2", "X1 SC2+masq X1"},
		{"policy Local, masqueradeAll: outside keeps its source", etpLocal(local), model.RouteOptions{MasqueradeAll: true, PodsKnown: true}, "C2+masq C2+masq C2+masq", "SC2 SC2+masq X1"},
		{"policy Local, no local endpoint: dropped from outside", etpLocal(), detect, "C2 C2+masq C2+masq", "SC2 SC2+masq X0 drop"},
		{"policy Local, IPVS dialect: no short-circuit", etpLocal(local), model.RouteOptions{PodsKnown: true, Dialect: model.DialectIPVS}, "C2 C2+masq C2+masq", "X1 X1 X1"},
		{"no endpoints anywhere: refused", noEndpoints(), detect, "C0 C0+masq C0+masq reject", "X0+masq X0+masq X0+masq reject"},
		{"internalTrafficPolicy Local without a local endpoint: dropped", itpLocalNone(), detect, "C0 C0+masq C0+masq drop", "X2+masq X2+masq X2+masq"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.sp.Routes(tt.opts)
			if got := describe(&r.Cluster); got != tt.cluster {
				t.Errorf("cluster routes %s, want %s", got, tt.cluster)
			}
			got := ""
			if tt.sp.HasExternal() {
				got = describe(&r.External)
			}
			if got != tt.ext {
				t.Errorf("external routes %s, want %s", got, tt.ext)
			}
		})
	}
}

// TestRoutesFirewall: the load-balancer source ranges keep other sources
// out before any endpoint choice; in the iptables dialect only while the
// service has endpoints (kube-proxy's usesFWChain), so that without them
// every source gets the no-endpoint verdict.
func TestRoutesFirewall(t *testing.T) {
	sp := modeltest.ServicePort("ns", "lb", "10.96.0.10", 80)
	sp.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.10")}
	sp.SourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.200/30")}
	for _, d := range []model.Dialect{model.DialectNFTables, model.DialectIPTables, model.DialectIPVS} {
		withEps := *sp
		withEps.HasEndpoints = true
		if r := withEps.Routes(model.RouteOptions{Dialect: d}); !slices.Equal(r.Firewall, sp.SourceRanges) {
			t.Errorf("dialect %d with endpoints: firewall %v", d, r.Firewall)
		}
		r := sp.Routes(model.RouteOptions{Dialect: d})
		if want := d != model.DialectIPTables; (r.Firewall != nil) != want {
			t.Errorf("dialect %d without endpoints: firewall %v, want one: %v", d, r.Firewall, want)
		}
	}
	noLB := modeltest.ServicePort("ns", "np", "10.96.0.11", 80)
	noLB.SourceRanges = sp.SourceRanges
	if r := noLB.Routes(model.RouteOptions{}); r.Firewall != nil {
		t.Errorf("firewall without load-balancer IPs: %v", r.Firewall)
	}
}

// TestRoutesShapes: the helpers backends translate with.
func TestRoutesShapes(t *testing.T) {
	sp := modeltest.LocalPolicy(modeltest.ServicePort("ns", "a", "10.96.0.10", 80), model.Endpoint{})
	sp.NodePort = 30080
	r := sp.Routes(model.RouteOptions{PodsKnown: true})
	if r.External.Uniform() || r.External.Diverted() != model.FromPods|model.FromNode ||
		r.External.Masqueraded() != model.FromNode {
		t.Errorf("policy Local: uniform %v, diverted %v, masqueraded %v", r.External.Uniform(), r.External.Diverted(), r.External.Masqueraded())
	}
	if !r.Cluster.Uniform() || r.Cluster.Diverted() != 0 || r.Cluster.Masqueraded() != model.FromNode|model.FromOutside {
		t.Errorf("cluster: uniform %v, diverted %v, masqueraded %v", r.Cluster.Uniform(), r.Cluster.Diverted(), r.Cluster.Masqueraded())
	}
	if (model.RouteOptions{}).ClusterMasquerade() != 0 || (model.RouteOptions{MasqueradeAll: true}).ClusterMasquerade() != model.AllSources {
		t.Error("ClusterMasquerade")
	}
}
