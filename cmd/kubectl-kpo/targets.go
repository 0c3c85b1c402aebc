package main

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/explain"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/nodeports"
	"kpo.dev/kpo/nodeagent/report"
)

// targets are the nodes and addresses concerned by --to and the sender.
func (w *world) targets(svc *corev1.Service, family model.Family, src explain.Source, o *explainOptions) (explain.Target, []target, error) {
	kind, ip, _ := strings.Cut(strings.ToLower(o.to), ":")
	var addrs []string
	var t explain.Target
	switch kind {
	case "clusterip", "":
		t, addrs = explain.ToClusterIP, svc.Spec.ClusterIPs
	case "external", "externalip":
		t, addrs = explain.ToExternalIP, svc.Spec.ExternalIPs
	case "lb", "loadbalancer":
		t = explain.ToLoadBalancerIP
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			addrs = append(addrs, ing.IP)
		}
	case "nodeport":
		return explain.ToNodePort, w.nodePortTargets(family, o.node), nil
	default:
		return "", nil, fmt.Errorf("--to %q: want clusterip, nodeport, external[:IP] or lb[:IP]", o.to)
	}
	if ip != "" {
		addrs = []string{ip}
	}
	var vips []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParseAddr(a); err == nil && model.FamilyOf(p) == family {
			vips = append(vips, p.Unmap())
		}
	}
	if len(vips) == 0 {
		return "", nil, fmt.Errorf("service %s/%s has no %s %s address", svc.Namespace, svc.Name, family, t)
	}
	nodes := w.agentNodes()
	switch {
	case o.node != "":
		nodes = []string{o.node}
	case src.Kind != explain.FromExternal:
		// A pod's and a node's traffic to a service address is handled by
		// their own node.
		nodes = []string{src.Node}
	}
	var out []target
	for _, n := range nodes {
		for _, a := range vips {
			out = append(out, target{node: n, addr: a})
		}
	}
	return t, out, nil
}

// nodePortTargets are the primary addresses of the nodes concerned.
func (w *world) nodePortTargets(family model.Family, only string) []target {
	nodes := w.agentNodes()
	if only != "" {
		nodes = []string{only}
	}
	var out []target
	for _, n := range nodes {
		if ip, ok := nodeports.PrimaryIPs(w.nodes[n])[family]; ok {
			out = append(out, target{node: n, addr: ip})
		}
	}
	return out
}

// freshness says what may keep a node's rules from matching the model
// explained: an agent that runs an older generation of its configuration,
// has not synced, or whose last report names another model than the one
// explained (p, from explain.CheckProgrammed).
func freshness(st *kpov1.ProxyNodeStatus, pc *kpov1.ProxyConfiguration, p explain.Programmed) []string {
	var out []string
	r := &st.Status
	if r.ConfigurationGeneration != pc.Generation {
		out = append(out, fmt.Sprintf("%s runs generation %d of %s, which is at generation %d: its agent is rolling",
			st.Name, r.ConfigurationGeneration, pc.Name, pc.Generation))
	}
	if c := meta(r.Conditions, kpov1.NodeConditionSynced); c == nil || c.Status != metav1.ConditionTrue {
		reason := "no Synced condition"
		if c != nil {
			reason = c.Reason + ": " + c.Message
		}
		out = append(out, fmt.Sprintf("%s has not programmed its current model (%s)", st.Name, reason))
	}
	if r.ActiveMode != "" && r.RequestedMode != "" && r.ActiveMode != r.RequestedMode {
		out = append(out, fmt.Sprintf("%s runs mode %s, not the requested %s (explained in %s)", st.Name, r.ActiveMode, r.RequestedMode, r.ActiveMode))
	}
	switch p.State {
	case explain.NotReported:
		out = append(out, fmt.Sprintf("%s does not report which model it programmed (no successful sync, or an agent "+
			"older than this plugin): this one (%s) holds once it has synced these objects (last sync %s)",
			st.Name, p.Model.Services, lastSync(r)))
	case explain.OtherModel:
		out = append(out, fmt.Sprintf("%s's last report (%s) names another model (%s, synced %s) than this one (%s): "+
			"either it has not synced these objects yet, or it has synced them since and not reported "+
			"(when nothing else changes, its next report comes with the heartbeat, every %s)",
			st.Name, clock(r.LastReportTime), p.Reported.Services, clock(&p.Reported.SyncTime), p.Model.Services, heartbeat()))
	case explain.NodeSettingsDiffer:
		out = append(out, fmt.Sprintf("%s programmed these service ports (report %s, sync %s), but its node settings "+
			"(NodePort addresses, detect-local, service ranges: %s) are not the ones derived here (%s): kubectl kpo "+
			"knows the Node's addresses, not its interfaces, so what this says about NodePort addresses and "+
			"detect-local may not hold on %s",
			st.Name, clock(r.LastReportTime), clock(&p.Reported.SyncTime), p.Reported.Node, p.Model.Node, st.Name))
	}
	return out
}

// heartbeat is how often an agent writes an unchanged report (jittered by
// up to a tenth), in words.
func heartbeat() string {
	hb := report.DefaultHeartbeat
	return fmt.Sprintf("%g–%g minutes", hb.Minutes(), (hb + hb/10).Minutes())
}

// clock is a time of day in UTC, as the reports' times are read.
func clock(t *metav1.Time) string {
	if t == nil {
		return "never"
	}
	return t.UTC().Format("15:04:05Z")
}

func lastSync(r *kpov1.ProxyNodeReport) string { return clock(r.LastSyncTime) }

func meta(cs []metav1.Condition, typ string) *metav1.Condition {
	for i := range cs {
		if cs[i].Type == typ {
			return &cs[i]
		}
	}
	return nil
}
