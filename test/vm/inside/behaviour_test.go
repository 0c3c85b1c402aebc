//go:build vmtest

package inside

import (
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/ipvs"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/test/behaviour"
)

// vmTiming: the VM's CPU is emulated (TCG) and shared, its dials are slow.
var vmTiming = behaviour.Timing{Settle: 15 * time.Second, Dial: dialTimeout}

// TestBehaviourTable runs the behaviour table (test/behaviour) against the
// IPVS backend, both families, on the VM's kernel; then it checks what IPVS
// holds for the table's last step (virtual servers, destinations, the
// addresses on kpo-ipvs0, the ip6tables companion) and the hairpin control:
// without the LOOP-BACK element, a pod reaching itself gets its own SYN
// from its own address (a martian, dropped) and the connection hangs.
func TestBehaviourTable(t *testing.T) {
	netns.Skip(t)
	fams := []model.Family{model.IPv4, model.IPv6}
	w, kb := behaviour.RunKernel(t, kpov1.ModeIPVS, vmTiming,
		func() (backend.Backend, error) { return ipvs.New(settings, ipvs.Config{}, fams) })
	e := &env{t: t, top: w.OneNode, fams: fams, b: kb.(*ipvs.Backend)}
	h := e.ipvsHandle()
	t.Run("kernel state", func(t *testing.T) {
		dummy := e.dummyAddrs()
		for _, a := range []string{"10.96.1.1", "fd10:96::101", "10.96.1.2", "203.0.113.2", "203.0.113.102", "fd10:96::201"} {
			if !slices.Contains(dummy, a) {
				t.Errorf("kpo-ipvs0 holds %v, want %s among them", dummy, a)
			}
		}
		// ipMode Proxy is not bound; a deleted Service's ClusterIP is gone.
		for _, a := range []string{"203.0.113.202", "10.96.3.2"} {
			if slices.Contains(dummy, a) {
				t.Errorf("kpo-ipvs0 holds %s", a)
			}
		}
		if v := e.vs(h, "10.96.1.8", 53); v == nil || v.Protocol != syscall.IPPROTO_UDP {
			t.Errorf("virtual server 10.96.1.8:53: %+v, want UDP", v)
		}
		// Policy Local: the node port has the local endpoint only, the
		// ClusterIP every endpoint.
		if ds := e.dests(h, netns.NodeIP4, 30203); len(ds) != 1 {
			t.Errorf("policy Local NodePort: destinations %v, want the local endpoint only", ds)
		}
		for _, vip := range []string{"10.96.2.3", "fd10:96::101"} {
			if ds := e.dests(h, vip, 80); len(ds) != 2 {
				t.Errorf("%s: destinations %v, want 2", vip, ds)
			}
		}
		// No kubelet hint in the VM: the flavour kube-proxy's image would pick, nft.
		nat := e.top.Node.MustRun(t, "ip6tables-nft", "-t", "nat", "-S")
		if !strings.Contains(nat, "KPO6-CLUSTER-IP") || !strings.Contains(nat, "KPO-IPVS-SERVICES") {
			t.Errorf("ip6tables nat table without kpo's chains:\n%s", nat)
		}
	})
	t.Run("hairpin control", func(t *testing.T) {
		e.top.Node.MustRun(t, "ipset", "flush", ipvs.SetName(model.IPv4, "LOOP-BACK"))
		mustFail(t, w.Pod(behaviour.PodA).NS, "tcp4", "", "10.96.1.7:80", netns.ErrTimeout)
	})
}
