package iptables

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
)

// BenchmarkRender is the pure rule-generation cost of one service port.
func BenchmarkRender(b *testing.B) {
	for _, eps := range []int{2, 50} {
		b.Run(fmt.Sprintf("eps=%d", eps), func(b *testing.B) {
			r := &renderer{fam: model.IPv4, settings: testSettings, local: []string{"-s 10.244.0.0/16"}}
			s := bigSnapshot(1, eps)
			var sp *model.ServicePort
			for _, v := range s.Services {
				sp = v
			}
			b.ReportAllocs()
			for b.Loop() {
				r.render(sp)
			}
		})
	}
}

// BenchmarkFakeFullSync is a full sync of 10k services into the Fake: the
// backend's own cost (render + restore text), without iptables.
func BenchmarkFakeFullSync10k(b *testing.B) {
	s := bigSnapshot(10000, 2)
	for b.Loop() {
		be, _ := New(testSettings, []model.Family{model.IPv4}, WithKernel(nopKernel{}))
		if _, err := backendtest.Sync(context.Background(), be, s, true); err != nil {
			b.Fatal(err)
		}
	}
}

type nopKernel struct{}

func (nopKernel) ListRules(model.Family, string) ([]string, error) { return nil, nil }
func (nopKernel) Restore(model.Family, []byte) error               { return nil }
func (nopKernel) RandomFully(model.Family) bool                    { return true }
func (nopKernel) Check(model.Family) error                         { return nil }
func (nopKernel) Sysctls() Sysctls                                 { return FakeSysctls{} }

func benchVariants(b *testing.B, fn func(b *testing.B, v Variant)) {
	netns.Skip(b)
	for _, v := range []Variant{VariantNFT, VariantLegacy} {
		b.Run(string(v), func(b *testing.B) { fn(b, v) })
	}
}

// BenchmarkColdSync is a first (full) sync into empty tables.
func BenchmarkColdSync(b *testing.B) {
	for _, size := range []struct {
		n, eps int
		local  bool
	}{{1000, 2, false}, {10000, 2, false}, {1000, 50, false}, {10000, 2, true}} {
		s := bigSnapshot(size.n, size.eps)
		name := fmt.Sprintf("%dx%d", size.n, size.eps)
		if size.local {
			// Worst case for the hairpin checks: every endpoint on this node
			// (bigSnapshot's are remote, as nearly all are on a large cluster).
			s = localEndpoints(s)
			name += "local"
		}
		b.Run(name, func(b *testing.B) {
			benchVariants(b, func(b *testing.B, v Variant) {
				ns := netns.New(b, "bench")
				for b.Loop() {
					b.StopTimer()
					be, err := New(testSettings, nil, WithVariant(v))
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					backendtest.ColdSync(b, ns.Do, be, s)
				}
			})
		})
	}
}

// BenchmarkPartialSync10k changes one service's endpoints among 10k services.
func BenchmarkPartialSync10k(b *testing.B) {
	s := bigSnapshot(10000, 2)
	var key model.ServicePortKey
	for k := range s.Services {
		key = k
		break
	}
	orig := s.Services[key]
	alt := *orig
	alt.ClusterEndpoints = []model.Endpoint{ep("10.244.250.1:8080", false)}
	alt.ExternalEndpoints = alt.ClusterEndpoints
	benchVariants(b, func(b *testing.B, v Variant) {
		ns := netns.New(b, "bench")
		be, err := New(testSettings, nil, WithVariant(v))
		if err != nil {
			b.Fatal(err)
		}
		cur := clone(s)
		if err := ns.Do(func() error { _, err := backendtest.Sync(context.Background(), be, cur, true); return err }); err != nil {
			b.Fatal(err)
		}
		// Two snapshots in turn, as the tracker hands them over (a new map,
		// the other pointers kept): the change set is the one service port.
		snaps := []*model.Snapshot{modeltest.With(cur, &alt), modeltest.With(cur, orig)}
		i := 0
		for b.Loop() {
			snap := snaps[i%2]
			i++
			err := ns.Do(func() error {
				r, err := backendtest.Sync(context.Background(), be, snap, false)
				if err == nil && r.ServicePortsWritten != 1 {
					err = fmt.Errorf("wrote %d", r.ServicePortsWritten)
				}
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// localEndpoints copies s with every endpoint on this node.
func localEndpoints(s *model.Snapshot) *model.Snapshot {
	c := clone(s)
	for k, sp := range c.Services {
		l := *sp
		l.ClusterEndpoints = slices.Clone(sp.ClusterEndpoints)
		for i := range l.ClusterEndpoints {
			l.ClusterEndpoints[i].Local = true
		}
		l.ExternalEndpoints = l.ClusterEndpoints
		c.Services[k] = &l
	}
	return c
}

// BenchmarkWarmFullSync10k is a periodic full sync over 10k services already
// programmed: it lists both tables (drift repair) and rewrites every chain.
func BenchmarkWarmFullSync10k(b *testing.B) {
	s := bigSnapshot(10000, 2)
	benchVariants(b, func(b *testing.B, v Variant) {
		ns := netns.New(b, "bench")
		be, err := New(testSettings, nil, WithVariant(v))
		if err != nil {
			b.Fatal(err)
		}
		sync := func() error { _, err := backendtest.Sync(context.Background(), be, s, true); return err }
		if err := ns.Do(sync); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := ns.Do(sync); err != nil {
				b.Fatal(err)
			}
		}
	})
}
