package arbiter

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"kpo.dev/kpo/nodeagent/model"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// port is a test ServicePort with its Service's age.
type port struct {
	sp  *model.ServicePort
	age time.Duration // created at t0+age
}

// svc is ns/name's TCP port "http" on clusterIP:80, created at t0+age; opts
// add external claims ("ext=", "lb=", "np=", "udp", "port=").
func svc(name, clusterIP string, age time.Duration, opts ...string) port {
	ns, n, _ := strings.Cut(name, "/")
	ip := netip.MustParseAddr(clusterIP)
	sp := &model.ServicePort{
		Key: model.ServicePortKey{ServicePortName: model.ServicePortName{Namespace: ns, Name: n, Port: "http",
			Protocol: corev1.ProtocolTCP}, Family: model.FamilyOf(ip)},
		Protocol: corev1.ProtocolTCP, ClusterIP: ip, Port: 80,
	}
	for _, o := range opts {
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "ext":
			sp.ExternalIPs = append(sp.ExternalIPs, netip.MustParseAddr(v))
		case "lb":
			sp.LoadBalancerIPs = append(sp.LoadBalancerIPs, netip.MustParseAddr(v))
		case "np":
			var p int32
			_, _ = fmt.Sscan(v, &p)
			sp.NodePort = p
		case "port":
			_, _ = fmt.Sscan(v, &sp.Port)
		case "udp":
			sp.Protocol, sp.Key.Protocol = corev1.ProtocolUDP, corev1.ProtocolUDP
		}
	}
	return port{sp: sp, age: age}
}

// outcome lists the losses as "loser: source key -> winner (why)".
func outcome(a *Arbiter) []string {
	var out []string
	a.Losses(func(k model.ServicePortKey, l *Loss) {
		cs := l.Lost
		if l.Dropped != nil {
			cs = []Conflict{*l.Dropped}
		}
		for _, c := range cs {
			verdict := "loses"
			if c.Source == ClusterIP {
				verdict = "dropped"
			}
			out = append(out, fmt.Sprintf("%s/%s %s %s %s to %s/%s", k.Namespace, k.Name, verdict, c.Source, c.Key, c.Winner.Namespace, c.Winner.Name))
		}
	})
	slices.Sort(out)
	return out
}

func TestArbitration(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ports []port
		want  []string
	}{
		{"no conflict", []port{svc("ns/a", "10.96.0.1", 0, "ext=203.0.113.1"), svc("ns/b", "10.96.0.2", 1, "ext=203.0.113.2")}, nil},
		{"same externalIP and port: the older Service wins",
			[]port{svc("ns/b", "10.96.0.2", 0, "ext=203.0.113.1"), svc("ns/a", "10.96.0.1", time.Second, "ext=203.0.113.1")},
			[]string{"ns/a loses externalIP 203.0.113.1:80/TCP to ns/b"}},
		{"same age: namespace/name decides",
			[]port{svc("ns/b", "10.96.0.2", 0, "ext=203.0.113.1"), svc("ns/a", "10.96.0.1", 0, "ext=203.0.113.1"),
				svc("aa/z", "10.96.0.3", 0, "ext=203.0.113.1")},
			[]string{"ns/a loses externalIP 203.0.113.1:80/TCP to aa/z", "ns/b loses externalIP 203.0.113.1:80/TCP to aa/z"}},
		{"same externalIP, other port or protocol: no conflict",
			[]port{svc("ns/a", "10.96.0.1", 0, "ext=203.0.113.1"), svc("ns/b", "10.96.0.2", 1, "ext=203.0.113.1", "port=81"),
				svc("ns/c", "10.96.0.3", 2, "ext=203.0.113.1", "udp")}, nil},
		{"externalIP equal to another Service's clusterIP: the clusterIP wins, even over an older Service",
			[]port{svc("ns/old", "10.96.0.1", 0, "ext=10.96.0.2"), svc("ns/new", "10.96.0.2", time.Hour)},
			[]string{"ns/old loses externalIP 10.96.0.2:80/TCP to ns/new"}},
		{"externalIP equal to the Service's own clusterIP",
			[]port{svc("ns/a", "10.96.0.1", 0, "ext=10.96.0.1", "ext=203.0.113.1")},
			[]string{"ns/a loses externalIP 10.96.0.1:80/TCP to ns/a"}},
		{"load-balancer IP over externalIP, even a newer one",
			[]port{svc("ns/old", "10.96.0.1", 0, "ext=203.0.113.1"), svc("ns/new", "10.96.0.2", time.Hour, "lb=203.0.113.1")},
			[]string{"ns/old loses externalIP 203.0.113.1:80/TCP to ns/new"}},
		{"clusterIP over load-balancer IP",
			[]port{svc("ns/old", "10.96.0.1", 0, "lb=10.96.0.2"), svc("ns/new", "10.96.0.2", time.Hour)},
			[]string{"ns/old loses load-balancer IP 10.96.0.2:80/TCP to ns/new"}},
		{"two load-balancer IPs: the older wins",
			[]port{svc("ns/a", "10.96.0.1", time.Minute, "lb=203.0.113.1"), svc("ns/b", "10.96.0.2", 0, "lb=203.0.113.1")},
			[]string{"ns/a loses load-balancer IP 203.0.113.1:80/TCP to ns/b"}},
		{"two Services with one clusterIP and port: the newer is dropped",
			[]port{svc("ns/a", "10.96.0.1", 0), svc("ns/b", "10.96.0.1", time.Second, "np=30080")},
			[]string{"ns/b dropped clusterIP 10.96.0.1:80/TCP to ns/a"}},
		{"NodePort of one protocol and family: the older wins",
			[]port{svc("ns/a", "10.96.0.1", time.Second, "np=30080"), svc("ns/b", "10.96.0.2", 0, "np=30080"),
				svc("ns/udp", "10.96.0.3", 0, "np=30080", "udp"), svc("ns/v6", "fd10:96::3", 0, "np=30080")},
			[]string{"ns/a loses nodePort 30080/TCP to ns/b"}},
		{"a dropped port's other claims count for nothing",
			[]port{svc("ns/a", "10.96.0.1", 0), svc("ns/b", "10.96.0.1", time.Second, "ext=203.0.113.1", "np=30080"),
				svc("ns/c", "10.96.0.3", time.Minute, "ext=203.0.113.1", "np=30080")},
			[]string{"ns/b dropped clusterIP 10.96.0.1:80/TCP to ns/a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := New()
			for _, p := range tc.ports {
				a.Set(p.sp, t0.Add(p.age))
			}
			a.Resolve()
			if got := outcome(a); !slices.Equal(got, tc.want) {
				t.Errorf("outcome\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
			if again := a.Resolve(); again != nil {
				t.Errorf("a second Resolve without changes affected %v", again)
			}
		})
	}
}

func TestLossApplyAndRejections(t *testing.T) {
	a := New()
	winner := svc("ns/a", "10.96.0.1", 0, "ext=203.0.113.1", "np=30080")
	loser := svc("ns/b", "10.96.0.2", time.Second, "ext=203.0.113.1", "ext=203.0.113.2", "lb=10.96.0.1", "np=30080")
	a.Set(winner.sp, t0)
	a.Set(loser.sp, t0.Add(loser.age))
	a.Resolve()
	l := a.Loss(loser.sp.Key)
	got := l.Apply(loser.sp)
	if !slices.Equal(got.ExternalIPs, []netip.Addr{netip.MustParseAddr("203.0.113.2")}) || got.LoadBalancerIPs != nil || got.NodePort != 0 {
		t.Errorf("the loser keeps %+v", got)
	}
	if a.Loss(winner.sp.Key).Apply(winner.sp) != winner.sp {
		t.Error("a winner's port must be kept as it is (same pointer)")
	}
	var msgs []string
	for _, r := range l.Rejections(loser.sp.Key) {
		if r.Kind != model.KindService || r.Namespace != "ns" || r.Name != "b" {
			t.Errorf("rejection names %s %s/%s", r.Kind, r.Namespace, r.Name)
		}
		msgs = append(msgs, r.Reason+": "+r.Message)
	}
	want := []string{
		"LoadBalancerIPConflict: load-balancer IP 10.96.0.1:80/TCP (IPv4) is also the clusterIP of ns/a, which wins (clusterIPs win over load-balancer IPs): not programmed",
		"ExternalIPConflict: externalIP 203.0.113.1:80/TCP (IPv4) is also the externalIP of ns/a, which wins (its Service is older): not programmed",
		"NodePortConflict: nodePort 30080/TCP (IPv4) is also the nodePort of ns/a, which wins (its Service is older): not programmed",
	}
	if !slices.Equal(msgs, want) {
		t.Errorf("rejections\n  %s\nwant\n  %s", strings.Join(msgs, "\n  "), strings.Join(want, "\n  "))
	}
}

// When the winner goes, the loser gets its claim back; when a dropped port
// comes back to life, its other claims take effect again.
func TestIncrementalOutcome(t *testing.T) {
	a := New()
	old := svc("ns/old", "10.96.0.1", 0, "ext=203.0.113.1")
	newer := svc("ns/newer", "10.96.0.2", time.Second, "ext=203.0.113.1")
	a.Set(old.sp, t0)
	a.Set(newer.sp, t0.Add(time.Second))
	if got := a.Resolve(); !slices.Equal(got, []model.ServicePortKey{newer.sp.Key}) {
		t.Errorf("affected %v, want the loser", got)
	}
	a.Remove(old.sp.Key)
	if got := a.Resolve(); !slices.Equal(got, []model.ServicePortKey{newer.sp.Key}) || a.Loss(newer.sp.Key) != nil {
		t.Errorf("after the winner went: affected %v, loss %+v", got, a.Loss(newer.sp.Key))
	}
	// An endpoint change (claims unchanged) touches nothing.
	changed := *newer.sp
	changed.ClusterEndpoints = []model.Endpoint{{IP: netip.MustParseAddr("10.244.1.5"), Port: 8080, Ready: true}}
	a.Set(&changed, t0.Add(time.Second))
	if len(a.touched) != 0 {
		t.Errorf("an endpoint change touched %v", a.touched)
	}
}

// Incremental resolution gives the outcome of resolving everything at once,
// whatever the order of changes: random Sets and Removes over a few
// conflicting addresses, checked against a fresh arbiter after each step.
func TestIncrementalMatchesFromScratch(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(s ...string) string { return s[rng.IntN(len(s))] }
	live := map[model.ServicePortKey]port{}
	a := New()
	for step := range 3000 {
		name := fmt.Sprintf("ns/s%d", rng.IntN(8))
		p := svc(name, pick("10.96.0.1", "10.96.0.2", "10.96.0.3"), time.Duration(rng.IntN(3))*time.Second,
			pick("ext=10.96.0.1", "ext=203.0.113.1", "ext=203.0.113.2", "lb=203.0.113.1", "np=0"),
			pick("lb=10.96.0.2", "lb=203.0.113.2", "ext=203.0.113.1", "np=30080", "np=30081"), pick("port=80", "port=81"))
		if rng.IntN(4) == 0 {
			a.Remove(p.sp.Key)
			delete(live, p.sp.Key)
		} else {
			a.Set(p.sp, t0.Add(p.age))
			live[p.sp.Key] = p
		}
		a.Resolve()
		fresh := New()
		for _, q := range live {
			fresh.Set(q.sp, t0.Add(q.age))
		}
		fresh.Resolve()
		if !reflect.DeepEqual(a.losses, fresh.losses) {
			t.Fatalf("step %d: incremental\n  %s\nfrom scratch\n  %s", step,
				strings.Join(outcome(a), "\n  "), strings.Join(outcome(fresh), "\n  "))
		}
	}
}
