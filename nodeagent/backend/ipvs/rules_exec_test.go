package ipvs

import (
	"maps"
	"slices"
	"testing"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/model"
)

// TestOwnedRealIPSet reads the VIP-PORTS record back from the kernel (ip_set
// works on this machine, IPVS does not): what Apply wrote is what Owned
// finds, and a namespace that never ran the ipvs mode has none and no
// error, so that another mode's agent cleaning up does not fail there.
func TestOwnedRealIPSet(t *testing.T) {
	netns.Skip(t)
	ns := netns.New(t, "owned")
	fams := []model.Family{model.IPv4, model.IPv6}
	r := newCompanionRules(testSettings, nil, nil)
	var none map[VSKey]bool
	if err := ns.Do(func() error {
		var err error
		none, err = r.Owned(fams)
		return err
	}); err != nil || len(none) != 0 {
		t.Fatalf("fresh namespace: %v, %v", none, err)
	}
	rs := &RuleSet{Families: fams, Sets: map[string]map[string]bool{}}
	for _, f := range fams {
		for set := range setTypes {
			rs.Sets[SetName(f, set)] = map[string]bool{}
		}
	}
	rs.Sets["KPO-VIP-PORTS"]["10.96.0.10,tcp:80"] = true
	rs.Sets["KPO-VIP-PORTS"]["198.51.100.1,udp:30053"] = true
	rs.Sets["KPO6-VIP-PORTS"]["fd10:96::10,sctp:80"] = true
	rs.Sets["KPO-HEALTH-CHECK"]["32000"] = true
	var got map[VSKey]bool
	if err := ns.Do(func() error {
		// The sets alone: the chains need iptables' set match, which is
		// the VM tests' part.
		if err := r.ipset.Restore(ipsetRestore(rs, nil)); err != nil {
			return err
		}
		var err error
		got, err = r.Owned(fams)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	want := []VSKey{
		{Addr: addr("10.96.0.10"), Protocol: protoTCP, Port: 80},
		{Addr: addr("198.51.100.1"), Protocol: protoUDP, Port: 30053},
		{Addr: addr("fd10:96::10"), Protocol: protoSCTP, Port: 80},
	}
	if keys := slices.SortedFunc(maps.Keys(got), func(a, b VSKey) int { return a.Addr.Compare(b.Addr) }); !slices.Equal(keys, want) {
		t.Errorf("Owned = %v, want %v", keys, want)
	}
}
