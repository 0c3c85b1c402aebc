package controllers

import (
	"errors"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

func nodeReport(gen int64, mode kpov1.Mode, synced metav1.ConditionStatus, reason string) *kpov1.ProxyNodeReport {
	return &kpov1.ProxyNodeReport{
		Configuration: "pc", ConfigurationGeneration: gen, RequestedMode: mode, ActiveMode: mode,
		Conditions: []metav1.Condition{{Type: kpov1.NodeConditionSynced, Status: synced, Reason: reason}},
	}
}

func TestComputeStatus(t *testing.T) {
	now := metav1.NewTime(time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC))
	pc := &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "pc", Generation: 4},
		Spec: kpov1.ProxyConfigurationSpec{Mode: kpov1.ModeNFTables}}
	ready := nodeReport(4, kpov1.ModeNFTables, metav1.ConditionTrue, kpov1.NodeReasonSynced)
	ipvsMissing := nodeReport(4, kpov1.ModeIPTables, metav1.ConditionTrue, kpov1.NodeReasonSynced)
	ipvsMissing.RequestedMode = kpov1.ModeNFTables

	type want struct {
		desired, updated, ready int32
		mode                    string
		available, progressing  metav1.ConditionStatus
		degraded                metav1.ConditionStatus
		degradedReason          string
		failing                 int
	}
	for _, tc := range []struct {
		name string
		in   statusInputs
		want want
	}{
		{"no nodes", statusInputs{}, want{0, 0, 0, "", "False", "False", "False", kpov1.ReasonAsExpected, 0}},
		{"not reported yet", statusInputs{heldNodes: []string{"a", "b"}},
			want{2, 0, 0, "", "False", "True", "False", kpov1.ReasonAsExpected, 0}},
		{"all ready", statusInputs{heldNodes: []string{"a", "b"}, reports: map[string]*kpov1.ProxyNodeReport{"a": ready, "b": ready}},
			want{2, 2, 2, "nftables", "True", "False", "False", kpov1.ReasonAsExpected, 0}},
		{"one stale generation", statusInputs{heldNodes: []string{"a", "b"}, reports: map[string]*kpov1.ProxyNodeReport{
			"a": ready, "b": nodeReport(3, kpov1.ModeIPTables, metav1.ConditionTrue, kpov1.NodeReasonSynced)}},
			want{2, 1, 1, ModeMixed, "False", "True", "False", kpov1.ReasonAsExpected, 0}},
		{"one failing sync", statusInputs{heldNodes: []string{"a", "b"}, reports: map[string]*kpov1.ProxyNodeReport{
			"a": ready, "b": nodeReport(4, kpov1.ModeNFTables, metav1.ConditionFalse, kpov1.NodeReasonSyncFailed)}},
			want{2, 2, 1, "nftables", "False", "False", "True", kpov1.NodeReasonSyncFailed, 1}},
		// A configuration that cannot sync: its first agent is never ready, so
		// the DaemonSet's roll stops there; the others still run the previous
		// generation. The CR says which node fails and why.
		{"roll stopped at the first node", statusInputs{heldNodes: []string{"a", "b", "c"}, reports: map[string]*kpov1.ProxyNodeReport{
			"a": nodeReport(4, kpov1.ModeNFTables, metav1.ConditionFalse, kpov1.NodeReasonSyncFailed),
			"b": nodeReport(3, kpov1.ModeNFTables, metav1.ConditionTrue, kpov1.NodeReasonSynced),
			"c": nodeReport(3, kpov1.ModeNFTables, metav1.ConditionTrue, kpov1.NodeReasonSynced)}},
			want{3, 1, 0, "nftables", "False", "True", "True", kpov1.NodeReasonSyncFailed, 1}},
		{"kernel lacks the mode", statusInputs{heldNodes: []string{"a"}, reports: map[string]*kpov1.ProxyNodeReport{"a": ipvsMissing}},
			want{1, 1, 0, "iptables", "False", "False", "True", kpov1.NodeReasonModeUnavailable, 1}},
		{"mixed failures", statusInputs{heldNodes: []string{"a", "b"}, reports: map[string]*kpov1.ProxyNodeReport{
			"a": ipvsMissing, "b": nodeReport(4, kpov1.ModeNFTables, metav1.ConditionFalse, kpov1.NodeReasonSyncFailed)}},
			want{2, 2, 0, ModeMixed, "False", "False", "True", kpov1.ReasonNodesFailing, 2}},
		{"report for another configuration", statusInputs{heldNodes: []string{"a"}, reports: map[string]*kpov1.ProxyNodeReport{
			"a": {Configuration: "other", ConfigurationGeneration: 4}}},
			want{1, 0, 0, "", "False", "True", "False", kpov1.ReasonAsExpected, 0}},
		{"conflict", statusInputs{heldNodes: []string{"a"}, conflicts: map[string]string{"b": "old"},
			reports: map[string]*kpov1.ProxyNodeReport{"a": ready}},
			want{1, 1, 1, "nftables", "True", "False", "True", kpov1.ReasonNodeSelectorConflict, 0}},
		{"apply failed", statusInputs{heldNodes: []string{"a"}, applyErr: errors.New("forbidden"),
			reports: map[string]*kpov1.ProxyNodeReport{"a": ready}},
			want{1, 1, 1, "nftables", "True", "False", "True", kpov1.ReasonApplyFailed, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.in.now = now
			st := computeStatus(pc, tc.in)
			w := tc.want
			if st.DesiredNodes != w.desired || st.UpdatedNodes != w.updated || st.ReadyNodes != w.ready || st.Mode != w.mode {
				t.Errorf("desired/updated/ready/mode = %d/%d/%d/%q, want %d/%d/%d/%q",
					st.DesiredNodes, st.UpdatedNodes, st.ReadyNodes, st.Mode, w.desired, w.updated, w.ready, w.mode)
			}
			if len(st.FailingNodes) != w.failing {
				t.Errorf("failing nodes %+v, want %d", st.FailingNodes, w.failing)
			}
			check := func(typ string, status metav1.ConditionStatus, reason string) {
				c := meta.FindStatusCondition(st.Conditions, typ)
				if c == nil || c.Status != status || (reason != "" && c.Reason != reason) {
					t.Errorf("%s = %+v, want %s %s", typ, c, status, reason)
				}
				if c != nil && c.ObservedGeneration != 4 {
					t.Errorf("%s observedGeneration %d", typ, c.ObservedGeneration)
				}
			}
			check(kpov1.ConditionAvailable, w.available, "")
			check(kpov1.ConditionProgressing, w.progressing, "")
			check(kpov1.ConditionDegraded, w.degraded, w.degradedReason)
			if st.ObservedGeneration != 4 {
				t.Errorf("observedGeneration %d", st.ObservedGeneration)
			}
		})
	}
}

func TestComputeStatusKeepsTransitionTimes(t *testing.T) {
	t0 := metav1.NewTime(time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC))
	t1 := metav1.NewTime(t0.Add(time.Hour))
	pc := &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "pc", Generation: 1},
		Spec: kpov1.ProxyConfigurationSpec{Mode: kpov1.ModeIPTables}}
	in := statusInputs{heldNodes: []string{"a"}, reports: map[string]*kpov1.ProxyNodeReport{
		"a": nodeReport(1, kpov1.ModeIPTables, metav1.ConditionTrue, kpov1.NodeReasonSynced)}, now: t0}
	pc.Status = computeStatus(pc, in)

	in.now = t1
	pc.Status = computeStatus(pc, in)
	for _, c := range pc.Status.Conditions {
		if !c.LastTransitionTime.Equal(&t0) {
			t.Errorf("%s moved to %v without changing status", c.Type, c.LastTransitionTime)
		}
	}
	in.reports["a"] = nodeReport(1, kpov1.ModeIPTables, metav1.ConditionFalse, kpov1.NodeReasonSyncFailed)
	pc.Status = computeStatus(pc, in)
	if c := meta.FindStatusCondition(pc.Status.Conditions, kpov1.ConditionDegraded); !c.LastTransitionTime.Equal(&t1) {
		t.Errorf("Degraded turned True but kept time %v", c.LastTransitionTime)
	}
}

func TestFailingNodesAreBounded(t *testing.T) {
	pc := &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "pc", Generation: 1},
		Spec: kpov1.ProxyConfigurationSpec{Mode: kpov1.ModeIPTables}}
	in := statusInputs{reports: map[string]*kpov1.ProxyNodeReport{}}
	for i := range 25 {
		n := string(rune('a'+i)) + "-node"
		in.heldNodes = append(in.heldNodes, n)
		in.reports[n] = nodeReport(1, kpov1.ModeIPTables, metav1.ConditionFalse, kpov1.NodeReasonSyncFailed)
	}
	st := computeStatus(pc, in)
	if len(st.FailingNodes) != kpov1.MaxFailingNodes || st.FailingNodes[0].Node != "a-node" {
		t.Errorf("failing nodes %+v, want the first %d by name", st.FailingNodes, kpov1.MaxFailingNodes)
	}
	if c := meta.FindStatusCondition(st.Conditions, kpov1.ConditionDegraded); !strings.HasPrefix(c.Message, "25 node(s)") {
		t.Errorf("degraded message %q does not count all 25 failing nodes", c.Message)
	}
}
