package migrate

import (
	"context"
	"strings"
	"testing"
)

func TestRestoreScript(t *testing.T) {
	dump := `*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ABC - [0:0]
:KUBE-SEP-DEF - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KPO-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -j KPO-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-ABC
-A KUBE-SVC-ABC -j KUBE-SEP-DEF
COMMIT
`
	got := restoreScript("nat", dump)
	for _, want := range []string{
		"-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
		"-D POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
		"-F KUBE-SVC-ABC\n", "-X KUBE-SEP-DEF\n", "-X KUBE-SERVICES\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("script lacks %q:\n%s", want, got)
		}
	}
	for _, keep := range []string{"KPO-SERVICES", "KUBE-KUBELET-CANARY", "-D KUBE-SERVICES"} {
		if strings.Contains(got, keep) {
			t.Errorf("script touches %q:\n%s", keep, got)
		}
	}
	if restoreScript("nat", "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n") != "" {
		t.Error("a table without kube-proxy chains produced a script")
	}
}

// fakeHost records what Remove does.
type fakeHost struct {
	tables   map[string]bool // "ip kube-proxy"
	dumps    map[string]string
	restores map[string]string
	links    map[string]bool
}

func (h *fakeHost) HasTable(_ context.Context, family, name string) bool {
	return h.tables[family+" "+name]
}
func (h *fakeHost) DeleteTable(_ context.Context, family, name string) error {
	delete(h.tables, family+" "+name)
	return nil
}
func (h *fakeHost) IPTablesTools() []string { return []string{"iptables-nft", "ip6tables-nft"} }
func (h *fakeHost) Save(_ context.Context, tool string) (string, error) {
	return h.dumps[tool], nil
}
func (h *fakeHost) Restore(_ context.Context, tool, script string) error {
	h.restores[tool] = script
	return nil
}
func (h *fakeHost) DeleteLink(name string) error { delete(h.links, name); return nil }

// TestRemove: kube-proxy's nft tables and kube-ipvs0 go, its chains of each
// tool go in one restore, other tables and links stay, and a tool without
// kube-proxy's chains gets no restore.
func TestRemove(t *testing.T) {
	h := &fakeHost{
		tables:   map[string]bool{"ip kube-proxy": true, "ip6 kube-proxy": true, "ip kpo": true},
		dumps:    map[string]string{"iptables-nft": "*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n", "ip6tables-nft": "*nat\n:KPO-SERVICES - [0:0]\nCOMMIT\n"},
		restores: map[string]string{},
		links:    map[string]bool{"kube-ipvs0": true, "kpo-ipvs0": true},
	}
	if err := Remove(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if len(h.tables) != 1 || !h.tables["ip kpo"] || len(h.links) != 1 || !h.links["kpo-ipvs0"] {
		t.Errorf("tables %v, links %v", h.tables, h.links)
	}
	if got := h.restores["iptables-nft"]; got != "*nat\n-D PREROUTING -j KUBE-SERVICES\n-F KUBE-SERVICES\n-X KUBE-SERVICES\nCOMMIT\n" {
		t.Errorf("iptables-nft restore:\n%s", got)
	}
	if _, ok := h.restores["ip6tables-nft"]; ok {
		t.Error("a restore for a tool without kube-proxy's chains")
	}
}
