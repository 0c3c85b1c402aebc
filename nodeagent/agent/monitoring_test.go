package agent

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestMonitoringNamesServedMetrics: every agent metric the alerts
// (config/monitoring/prometheusrule.yaml) and the dashboard query is one the
// agent serves, so that a rename cannot silently empty them.
func TestMonitoringNamesServedMetrics(t *testing.T) {
	m := newMetrics()
	m.setInfo("v", "c", "nftables", "nftables")
	m.setRejected(nil)
	m.rejected.WithLabelValues("EndpointSlice", "x").Set(1)
	families, err := m.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]bool{}
	for _, f := range families {
		served[f.GetName()] = true
	}
	name := regexp.MustCompile(`\b(?:kubeproxy|kpo)_[a-z_]+`)
	for _, file := range []string{"prometheusrule.yaml", "kpo-dashboard.json"} {
		data, err := os.ReadFile(filepath.Join("..", "..", "config", "monitoring", file))
		if err != nil {
			t.Fatal(err)
		}
		found := 0
		for _, n := range name.FindAllString(string(data), -1) {
			if strings.HasPrefix(n, "kpo_agent_metrics") {
				continue // not a metric: part of a job name
			}
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				n = strings.TrimSuffix(n, suffix)
			}
			found++
			if !served[n] {
				t.Errorf("%s queries %s, which the agent does not serve", file, n)
			}
		}
		if found < 5 {
			t.Errorf("%s: only %d metric names found", file, found)
		}
	}
}
