package conformance

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"kpo.dev/kpo/hack/apiserver"
)

// Suite runs cases against the reference and kpo and compares what the
// packets did.
type Suite struct {
	World *World
	API   *apiserver.Env
	Ref   proxy // upstream kube-proxy
	Kpo   proxy
	// barriers counts barrier Services, so each has new addresses.
	barriers int
	// explained is the explanation check of kpo's last full phase.
	explained *explainCheck
}

// Result is one run's comparison.
type Result struct {
	Settings Settings
	Probes   int
	// Diffs are confirmed differences not listed as accepted.
	Diffs []Diff
	// Accepted are differences docs/conformance.md explains.
	Accepted []Diff
	// Unstable differences did not repeat when checked again.
	Unstable []Diff
	// Explain compares kubectl kpo explain's predictions with what kpo did.
	Explain explainCheck
	// cases by name, for printing a differing case.
	cases map[string]*Case
}

// Diff is one probe whose observations differ.
type Diff struct {
	Mode      string
	Probe     Probe
	Ref, Kpo  Observation
	AcceptID  string
	AcceptWhy string
}

// Summary is the closing line of a run.
func (r *Result) Summary() string {
	s := fmt.Sprintf("conformance %s [%s]: %d of %d probes differ", r.Settings.Mode, r.Settings.Name, len(r.Diffs), r.Probes)
	if len(r.Accepted) > 0 {
		s += fmt.Sprintf(" (+%d accepted, listed in docs/conformance.md)", len(r.Accepted))
	}
	if len(r.Unstable) > 0 {
		s += fmt.Sprintf(" (%d unstable: did not repeat)", len(r.Unstable))
	}
	s += fmt.Sprintf("; explain: %d of %d predictions wrong", len(r.Explain.Wrong), r.Explain.Checked)
	if r.Explain.Unstable > 0 {
		s += fmt.Sprintf(" (%d missed once, right when probed again)", r.Explain.Unstable)
	}
	return s
}

// Report lists the differences with the cases they come from.
func (r *Result) Report() string {
	var b strings.Builder
	shown := map[string]bool{}
	for _, d := range r.Diffs {
		fmt.Fprintf(&b, "DIFF %s\n    kube-proxy: %s\n    kpo:        %s\n", d.Probe.ID(), d.Ref, d.Kpo)
	}
	for _, d := range r.Diffs {
		if c := r.cases[d.Probe.Case]; c != nil && !shown[c.Name] {
			shown[c.Name] = true
			fmt.Fprintf(&b, "\n%s", c.YAML())
		}
	}
	for _, d := range r.Unstable {
		fmt.Fprintf(&b, "UNSTABLE %s\n    kube-proxy: %s\n    kpo:        %s\n", d.Probe.ID(), d.Ref, d.Kpo)
	}
	for _, d := range r.Accepted {
		fmt.Fprintf(&b, "ACCEPTED (%s) %s\n    kube-proxy: %s\n    kpo:        %s\n", d.AcceptID, d.Probe.ID(), d.Ref, d.Kpo)
	}
	for _, w := range r.Explain.Wrong {
		fmt.Fprintf(&b, "EXPLAIN WRONG %s\n", w)
	}
	return b.String()
}

// Run compares kube-proxy and kpo on the cases that build makes (called once
// per proxy, so that each proxy starts from the same fresh objects).
func (s *Suite) Run(t *testing.T, settings Settings, build func() []*Case) *Result {
	t.Helper()
	start := time.Now()
	ref, probes, cases := s.phase(t, s.Ref, settings, build, nil)
	got, _, _ := s.phase(t, s.Kpo, settings, build, nil)
	res := &Result{Settings: settings, Probes: len(probes), cases: map[string]*Case{}}
	if s.explained != nil {
		res.Explain, s.explained = *s.explained, nil
	}
	for _, c := range cases {
		res.cases[c.Name] = c
	}

	var suspects []Diff
	for _, p := range probes {
		id := p.ID()
		if ref[id].Equal(got[id]) {
			continue
		}
		d := Diff{Mode: string(settings.Mode), Probe: p, Ref: ref[id], Kpo: got[id]}
		if stickyDraw(d) {
			res.Unstable = append(res.Unstable, d)
			continue
		}
		suspects = append(suspects, d)
	}
	if len(suspects) > 0 {
		s.confirm(t, settings, build, suspects, res)
	}
	t.Logf("%s (%.0fs)", res.Summary(), time.Since(start).Seconds())
	return res
}

// stickyDraw says whether a difference is ClientIP affinity's draw: with an
// endpoint the vantage point cannot reach (both proxies send a pod's traffic
// to another node's eTP Local NodePort back to pods on its own node without
// masquerade), the first attempt's random choice decides every later one, so
// one run answers throughout and the next times out throughout.
func stickyDraw(d Diff) bool {
	if !d.Probe.Sticky {
		return false
	}
	only := func(o Observation, outcome string) bool { return slices.Equal(o.Outcomes, []string{outcome}) }
	return only(d.Ref, "timeout") && only(d.Kpo, "answered") || only(d.Ref, "answered") && only(d.Kpo, "timeout")
}

// confirm runs both proxies again on the differing probes only: a difference
// counts when each proxy repeats what it did.
func (s *Suite) confirm(t *testing.T, settings Settings, build func() []*Case, suspects []Diff, res *Result) {
	only := map[string]bool{}
	for _, d := range suspects {
		only[d.Probe.ID()] = true
	}
	ref2, _, _ := s.phase(t, s.Ref, settings, build, only)
	got2, _, _ := s.phase(t, s.Kpo, settings, build, only)
	for _, d := range suspects {
		id := d.Probe.ID()
		if !ref2[id].Equal(d.Ref) || !got2[id].Equal(d.Kpo) {
			res.Unstable = append(res.Unstable, d)
			continue
		}
		if a := accepted(d); a != nil {
			d.AcceptID, d.AcceptWhy = a.ID, a.Why
			res.Accepted = append(res.Accepted, d)
			continue
		}
		res.Diffs = append(res.Diffs, d)
	}
	sort.Slice(res.Diffs, func(i, j int) bool { return res.Diffs[i].Probe.ID() < res.Diffs[j].Probe.ID() })
}

// phase runs one proxy on fresh objects: write the cases, start the proxy,
// wait for it to program them, probe, play the steps, stop and clean up.
// only, when set, limits the probes to those IDs.
func (s *Suite) phase(t *testing.T, px proxy, settings Settings, build func() []*Case, only map[string]bool) (map[string]Observation, []Probe, []*Case) {
	t.Helper()
	ctx := context.Background()
	w := s.World
	if err := deleteAll(ctx, s.API); err != nil {
		t.Fatal(err)
	}
	cases := build()
	if err := apply(ctx, s.API, cases); err != nil {
		t.Fatal(err)
	}
	keep := func(ps []Probe) []Probe {
		if only == nil {
			return ps
		}
		return slices.DeleteFunc(ps, func(p Probe) bool { return !only[p.ID()] })
	}
	px.start(t, w, settings)
	defer func() {
		px.stop(t, w)
		w.reset(t)
	}()
	s.barrier(t, px)
	w.warmNeighbours()
	probes := keep(append(w.globalProbes(), w.allProbes(cases, "")...))
	obs := w.runProbes(probes)
	explained := only == nil && px == s.Kpo
	if explained {
		s.explained = &explainCheck{}
		s.explain(t, settings, probes, obs)
	}
	for _, c := range cases {
		for _, st := range c.Steps {
			st.Change(c)
			if err := update(ctx, s.API, c); err != nil {
				t.Fatal(err)
			}
			s.barrier(t, px)
			stepProbes := w.probesFor(c, st.Name)
			if c.lateProbes != nil {
				stepProbes = append(stepProbes, c.lateProbes(c, st.Name)...)
			}
			stepProbes = keep(stepProbes)
			stepObs := w.runProbes(stepProbes)
			for id, o := range stepObs {
				obs[id] = o
			}
			if explained {
				s.explain(t, settings, stepProbes, stepObs)
			}
			probes = append(probes, stepProbes...)
		}
	}
	return obs, probes, cases
}

func (w *World) allProbes(cases []*Case, step string) []Probe {
	var out []Probe
	for _, c := range cases {
		out = append(out, w.probesFor(c, step)...)
	}
	return out
}

// barrierNamespace holds the barrier Services, apart from the cases.
const barrierNamespace = "conformance-barrier"

// barrier creates a new dual-stack Service and waits until every node answers
// on its ClusterIPs. Each node's watches deliver events in order, so once the
// barrier is programmed (in both families: kube-proxy runs a proxier per
// family) every earlier change is too.
func (s *Suite) barrier(t *testing.T, px proxy) {
	t.Helper()
	ctx := context.Background()
	s.barriers++
	n := s.barriers%250 + 1
	name := fmt.Sprintf("barrier-%d", s.barriers)
	ips := []string{fmt.Sprintf("10.96.255.%d", n), fmt.Sprintf("fd10:96::ff%02x", n)}
	if err := s.API.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: barrierNamespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// Earlier barriers go first: only the newest is programmed for long.
	if err := s.API.Client.DeleteAllOf(ctx, &discoveryv1.EndpointSlice{}, client.InNamespace(barrierNamespace)); err != nil {
		t.Fatal(err)
	}
	old := &corev1.ServiceList{}
	if err := s.API.Client.List(ctx, old, client.InNamespace(barrierNamespace)); err != nil {
		t.Fatal(err)
	}
	for i := range old.Items {
		_ = s.API.Client.Delete(ctx, &old.Items[i])
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: barrierNamespace, Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: ips[0], ClusterIPs: ips, IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicyRequireDualStack),
			Ports: []corev1.ServicePort{{Name: "echo", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}}},
	}
	if err := s.API.Client.Create(ctx, svc); err != nil {
		t.Fatalf("barrier: %v", err)
	}
	target := s.World.Nodes[0].Pods[0]
	for _, slice := range s.World.buildSlices(svc, []EndpointSpec{{Target: target.Name}}) {
		if err := s.API.Client.Create(ctx, slice); err != nil {
			t.Fatalf("barrier slice: %v", err)
		}
	}
	apiserver.Eventually(t, 90*time.Second, func() error {
		for _, node := range s.World.Nodes {
			for _, ip := range ips {
				p := Probe{Network: "tcp", Addr: net.JoinHostPort(ip, "80"), ns: node.NS}
				if server, _, outcome := dial(p); server != target.Name+":8080" {
					return fmt.Errorf("%s: barrier %s not programmed on %s yet (%s)", px.name(), ip, node.Name, outcome)
				}
			}
		}
		return nil
	})
}

// explain checks the explanations of probes against what kpo did, with the
// objects as they are now (before the next step changes them).
func (s *Suite) explain(t *testing.T, settings Settings, probes []Probe, obs map[string]Observation) {
	t.Helper()
	c, err := s.checkExplanations(settings, probes, obs)
	if err != nil {
		t.Fatalf("explain: %v", err)
	}
	s.explained.Checked += c.Checked
	s.explained.Wrong = append(s.explained.Wrong, c.Wrong...)
	s.explained.Unstable += c.Unstable
}

func (r *Result) merge(o *Result) {
	r.Probes += o.Probes
	r.Explain.Checked += o.Explain.Checked
	r.Explain.Wrong = append(r.Explain.Wrong, o.Explain.Wrong...)
	r.Explain.Unstable += o.Explain.Unstable
	r.Diffs = append(r.Diffs, o.Diffs...)
	r.Accepted = append(r.Accepted, o.Accepted...)
	r.Unstable = append(r.Unstable, o.Unstable...)
	for k, v := range o.cases {
		r.cases[k] = v
	}
}

// differingCases are the cases with unexplained differences.
func (r *Result) differingCases() []*Case {
	var out []*Case
	seen := map[string]bool{}
	for _, d := range r.Diffs {
		if c := r.cases[d.Probe.Case]; c != nil && !seen[c.Name] {
			seen[c.Name] = true
			out = append(out, c)
		}
	}
	return out
}

// maxShrinkRuns bounds the runs spent shrinking one case.
const maxShrinkRuns = 12

// shrink simplifies a differing single-Service case while the difference
// stays, and returns the smallest case found.
func (s *Suite) shrink(t *testing.T, settings Settings, c *Case) *Case {
	t.Helper()
	if len(c.specs) != 1 {
		return c
	}
	spec, best, runs := c.specs[0], c, 0
	for progress := true; progress && runs < maxShrinkRuns; {
		progress = false
		for _, cand := range shrinkCandidates(spec) {
			if runs >= maxShrinkRuns {
				break
			}
			runs++
			var built *Case
			build := func() []*Case {
				built = s.World.Build(&allocator{}, c.Name+"-shrunk", cand)
				built.Seed = c.Seed
				return []*Case{built}
			}
			if res := s.Run(t, settings, build); len(res.Diffs) > 0 {
				spec, best, progress = cand, built, true
				t.Logf("shrunk (%d runs): still differs\n%s", runs, res.Report())
				break
			}
		}
	}
	return best
}
