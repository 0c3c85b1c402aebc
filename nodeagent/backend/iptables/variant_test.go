package iptables

import (
	"strings"
	"testing"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/model"
)

// TestDetectVariant follows kube-proxy's image (iptables-wrappers): kubelet's
// chains say which flavour the node uses, nft first, nft by default, and
// the detection itself creates no legacy table.
func TestDetectVariant(t *testing.T) {
	netns.Skip(t)
	for _, c := range []struct {
		name  string
		setup [][]string // commands run in the namespace first
		want  Variant
	}{
		{"nothing: nft", nil, VariantNFT},
		{"hint in legacy", [][]string{{"iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"}}, VariantLegacy},
		{"IPv6 canary in legacy", [][]string{{"ip6tables-legacy", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY"}}, VariantLegacy},
		{"hint in nft", [][]string{{"iptables-nft", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"}}, VariantNFT},
		{"IPv6 hint in nft, other rules in legacy", [][]string{
			{"ip6tables-nft", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"},
			{"iptables-legacy", "-t", "nat", "-N", "KUBE-SERVICES"},
		}, VariantNFT},
		{"both: nft wins, as the wrapper checks it first", [][]string{
			{"iptables-nft", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"},
			{"iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"},
		}, VariantNFT},
		{"kube-proxy's chains alone are no hint", [][]string{{"iptables-legacy", "-t", "nat", "-N", "KUBE-SERVICES"}}, VariantNFT},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns := netns.New(t, "detect")
			for _, cmd := range c.setup {
				ns.MustRun(t, cmd[0], cmd[1:]...)
			}
			legacyBefore := ns.MustRun(t, "cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names")
			var got Variant
			_ = ns.Do(func() error { got = DetectVariant(); return nil })
			if got != c.want {
				t.Errorf("DetectVariant = %q, want %q", got, c.want)
			}
			if after := ns.MustRun(t, "cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"); after != legacyBefore {
				t.Errorf("detection created legacy tables: %q, before %q", after, legacyBefore)
			}
		})
	}
}

// TestBackendFollowsHostVariant: without WithVariant, the backend's rules go
// to the flavour kubelet's hint names, and only there.
func TestBackendFollowsHostVariant(t *testing.T) {
	netns.Skip(t)
	for _, v := range []Variant{VariantLegacy, VariantNFT} {
		t.Run(string(v), func(t *testing.T) {
			ns := netns.New(t, "follow")
			ns.MustRun(t, "iptables-"+string(v), "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
			b, err := New(testSettings, []model.Family{model.IPv4})
			if err != nil {
				t.Fatal(err)
			}
			realBackend{b, ns}.sync(t, snapOf(svc("a", "10.96.0.10", 80, ep("10.244.1.10:8080", false))), true)
			other := map[Variant]Variant{VariantLegacy: VariantNFT, VariantNFT: VariantLegacy}[v]
			if out := ns.MustRun(t, "iptables-"+string(v)+"-save", "-t", "nat"); !strings.Contains(out, ":"+chainServices) {
				t.Errorf("no rules in iptables-%s:\n%s", v, out)
			}
			if out, _ := ns.Run("iptables-" + string(other) + "-save"); strings.Contains(out, "KPO-") {
				t.Errorf("rules in iptables-%s too:\n%s", other, out)
			}
			if got := b.kernel.(*execKernel).Variant(); got != v {
				t.Errorf("kernel runs %q", got)
			}
		})
	}
}
