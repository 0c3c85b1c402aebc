package migrate

import (
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
