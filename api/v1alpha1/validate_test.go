package v1alpha1

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"
)

func defaulted(mode Mode, mutate func(*ProxySettings)) *ProxySettings {
	s := &ProxySettings{}
	if mode == ModeIPVS {
		s.IPVS = &IPVSSettings{}
	}
	mutate(s)
	s.Default()
	return s
}

// TestValidateSettings: each rule refuses with the field's path and the
// CRD's message; the findings of the settings review come first (each was
// accepted before Validate existed).
func TestValidateSettings(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mode   Mode
		mutate func(*ProxySettings)
		want   []string // substrings of the error; empty: valid
	}{
		// Review findings.
		{"zero sync periods (the agent spun)", ModeIPTables, func(s *ProxySettings) { s.SyncPeriod, s.MinSyncPeriod = "0s", "0s" },
			[]string{"spec.syncPeriod", "must be between 1s and 24h"}},
		{"syncPeriod whose double overflows (health 503 forever)", ModeIPTables, func(s *ProxySettings) { s.SyncPeriod = "1300000h" },
			[]string{"spec.syncPeriod", "must be between 1s and 24h"}},
		{"syncPeriod beyond Go's range", ModeIPTables, func(s *ProxySettings) { s.SyncPeriod = "9999999999h" },
			[]string{"spec.syncPeriod", "must be between 1s and 24h"}},
		{"ipvs timeout beyond Go's range (agents crash-looped)", ModeIPVS, func(s *ProxySettings) { s.IPVS.TCPTimeout = "3000000h" },
			[]string{"spec.ipvs.tcpTimeout", "must be at most 576h"}},
		{"ipvs timeout beyond the kernel's", ModeIPVS, func(s *ProxySettings) { s.IPVS.UDPTimeout = "600h" },
			[]string{"spec.ipvs.udpTimeout", "must be at most 576h"}},
		{"masquerade bit of kubelet's drop mark", ModeIPTables, func(s *ProxySettings) { s.IPTables.MasqueradeBit = ptr.To[int32](15) },
			[]string{"spec.iptables.masqueradeBit", "must not be 15"}},
		{"nftables masquerade bit of kubelet's drop mark", ModeNFTables, func(s *ProxySettings) { s.NFTables.MasqueradeBit = ptr.To[int32](15) },
			[]string{"spec.nftables.masqueradeBit", "must not be 15"}},

		// The other rules.
		{"defaults", ModeIPTables, func(*ProxySettings) {}, nil},
		{"bounds themselves", ModeIPVS, func(s *ProxySettings) {
			s.SyncPeriod, s.MinSyncPeriod = "24h", "0"
			s.Conntrack.TCPEstablishedTimeout, s.Conntrack.UDPTimeout = "576h", "0"
			s.IPVS.TCPTimeout, s.IPVS.TCPFinTimeout = "2073600s", "1m30s"
			s.IPTables.MasqueradeBit, s.NFTables.MasqueradeBit = ptr.To[int32](0), ptr.To[int32](31)
		}, nil},
		{"unknown mode", "userspace", func(*ProxySettings) {}, []string{"spec.mode", `Unsupported value: "userspace"`}},
		{"syncPeriod below 1s", ModeIPTables, func(s *ProxySettings) { s.SyncPeriod, s.MinSyncPeriod = "500ms", "0" },
			[]string{"spec.syncPeriod", "must be between 1s and 24h"}},
		{"syncPeriod negative", ModeIPTables, func(s *ProxySettings) { s.SyncPeriod = "-30s" },
			[]string{"spec.syncPeriod", "should match"}},
		{"minSyncPeriod above syncPeriod", ModeIPTables, func(s *ProxySettings) { s.SyncPeriod, s.MinSyncPeriod = "10s", "1m" },
			[]string{"spec.minSyncPeriod", "must not be longer than spec.syncPeriod"}},
		{"minSyncPeriod above a day", ModeIPTables, func(s *ProxySettings) { s.MinSyncPeriod = "25h" },
			[]string{"spec.minSyncPeriod", "must be at most 24h"}},
		{"duration too long a string", ModeIPTables, func(s *ProxySettings) { s.SyncPeriod = Duration(strings.Repeat("1", 33) + "s") },
			[]string{"spec.syncPeriod", "may not be more than 32"}},
		{"conntrack timeout above the kernel's", ModeIPTables, func(s *ProxySettings) { s.Conntrack.TCPEstablishedTimeout = "577h" },
			[]string{"spec.conntrack.tcpEstablishedTimeout", "must be at most 576h"}},
		{"conntrack timeout with a fraction of a second", ModeIPTables, func(s *ProxySettings) { s.Conntrack.UDPStreamTimeout = "1500ms" },
			[]string{"spec.conntrack.udpStreamTimeout", "must be a whole number of seconds"}},
		{"conntrack close-wait not a duration", ModeIPTables, func(s *ProxySettings) { s.Conntrack.TCPCloseWaitTimeout = "1 hour" },
			[]string{"spec.conntrack.tcpCloseWaitTimeout", "should match"}},
		{"conntrack maxPerCore negative", ModeIPTables, func(s *ProxySettings) { s.Conntrack.MaxPerCore = ptr.To[int32](-1) },
			[]string{"spec.conntrack.maxPerCore", "greater than or equal to 0"}},
		{"conntrack min negative", ModeIPTables, func(s *ProxySettings) { s.Conntrack.Min = ptr.To[int32](-1) },
			[]string{"spec.conntrack.min", "greater than or equal to 0"}},
		{"ports equal", ModeIPTables, func(s *ProxySettings) { s.HealthzPort, s.MetricsPort = 9000, 9000 },
			[]string{"spec.metricsPort", "must differ"}},
		{"metrics bind address a host:port", ModeIPTables, func(s *ProxySettings) { s.MetricsBindAddress = "0.0.0.0:10249" },
			[]string{"spec.metricsBindAddress", "must be an IP address"}},
		{"metrics bind address IPv4-mapped", ModeIPTables, func(s *ProxySettings) { s.MetricsBindAddress = "::ffff:127.0.0.1" },
			[]string{"spec.metricsBindAddress", "must be an IP address"}},
		{"port above range", ModeIPTables, func(s *ProxySettings) { s.HealthzPort = 70000 },
			[]string{"spec.healthzPort", "less than or equal to 65535"}},
		{"masquerade bit above 31", ModeIPTables, func(s *ProxySettings) { s.IPTables.MasqueradeBit = ptr.To[int32](32) },
			[]string{"spec.iptables.masqueradeBit", "less than or equal to 31"}},
		{"ipvs settings in another mode", ModeNFTables, func(s *ProxySettings) { s.IPVS = &IPVSSettings{StrictARP: true} },
			[]string{"spec.ipvs", "spec.ipvs may only be set when spec.mode is ipvs"}},
		{"ipvs scheduler unknown", ModeIPVS, func(s *ProxySettings) { s.IPVS.Scheduler = "random" },
			[]string{"spec.ipvs.scheduler", `Unsupported value: "random"`}},
		{"ipvs fin timeout fraction", ModeIPVS, func(s *ProxySettings) { s.IPVS.TCPFinTimeout = "0.5s" },
			[]string{"spec.ipvs.tcpFinTimeout", "must be a whole number of seconds"}},
		{"ipvs exclude CIDR invalid", ModeIPVS, func(s *ProxySettings) { s.IPVS.ExcludeCIDRs = []CIDR{"203.0.113.0/24", "all"} },
			[]string{"spec.ipvs.excludeCIDRs[1]", "must be a valid CIDR"}},
		{"cluster CIDR is an address", ModeIPTables, func(s *ProxySettings) { s.ClusterCIDRs = []CIDR{"10.244.0.1"} },
			[]string{"spec.clusterCIDRs[0]", "must be a valid CIDR"}},
		{"cluster CIDR IPv4-mapped", ModeIPTables, func(s *ProxySettings) { s.ClusterCIDRs = []CIDR{"::ffff:10.244.0.0/112"} },
			[]string{"spec.clusterCIDRs[0]", "must be a valid CIDR"}},
		{"cluster CIDR twice", ModeIPTables, func(s *ProxySettings) { s.ClusterCIDRs = []CIDR{"10.244.0.0/16", "10.244.0.0/16"} },
			[]string{"spec.clusterCIDRs[1]", "Duplicate value"}},
		{"nodePort address neither", ModeIPTables, func(s *ProxySettings) { s.NodePortAddresses = []NodePortAddress{"primary", "eth0"} },
			[]string{"spec.nodePortAddresses[1]", "must be a valid CIDR or one of primary, localhost, all"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := defaulted(tc.mode, tc.mutate)
			errs := ValidateSettings(tc.mode, s, field.NewPath("spec"))
			if len(tc.want) == 0 {
				if len(errs) > 0 {
					t.Fatalf("valid settings refused: %v", errs.ToAggregate())
				}
				return
			}
			if len(errs) == 0 {
				t.Fatalf("invalid settings accepted")
			}
			msg := errs.ToAggregate().Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

// TestParseAgentConfigurationRefusesInvalidFiles: the agent reads its file
// through ParseAgentConfiguration, so a bad file stops it with the field's name.
func TestParseAgentConfigurationRefusesInvalidFiles(t *testing.T) {
	head := "apiVersion: proxy.kpo.dev/v1alpha1\nkind: AgentConfiguration\nconfigurationName: x\nconfigurationGeneration: 1\n"
	for _, tc := range []struct{ body, want string }{
		{"mode: iptables\nsyncPeriod: 0s\nminSyncPeriod: 0s\n", "syncPeriod: Invalid value: \"0s\": must be between 1s and 24h"},
		{"mode: ipvs\nipvs: {tcpTimeout: 3000000h}\n", "ipvs.tcpTimeout: Invalid value: \"3000000h\""},
		{"mode: nftables\nnftables: {masqueradeBit: 15}\n", "nftables.masqueradeBit: Invalid value: 15: must not be 15"},
	} {
		_, err := ParseAgentConfiguration([]byte(head + tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to contain %q", tc.body, err, tc.want)
		}
	}
	cfg, err := ParseAgentConfiguration([]byte(head + "mode: nftables\n"))
	if err != nil {
		t.Fatalf("a minimal file was refused: %v", err)
	}
	if cfg.SyncPeriod != "30s" || cfg.MinSyncPeriod != "1s" || *cfg.Conntrack.MaxPerCore != 32768 {
		t.Errorf("defaults not filled in: %+v", cfg.ProxySettings)
	}
}
