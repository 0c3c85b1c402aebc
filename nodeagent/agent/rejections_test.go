package agent

import (
	"fmt"
	"strings"
	"testing"

	"kpo.dev/kpo/nodeagent/model"
)

func rejection(name, reason, msg string) model.Rejection {
	return model.Rejection{Kind: model.KindEndpointSlice, Namespace: "ns", Name: name, Reason: reason, Message: msg}
}

// One entry per object and reason; the metric counts per kind and reason
// (package report bounds what the status names).
func TestRejectionsReported(t *testing.T) {
	sorted := []model.Rejection{
		rejection("a", model.ReasonInvalidEndpointAddress, `"x" is not an IP address`),
		rejection("a", model.ReasonInvalidEndpointAddress, `"y" is not an IP address`),
		rejection("a", model.ReasonInvalidEndpointPort, "70000"),
	}
	for i := range 12 {
		sorted = append(sorted, rejection(fmt.Sprintf("z%02d", i), model.ReasonInvalidEndpointPort, "70000"))
	}
	grouped := groupRejections(sorted)
	if len(grouped) != 14 || grouped[0].Message != `"x" is not an IP address (and 1 more)` || grouped[1].Message != "70000" {
		t.Fatalf("grouped %d: %v", len(grouped), grouped[:2])
	}

	m := newMetrics()
	m.setRejected(grouped)
	if got := rejectedSeries(t, m); got != "EndpointSlice/InvalidEndpointAddress=1 EndpointSlice/InvalidEndpointPort=13" {
		t.Errorf("kpo_rejected_objects: %s", got)
	}
	m.setRejected(nil)
	if got := rejectedSeries(t, m); got != "" {
		t.Errorf("series left after the last rejection went: %s", got)
	}
}

// rejectedSeries renders kpo_rejected_objects as "kind/reason=value ...".
func rejectedSeries(t *testing.T, m *metrics) string {
	t.Helper()
	families, err := m.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range families {
		if f.GetName() != "kpo_rejected_objects" {
			continue
		}
		for _, s := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			out = append(out, fmt.Sprintf("%s/%s=%g", labels["kind"], labels["reason"], s.GetGauge().GetValue()))
		}
	}
	return strings.Join(out, " ")
}
