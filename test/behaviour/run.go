package behaviour

import (
	"fmt"
	"testing"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// Level is one way of running the table: how the proxy comes to hold the
// Services, and how a probe is checked.
type Level struct {
	Mode  kpov1.Mode
	Hosts Hosts
	// Apply makes the proxy hold services, every case's at one step, and
	// nothing else of the table's: the backend levels sync (partially
	// after the first time), test/e2e writes the API server.
	Apply func(t *testing.T, services []Service)
	// Check checks one probe against the outcome wanted in the mode.
	Check func(t *testing.T, p Probe, want Outcome)
}

// Run runs cases at level l: every case's Services at once, their probes,
// then each step of every case at once (one Apply per step), its probes.
func Run(t *testing.T, l Level, cases []Case) {
	t.Helper()
	current := make([][]Service, len(cases))
	steps := 0
	for i, c := range cases {
		current[i] = c.Services
		steps = max(steps, len(c.Steps))
	}
	apply := func() {
		var all []Service
		for _, s := range current {
			all = append(all, s...)
		}
		l.Apply(t, all)
	}
	apply()
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) { probe(t, l, c.Probes) })
	}
	for step := range steps {
		for i, c := range cases {
			if step < len(c.Steps) {
				current[i] = c.Steps[step].Services
			}
		}
		apply()
		for _, c := range cases {
			if step < len(c.Steps) {
				t.Run(c.Name+"/"+c.Steps[step].Name, func(t *testing.T) { probe(t, l, c.Steps[step].Probes) })
			}
		}
	}
}

func probe(t *testing.T, l Level, probes []Probe) {
	for _, p := range probes {
		want := p.In(l.Mode)
		t.Run(fmt.Sprintf("%s %s %s", p.From, p.Network(), p.To), func(t *testing.T) { l.Check(t, p, want) })
	}
}

// String says what an outcome is, for failure messages.
func (o Outcome) String() string {
	switch {
	case o.Answer != Served:
		return o.Answer.String()
	case o.Sticky:
		return fmt.Sprintf("served by one of %v, always the same, %s", o.By, o.Source)
	}
	return fmt.Sprintf("served by %v, %s", o.By, o.Source)
}
