package tracker

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"kpo.dev/kpo/nodeagent/model"
)

var created = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// svcAt is svc created at created+age, with externalIPs.
func svcAt(name, ip string, age time.Duration, externalIPs ...string) *corev1.Service {
	s := svc(name, ip)
	s.CreationTimestamp = metav1.NewTime(created.Add(age))
	s.Spec.ExternalIPs = externalIPs
	return s
}

func names(rs []model.Rejection) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Kind+" "+r.Name+" "+r.Reason)
	}
	return out
}

// Two Services claim one externalIP and port: the newer loses it in the
// snapshot, is reported once, and gets it back when the older one goes.
func TestConflictLoserAndRecovery(t *testing.T) {
	tr := New(model.NodeContext{Name: "n"}, nil)
	tr.SetService(svcAt("a", "10.96.0.1", 0, "203.0.113.1"))
	tr.SetService(svcAt("b", "10.96.0.2", time.Second, "203.0.113.1", "203.0.113.2"))
	snap1, ch := tr.Snapshot()
	b := snap1.Services[key("b")]
	if !slices.Equal(b.ExternalIPs, []netip.Addr{netip.MustParseAddr("203.0.113.2")}) {
		t.Errorf("the loser holds %v, want only its uncontested externalIP", b.ExternalIPs)
	}
	if len(snap1.Services[key("a")].ExternalIPs) != 1 {
		t.Error("the winner lost its externalIP")
	}
	if got := names(ch.Rejected); !slices.Equal(got, []string{"Service b ExternalIPConflict"}) {
		t.Errorf("rejected %v", got)
	}
	if got := names(tr.Rejections()); !slices.Equal(got, []string{"Service b ExternalIPConflict"}) {
		t.Errorf("Rejections() %v", got)
	}

	// Another change to the loser: reported again only if the rejection changes.
	tr.SetService(svcAt("b", "10.96.0.2", time.Second, "203.0.113.1", "203.0.113.2"))
	snap2, ch := tr.Snapshot()
	if len(ch.Rejected) != 0 || len(ch.Accepted) != 0 || len(ch.Changed) != 0 {
		t.Errorf("an update that changes nothing reported %+v", ch)
	}
	if snap2.Services[key("b")] != b {
		t.Error("the loser's port was replaced although nothing changed")
	}

	tr.DeleteService("ns", "a")
	snap3, ch := tr.Snapshot()
	b3 := snap3.Services[key("b")]
	if len(b3.ExternalIPs) != 2 {
		t.Errorf("after the winner went, the loser holds %v", b3.ExternalIPs)
	}
	if !slices.Contains(ch.Changed, b3) || ch.Previous[key("b")] != b {
		t.Errorf("the loser's recovery is not a change of it: %+v", ch)
	}
	if got := names(ch.Accepted); !slices.Equal(got, []string{"Service b ExternalIPConflict"}) || len(tr.Rejections()) != 0 {
		t.Errorf("accepted %v, rejections %v", got, tr.Rejections())
	}
}

// A Service whose clusterIP and port another, older Service has is not in
// the snapshot until that one goes.
func TestClusterIPConflictDropsThePort(t *testing.T) {
	tr := New(model.NodeContext{Name: "n"}, nil)
	tr.SetService(svcAt("a", "10.96.0.1", 0))
	tr.SetService(svcAt("b", "10.96.0.1", time.Second))
	snap, ch := tr.Snapshot()
	if _, ok := snap.Services[key("b")]; ok || len(snap.Services) != 1 {
		t.Errorf("snapshot %v, want only a", snap.Services)
	}
	if got := names(ch.Rejected); !slices.Equal(got, []string{"Service b ClusterIPConflict"}) {
		t.Errorf("rejected %v", got)
	}
	tr.DeleteService("ns", "a")
	snap, ch = tr.Snapshot()
	if snap.Services[key("b")] == nil || len(ch.Changed) != 1 || len(ch.Removed) != 1 {
		t.Errorf("after a went: snapshot %v, change %+v", snap.Services, ch)
	}
	if got, ok := ch.Previous[key("b")]; !ok || got != nil {
		t.Errorf("b must come as new (previous nil): %v", got)
	}
}

// A bad EndpointSlice port is reported when it appears and when it goes, not
// on every snapshot; the Service's other endpoints are programmed.
func TestInvalidSliceReportedOnce(t *testing.T) {
	tr := New(model.NodeContext{Name: "n"}, nil)
	tr.SetService(svc("a", "10.96.0.1"))
	good := eps("a", time.Now(), "10.244.1.5")
	bad := eps("a", time.Now(), "10.244.1.6")
	bad.Name = "a-bad"
	bad.Ports[0].Port = ptr.To[int32](70000)
	tr.SetEndpointSlice(good)
	tr.SetEndpointSlice(bad)
	snap, ch := tr.Snapshot()
	if got := names(ch.Rejected); !slices.Equal(got, []string{"EndpointSlice a-bad InvalidEndpointPort"}) {
		t.Errorf("rejected %v", got)
	}
	if got := snap.Services[key("a")].ClusterEndpoints; len(got) != 1 || got[0].IP.String() != "10.244.1.5" {
		t.Errorf("endpoints %v, want the good slice's", got)
	}
	// An endpoint change elsewhere in the Service: no new report.
	tr.SetEndpointSlice(eps("a", time.Now(), "10.244.1.5", "10.244.1.7"))
	if _, ch = tr.Snapshot(); len(ch.Rejected) != 0 || len(ch.Accepted) != 0 {
		t.Errorf("reported again: %+v", ch)
	}
	// Fixed.
	bad.Ports[0].Port = ptr.To[int32](8080)
	tr.SetEndpointSlice(bad)
	snap, ch = tr.Snapshot()
	if got := names(ch.Accepted); !slices.Equal(got, []string{"EndpointSlice a-bad InvalidEndpointPort"}) {
		t.Errorf("accepted %v", got)
	}
	if got := snap.Services[key("a")].ClusterEndpoints; len(got) != 3 {
		t.Errorf("endpoints %v, want all three", got)
	}
	// A deleted Service takes its rejections with it.
	bad.Ports[0].Port = ptr.To[int32](-1)
	tr.SetEndpointSlice(bad)
	tr.Snapshot()
	tr.DeleteService("ns", "a")
	if _, ch = tr.Snapshot(); len(ch.Accepted) != 1 || len(tr.Rejections()) != 0 {
		t.Errorf("after deletion: accepted %v, rejections %v", ch.Accepted, tr.Rejections())
	}
}
