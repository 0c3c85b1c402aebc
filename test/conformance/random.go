package conformance

import (
	"fmt"
	"math/rand/v2"
	"slices"
)

// randomSpec draws one Service with its endpoints: types × families × ports ×
// policies × affinity × topology × endpoint states and placement. The same
// seed always draws the same Service.
func (w *World) randomSpec(seed int64, name string) SvcSpec {
	r := rand.New(rand.NewPCG(uint64(seed), 0x6b706f))
	chance := func(p float64) bool { return r.Float64() < p }
	oneOf := func(vs ...string) string { return vs[r.IntN(len(vs))] }
	s := SvcSpec{Name: name}
	switch x := r.Float64(); {
	case x < 0.4:
		s.Type = clusterIP
	case x < 0.7:
		s.Type = nodePort
	default:
		s.Type = loadBalancer
	}
	s.Families = oneOf("4", "4", "6", "46", "46", "64")
	for _, p := range []PortSpec{tcp80, udp53, tcp443} {
		if chance(0.45) {
			s.Ports = append(s.Ports, p)
		}
	}
	if len(s.Ports) == 0 {
		s.Ports = []PortSpec{tcp80}
	}
	if chance(0.25) {
		s.ExternalIPs = 1
	}
	if s.Type == loadBalancer {
		s.LBIPs = r.IntN(3)
		s.LBProxyMode = chance(0.15)
		s.SourceRanges = oneOf("", "", "in", "other")
		s.NoLBNodePorts = chance(0.15)
	}
	external := s.Type != clusterIP || s.ExternalIPs > 0
	s.ExternalLocal = external && chance(0.4)
	s.InternalLocal = chance(0.25)
	if chance(0.15) {
		s.AffinitySeconds = 600
	}
	s.TrafficDistribution = oneOf("", "", "", "PreferClose", "PreferSameZone", "PreferSameNode")
	s.TopologyAnnotation = s.TrafficDistribution == "" && chance(0.1)
	s.Endpoints = w.randomEndpoints(r, chance(0.5) || s.TrafficDistribution != "")
	return s
}

func (w *World) randomEndpoints(r *rand.Rand, hinted bool) []EndpointSpec {
	chance := func(p float64) bool { return r.Float64() < p }
	targets := []string{n1p0, n1p1, n1p2, n2p0, n2p1, n2p2, "node-1", "node-2"}
	r.Shuffle(len(targets), func(i, j int) { targets[i], targets[j] = targets[j], targets[i] })
	n := r.IntN(5)
	var out []EndpointSpec
	for _, t := range targets[:n] {
		if (t == "node-1" || t == "node-2") && !chance(0.3) {
			continue // host-network endpoints, now and then
		}
		e := EndpointSpec{Target: t, NoNodeName: chance(0.05)}
		switch x := r.Float64(); {
		case x < 0.7:
		case x < 0.8:
			e.NotReady, e.Terminating = true, true
		case x < 0.9:
			e.NotReady, e.NotServing = true, true
		default:
			e.NotReady, e.NotServing, e.Terminating = true, true, true
		}
		if hinted && !chance(0.1) {
			node := w.nodeOf(t)
			zone, nodeName := Zone(node), fmt.Sprintf("node-%d", node)
			if chance(0.15) {
				zone, nodeName = Zone(3-node), fmt.Sprintf("node-%d", 3-node)
			}
			e.ZoneHints = []string{zone}
			if chance(0.6) {
				e.NodeHints = []string{nodeName}
			}
		}
		out = append(out, e)
	}
	return out
}

// nodeOf is the node index of a pod or node-host target.
func (w *World) nodeOf(target string) int {
	if target == "node-1" {
		return 1
	}
	if target == "node-2" {
		return 2
	}
	return w.Pod(target).Node.Index
}

// randomCases builds count generated cases, case i from seed base+i.
func (w *World) randomCases(base int64, count int) func() []*Case {
	return func() []*Case {
		a := &allocator{}
		var out []*Case
		for i := range count {
			seed := base + int64(i)
			c := w.Build(a, fmt.Sprintf("random-%d", seed), w.randomSpec(seed, fmt.Sprintf("r%d", seed)))
			c.Seed = seed
			out = append(out, c)
		}
		return out
	}
}

// shrinkSteps are simplifications tried on a differing Service, one at a
// time; one that keeps the difference is kept.
var shrinkSteps = []struct {
	name  string
	apply func(s *SvcSpec) bool // false: nothing to simplify
}{
	{"single family", func(s *SvcSpec) bool { return setIf(&s.Families, "4") }},
	{"no affinity", func(s *SvcSpec) bool { return setIf(&s.AffinitySeconds, 0) }},
	{"no topology", func(s *SvcSpec) bool {
		return setIf(&s.TrafficDistribution, "") || setIf(&s.TopologyAnnotation, false)
	}},
	{"iTP Cluster", func(s *SvcSpec) bool { return setIf(&s.InternalLocal, false) }},
	{"eTP Cluster", func(s *SvcSpec) bool { return setIf(&s.ExternalLocal, false) }},
	{"no source ranges", func(s *SvcSpec) bool { return setIf(&s.SourceRanges, "") }},
	{"no external IPs", func(s *SvcSpec) bool { return setIf(&s.ExternalIPs, 0) }},
	{"fewer LB IPs", func(s *SvcSpec) bool { return s.LBIPs > 1 && setIf(&s.LBIPs, 1) }},
	{"ClusterIP type", func(s *SvcSpec) bool {
		return s.Type != clusterIP && setIf(&s.Type, clusterIP) && setIf(&s.LBIPs, 0)
	}},
}

func setIf[T comparable](p *T, v T) bool {
	if *p == v {
		return false
	}
	*p = v
	return true
}

// shrinkCandidates lists simpler versions of s: each single simplification,
// each port alone, each endpoint removed, each endpoint made plainly ready.
func shrinkCandidates(s SvcSpec) []SvcSpec {
	var out []SvcSpec
	for _, st := range shrinkSteps {
		c := s
		c.Ports = slices.Clone(s.Ports)
		c.Endpoints = slices.Clone(s.Endpoints)
		if st.apply(&c) {
			out = append(out, c)
		}
	}
	if len(s.Ports) > 1 {
		for _, p := range s.Ports {
			c := s
			c.Ports = []PortSpec{p}
			out = append(out, c)
		}
	}
	for i := range s.Endpoints {
		c := s
		c.Endpoints = slices.Delete(slices.Clone(s.Endpoints), i, i+1)
		out = append(out, c)
		e := s.Endpoints[i]
		if e.NotReady || e.NoNodeName || e.ZoneHints != nil || e.NodeHints != nil {
			c := s
			c.Endpoints = slices.Clone(s.Endpoints)
			c.Endpoints[i] = EndpointSpec{Target: e.Target}
			out = append(out, c)
		}
	}
	return out
}
