package controllers

import (
	"fmt"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

func cond(t, reason string, on bool) metav1.Condition {
	s := metav1.ConditionFalse
	if on {
		s = metav1.ConditionTrue
	}
	return metav1.Condition{Type: t, Status: s, Reason: reason, Message: t + " " + reason}
}

func TestTransitionEvents(t *testing.T) {
	steady := []metav1.Condition{cond(kpov1.ConditionAvailable, kpov1.ReasonAsExpected, true),
		cond(kpov1.ConditionProgressing, kpov1.ReasonAsExpected, false), cond(kpov1.ConditionDegraded, kpov1.ReasonAsExpected, false)}
	rolling := []metav1.Condition{cond(kpov1.ConditionAvailable, kpov1.ReasonAsExpected, true),
		cond(kpov1.ConditionProgressing, kpov1.ReasonRollingOut, true), cond(kpov1.ConditionDegraded, kpov1.ReasonAsExpected, false)}
	failing := []metav1.Condition{cond(kpov1.ConditionAvailable, kpov1.ReasonNodesNotReady, false),
		cond(kpov1.ConditionProgressing, kpov1.ReasonRollingOut, true), cond(kpov1.ConditionDegraded, kpov1.ReasonNodesFailing, true)}
	created := []metav1.Condition{cond(kpov1.ConditionAvailable, kpov1.ReasonNodesNotReady, false),
		cond(kpov1.ConditionProgressing, kpov1.ReasonRollingOut, true), cond(kpov1.ConditionDegraded, kpov1.ReasonAsExpected, false)}
	for _, tc := range []struct {
		name     string
		old, new []metav1.Condition
		want     string
	}{
		{"nothing changed", steady, steady, "[]"},
		{"created: a roll starts", nil, created, "[Normal/RollingOut]"},
		{"a roll starts", steady, rolling, "[Normal/RollingOut]"},
		{"a roll finishes", rolling, steady, "[Normal/RolloutFinished]"},
		{"nodes fail during a roll", rolling, failing, "[Warning/NodesFailing Warning/NodesNotReady]"},
		{"recovered", failing, steady, "[Normal/RolloutFinished Normal/Recovered Normal/Available]"},
	} {
		var got []string
		for _, e := range transitionEvents(tc.old, tc.new) {
			got = append(got, e.Type+"/"+e.Reason)
		}
		if s := fmt.Sprint(got); s != tc.want {
			t.Errorf("%s: events %s, want %s", tc.name, s, tc.want)
		}
	}
}
