package agent

import (
	"fmt"
	"strings"
	"testing"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/model"
)

func rejection(name, reason, msg string) model.Rejection {
	return model.Rejection{Kind: model.KindEndpointSlice, Namespace: "ns", Name: name, Reason: reason, Message: msg}
}

// One entry per object and reason; the status names at most ten, with the
// total; the metric counts per kind and reason.
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

	cfg := &kpov1.AgentConfiguration{ConfigurationName: "c", Mode: kpov1.ModeNFTables}
	r := newStatusReporter(nil, "n", cfg, kpov1.ModeNFTables)
	r.dirty, r.important = false, false
	r.setRejected(grouped)
	if len(r.report.RejectedObjects) != kpov1.MaxRejectedObjects || r.report.RejectedObjectCount != 14 {
		t.Errorf("status names %d of %d", len(r.report.RejectedObjects), r.report.RejectedObjectCount)
	}
	if got := r.report.RejectedObjects[0]; got.Kind != "EndpointSlice" || got.Name != "a" || got.Reason != model.ReasonInvalidEndpointAddress {
		t.Errorf("first named %+v", got)
	}
	if !r.dirty || !r.important {
		t.Error("a change of rejections must be written at once")
	}
	r.setRejected(nil)
	if r.report.RejectedObjects != nil || r.report.RejectedObjectCount != 0 {
		t.Errorf("after the last rejection went: %+v", r.report)
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
