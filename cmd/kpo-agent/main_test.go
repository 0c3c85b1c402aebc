package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInvalidConfigurationStopsTheAgent: kpo-agent refuses to start on a file
// the API server would have refused, naming the file and the fields, before
// it touches the node or the API server.
func TestInvalidConfigurationStopsTheAgent(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.yaml")
	data := "apiVersion: proxy.kpo.dev/v1alpha1\nkind: AgentConfiguration\nconfigurationName: default\n" +
		"configurationGeneration: 1\nmode: ipvs\nsyncPeriod: 0s\nminSyncPeriod: 0s\nipvs: {tcpTimeout: 3000000h}\n" +
		"iptables: {masqueradeBit: 15}\n"
	if err := os.WriteFile(file, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background(), flags{configFile: file, kubeconfig: "/nonexistent/kubeconfig", nodeName: "node-1",
		lockFile: filepath.Join(t.TempDir(), "agent.lock")})
	if err == nil {
		t.Fatal("the agent started on an invalid configuration")
	}
	for _, want := range []string{file, "invalid agent configuration", "syncPeriod", "ipvs.tcpTimeout", "iptables.masqueradeBit"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}
