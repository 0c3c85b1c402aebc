package conformance

import (
	"os"
	"testing"

	"k8s.io/utils/ptr"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// TestConformance runs the hand-written table against upstream kube-proxy and
// kpo, in each mode, with the default settings and with the settings variants.
func TestConformance(t *testing.T) {
	s := newSuite(t)
	for _, mode := range modes() {
		t.Run(string(mode), func(t *testing.T) {
			record(t, s.Run(t, defaultSettings(mode), s.World.table))
		})
	}
}

// quickVariants are the variants `make test` runs; $KPO_CONFORMANCE_FULL=1
// (make conformance) runs them all.
var quickVariants = map[string]bool{"masqueradeAll": true, "nodePortAddresses=node-1's /32": true,
	"detectLocalMode=InterfaceNamePrefix": true}

// TestConformanceSettings runs a few cases with each settings variant.
func TestConformanceSettings(t *testing.T) {
	s := newSuite(t)
	full := os.Getenv("KPO_CONFORMANCE_FULL") == "1"
	for _, mode := range modes() {
		for _, v := range variants(mode) {
			if !full && !quickVariants[v.Name] {
				continue
			}
			t.Run(string(mode)+"/"+v.Name, func(t *testing.T) {
				record(t, s.Run(t, v, s.World.settingsTable))
			})
		}
	}
}

func variants(mode kpov1.Mode) []Settings {
	with := func(name string, f func(*Settings)) Settings {
		s := defaultSettings(mode)
		s.Name = name
		f(&s)
		return s
	}
	out := []Settings{
		with("masqueradeAll", func(s *Settings) { s.MasqueradeAll = true }),
		with("nodePortAddresses=primary", func(s *Settings) { s.NodePortAddresses = []string{"primary"} }),
		with("nodePortAddresses=node-1's /32", func(s *Settings) { s.NodePortAddresses = []string{"198.51.100.1/32", "2001:db8:1::1/128"} }),
		with("nodePortAddresses=node network", func(s *Settings) { s.NodePortAddresses = []string{"198.51.100.0/24"} }),
		with("nodePortAddresses matching nothing", func(s *Settings) { s.NodePortAddresses = []string{"203.0.113.0/24"} }),
		with("nodePortAddresses=localhost", func(s *Settings) { s.NodePortAddresses = []string{"localhost"} }),
		with("nodePortAddresses=all", func(s *Settings) { s.NodePortAddresses = []string{"all"} }),
		with("detectLocalMode=NodeCIDR", func(s *Settings) { s.DetectLocalMode = kpov1.DetectLocalNodeCIDR }),
		// Pods hang off veths named vp0, vp1, … on their node (test/testnet).
		with("detectLocalMode=InterfaceNamePrefix", func(s *Settings) {
			s.DetectLocalMode, s.DetectLocal.InterfaceNamePrefix = kpov1.DetectLocalInterfaceNamePrefix, "vp"
		}),
		// No such bridge here: nothing is told to be a pod.
		with("detectLocalMode=BridgeInterface", func(s *Settings) {
			s.DetectLocalMode, s.DetectLocal.BridgeInterface = kpov1.DetectLocalBridgeInterface, "cbr0"
		}),
	}
	if mode == kpov1.ModeIPTables {
		out = append(out, with("localhostNodePorts=false", func(s *Settings) { s.LocalhostNodePorts = ptr.To(false) }))
	}
	return out
}

// settingsTable is the smaller table the settings variants run.
func (w *World) settingsTable() []*Case {
	a := &allocator{}
	return []*Case{
		w.Build(a, "clusterIP", SvcSpec{Name: "basic", Families: "46", Endpoints: ready(n1p0, n2p0)}),
		w.Build(a, "NodePort", SvcSpec{Name: "np", Type: nodePort, Families: "46", Ports: []PortSpec{tcp80, udp53}, Endpoints: ready(n1p0, n2p0)}),
		w.Build(a, "NodePort, eTP Local", SvcSpec{Name: "np-local", Type: nodePort, ExternalLocal: true, Endpoints: ready(n2p0)}),
		w.Build(a, "LoadBalancer, eTP Local", SvcSpec{Name: "lb-local", Type: loadBalancer, LBIPs: 1, ExternalIPs: 1,
			ExternalLocal: true, Endpoints: ready(n1p1)}),
		w.Build(a, "hairpin", SvcSpec{Name: "hairpin", Endpoints: ready(n1p0)}),
	}
}
