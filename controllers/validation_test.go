package controllers

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
)

// TestInvalidConfigurationsAreRejected checks every validation rule of the CRD on
// the real API server: the create fails, and the message names the field. The
// agent's own check (kpov1.Resolve, which refuses a configuration file
// the API server would have refused) must refuse the same settings with the
// same field and words; rules on the pod or the name, which the agent never
// sees, are marked podOnly.
func TestInvalidConfigurationsAreRejected(t *testing.T) {
	needAPIServer(t)
	for _, tc := range []struct {
		name    string
		mutate  func(*kpov1.ProxyConfiguration)
		want    []string // substrings of the API server's error (and of ValidateSettings')
		podOnly bool
	}{
		// The findings of the settings review: each was accepted before.
		{"zero sync periods", func(pc *kpov1.ProxyConfiguration) { pc.Spec.SyncPeriod, pc.Spec.MinSyncPeriod = "0s", "0s" },
			[]string{"spec.syncPeriod", "spec.syncPeriod must be between 1s and 24h"}, false},
		{"syncPeriod whose double overflows", func(pc *kpov1.ProxyConfiguration) { pc.Spec.SyncPeriod = "1300000h" },
			[]string{"spec.syncPeriod", "spec.syncPeriod must be between 1s and 24h"}, false},
		{"syncPeriod beyond Go's duration range", func(pc *kpov1.ProxyConfiguration) { pc.Spec.SyncPeriod = "9999999999h" },
			[]string{"spec.syncPeriod", "spec.syncPeriod must be between 1s and 24h"}, false},
		{"ipvs timeout beyond Go's duration range", func(pc *kpov1.ProxyConfiguration) {
			pc.Spec.Mode = kpov1.ModeIPVS
			pc.Spec.IPVS = &kpov1.IPVSSettings{TCPTimeout: "3000000h"}
		}, []string{"spec.ipvs.tcpTimeout", "must be at most 576h"}, false},
		{"ipvs fin timeout beyond the kernel's", func(pc *kpov1.ProxyConfiguration) {
			pc.Spec.Mode = kpov1.ModeIPVS
			pc.Spec.IPVS = &kpov1.IPVSSettings{TCPFinTimeout: "600h"}
		}, []string{"spec.ipvs.tcpFinTimeout", "must be at most 576h"}, false},
		{"ipvs udp timeout with a fraction of a second", func(pc *kpov1.ProxyConfiguration) {
			pc.Spec.Mode = kpov1.ModeIPVS
			pc.Spec.IPVS = &kpov1.IPVSSettings{UDPTimeout: "1500ms"}
		}, []string{"spec.ipvs.udpTimeout", "must be a whole number of seconds"}, false},
		{"iptables masquerade bit of kubelet's drop mark", func(pc *kpov1.ProxyConfiguration) { pc.Spec.IPTables.MasqueradeBit = ptr.To[int32](15) },
			[]string{"spec.iptables.masqueradeBit", "must not be 15: kubelet's KUBE-MARK-DROP"}, false},
		{"nftables masquerade bit of kubelet's drop mark", func(pc *kpov1.ProxyConfiguration) { pc.Spec.NFTables.MasqueradeBit = ptr.To[int32](15) },
			[]string{"spec.nftables.masqueradeBit", "must not be 15: kubelet's KUBE-MARK-DROP"}, false},
		{"syncPeriod below a second", func(pc *kpov1.ProxyConfiguration) { pc.Spec.SyncPeriod, pc.Spec.MinSyncPeriod = "500ms", "0" },
			[]string{"spec.syncPeriod", "spec.syncPeriod must be between 1s and 24h"}, false},
		{"minSyncPeriod above a day", func(pc *kpov1.ProxyConfiguration) { pc.Spec.MinSyncPeriod = "25h" },
			[]string{"spec.minSyncPeriod", "spec.minSyncPeriod must be at most 24h"}, false},
		{"conntrack established timeout beyond the kernel's", func(pc *kpov1.ProxyConfiguration) { pc.Spec.Conntrack.TCPEstablishedTimeout = "577h" },
			[]string{"spec.conntrack.tcpEstablishedTimeout", "must be at most 576h"}, false},
		{"conntrack close-wait timeout beyond Go's range", func(pc *kpov1.ProxyConfiguration) { pc.Spec.Conntrack.TCPCloseWaitTimeout = "99999999999h" },
			[]string{"spec.conntrack.tcpCloseWaitTimeout", "must be at most 576h"}, false},
		{"conntrack udp timeout with a fraction of a second", func(pc *kpov1.ProxyConfiguration) { pc.Spec.Conntrack.UDPTimeout = "30.5s" },
			[]string{"spec.conntrack.udpTimeout", "must be a whole number of seconds"}, false},
		{"conntrack udp stream timeout beyond the kernel's", func(pc *kpov1.ProxyConfiguration) { pc.Spec.Conntrack.UDPStreamTimeout = "1000h" },
			[]string{"spec.conntrack.udpStreamTimeout", "must be at most 576h"}, false},
		{"conntrack min negative", func(pc *kpov1.ProxyConfiguration) { pc.Spec.Conntrack.Min = ptr.To[int32](-1) },
			[]string{"spec.conntrack.min", "greater than or equal to 0"}, false},

		// Rules that existed before.
		{"unknown mode", func(pc *kpov1.ProxyConfiguration) { pc.Spec.Mode = "userspace" },
			[]string{"spec.mode", `Unsupported value: "userspace"`}, false},
		{"ipvs settings without ipvs mode", func(pc *kpov1.ProxyConfiguration) {
			pc.Spec.Mode = kpov1.ModeNFTables
			pc.Spec.IPVS = &kpov1.IPVSSettings{StrictARP: true}
		}, []string{"spec.ipvs", "spec.ipvs may only be set when spec.mode is ipvs"}, false},
		{"minSyncPeriod above syncPeriod", func(pc *kpov1.ProxyConfiguration) {
			pc.Spec.SyncPeriod, pc.Spec.MinSyncPeriod = "10s", "1m"
		}, []string{"spec.minSyncPeriod", "must not be longer than spec.syncPeriod"}, false},
		{"syncPeriod not a duration", func(pc *kpov1.ProxyConfiguration) { pc.Spec.SyncPeriod = "soon" },
			[]string{"spec.syncPeriod", "should match"}, false},
		{"conntrack timeout not a duration", func(pc *kpov1.ProxyConfiguration) { pc.Spec.Conntrack.UDPTimeout = "5 minutes" },
			[]string{"spec.conntrack.udpTimeout", "should match"}, false},
		{"cluster CIDR invalid", func(pc *kpov1.ProxyConfiguration) {
			pc.Spec.ClusterCIDRs = []kpov1.CIDR{"10.244.0.0/16", "10.244.0.0/33"}
		},
			[]string{"spec.clusterCIDRs[1]", "must be a valid CIDR"}, false},
		{"cluster CIDR is an IP", func(pc *kpov1.ProxyConfiguration) { pc.Spec.ClusterCIDRs = []kpov1.CIDR{"fd10:244::1"} },
			[]string{"spec.clusterCIDRs[0]", "must be a valid CIDR"}, false},
		{"nodePort address invalid", func(pc *kpov1.ProxyConfiguration) {
			pc.Spec.NodePortAddresses = []kpov1.NodePortAddress{"primary", "eth0"}
		},
			[]string{"spec.nodePortAddresses[1]", "must be a valid CIDR or one of primary, localhost, all"}, false},
		{"detectLocalMode BridgeInterface without a bridge", func(pc *kpov1.ProxyConfiguration) {
			pc.Spec.DetectLocalMode = kpov1.DetectLocalBridgeInterface
		}, []string{"spec.detectLocal.bridgeInterface", "required when spec.detectLocalMode is BridgeInterface"}, false},
		{"detectLocalMode InterfaceNamePrefix without a prefix", func(pc *kpov1.ProxyConfiguration) {
			pc.Spec.DetectLocalMode = kpov1.DetectLocalInterfaceNamePrefix
			pc.Spec.DetectLocal.BridgeInterface = "cbr0"
		}, []string{"spec.detectLocal.interfaceNamePrefix", "required when spec.detectLocalMode is InterfaceNamePrefix"}, false},
		{"detectLocalMode unknown", func(pc *kpov1.ProxyConfiguration) { pc.Spec.DetectLocalMode = "PodCIDR" },
			[]string{"spec.detectLocalMode", `Unsupported value: "PodCIDR"`}, false},
		{"detectLocal interface name with a space", func(pc *kpov1.ProxyConfiguration) {
			pc.Spec.DetectLocalMode, pc.Spec.DetectLocal.InterfaceNamePrefix = kpov1.DetectLocalInterfaceNamePrefix, "veth x"
		}, []string{"spec.detectLocal.interfaceNamePrefix", "should match"}, false},
		{"healthz port above range", func(pc *kpov1.ProxyConfiguration) { pc.Spec.HealthzPort = 70000 },
			[]string{"spec.healthzPort", "less than or equal to 65535"}, false},
		{"metrics port below range", func(pc *kpov1.ProxyConfiguration) { pc.Spec.MetricsPort = -1 },
			[]string{"spec.metricsPort", "greater than or equal to 1"}, false},
		{"metrics bind address a hostname", func(pc *kpov1.ProxyConfiguration) { pc.Spec.MetricsBindAddress = "localhost" },
			[]string{"spec.metricsBindAddress", "must be an IP address"}, false},
		{"metrics bind address IPv4-mapped", func(pc *kpov1.ProxyConfiguration) { pc.Spec.MetricsBindAddress = "::ffff:127.0.0.1" },
			[]string{"spec.metricsBindAddress", "must be an IP address"}, false},
		{"healthz and metrics on one port", func(pc *kpov1.ProxyConfiguration) { pc.Spec.HealthzPort, pc.Spec.MetricsPort = 9000, 9000 },
			[]string{"spec.metricsPort", "must differ"}, false},
		{"iptables masquerade bit above 31", func(pc *kpov1.ProxyConfiguration) { pc.Spec.IPTables.MasqueradeBit = ptr.To[int32](32) },
			[]string{"spec.iptables.masqueradeBit", "less than or equal to 31"}, false},
		{"nftables masquerade bit below 0", func(pc *kpov1.ProxyConfiguration) { pc.Spec.NFTables.MasqueradeBit = ptr.To[int32](-1) },
			[]string{"spec.nftables.masqueradeBit", "greater than or equal to 0"}, false},
		{"conntrack maxPerCore negative", func(pc *kpov1.ProxyConfiguration) { pc.Spec.Conntrack.MaxPerCore = ptr.To[int32](-5) },
			[]string{"spec.conntrack.maxPerCore", "greater than or equal to 0"}, false},
		{"ipvs scheduler unknown", func(pc *kpov1.ProxyConfiguration) {
			pc.Spec.Mode = kpov1.ModeIPVS
			pc.Spec.IPVS = &kpov1.IPVSSettings{Scheduler: "random"}
		}, []string{"spec.ipvs.scheduler", `Unsupported value: "random"`}, false},
		{"ipvs exclude CIDR invalid", func(pc *kpov1.ProxyConfiguration) {
			pc.Spec.Mode = kpov1.ModeIPVS
			pc.Spec.IPVS = &kpov1.IPVSSettings{ExcludeCIDRs: []kpov1.CIDR{"203.0.113.0/24", "everything"}}
		}, []string{"spec.ipvs.excludeCIDRs[1]", "must be a valid CIDR"}, false},
		{"maxUnavailable zero", func(pc *kpov1.ProxyConfiguration) {
			pc.Spec.Agent.UpdateStrategy.MaxUnavailable = ptr.To(intstr.FromInt32(0))
		}, []string{"spec.agent.updateStrategy.maxUnavailable", "must be a positive count or a percentage"}, true},
		{"maxUnavailable bad percentage", func(pc *kpov1.ProxyConfiguration) {
			pc.Spec.Agent.UpdateStrategy.MaxUnavailable = ptr.To(intstr.FromString("150%"))
		}, []string{"spec.agent.updateStrategy.maxUnavailable", "must be a positive count or a percentage"}, true},
		{"log level above 10", func(pc *kpov1.ProxyConfiguration) { pc.Spec.Agent.LogLevel = 11 },
			[]string{"spec.agent.logLevel", "less than or equal to 10"}, true},
		{"pull policy unknown", func(pc *kpov1.ProxyConfiguration) { pc.Spec.Agent.ImagePullPolicy = "Sometimes" },
			[]string{"spec.agent.imagePullPolicy", `Unsupported value: "Sometimes"`}, true},
		{"name too long", func(pc *kpov1.ProxyConfiguration) { pc.Name = strings.Repeat("n", 53) },
			[]string{"metadata.name must be at most 52 characters"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := &kpov1.ProxyConfiguration{
				ObjectMeta: metav1.ObjectMeta{Name: objectName("invalid-" + tc.name)},
				Spec:       kpov1.ProxyConfigurationSpec{NodeSelector: map[string]string{"test": "validation"}},
			}
			tc.mutate(pc)
			mode, settings := pc.Spec.Mode, pc.Spec.ProxySettings.DeepCopy()
			err := k8s.Create(testCtx, pc)
			if err == nil {
				_ = k8s.Delete(testCtx, pc)
				t.Fatalf("the API server accepted an invalid configuration")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if tc.podOnly {
				return
			}
			// The agent's check, on the settings as the API server would have
			// defaulted them.
			_, agentErr := kpov1.Resolve(mode, settings, field.NewPath("spec"))
			if agentErr == nil {
				t.Fatalf("ValidateSettings accepted what the API server refused (%v)", err)
			}
			for _, want := range tc.want {
				// The CRD's messages repeat the field ("spec.x must ..."), the
				// agent's name it once, before the value.
				if path, rest, ok := strings.Cut(want, " "); ok && strings.HasPrefix(path, "spec.") {
					want = rest
				}
				if !strings.Contains(agentErr.Error(), want) {
					t.Errorf("ValidateSettings' error %q does not contain %q", agentErr, want)
				}
			}
		})
	}

	t.Run("valid ipvs configuration", func(t *testing.T) {
		pc := &kpov1.ProxyConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "valid-ipvs"},
			Spec: kpov1.ProxyConfigurationSpec{
				Mode:         kpov1.ModeIPVS,
				NodeSelector: map[string]string{"test": "validation"},
				ProxySettings: kpov1.ProxySettings{
					ClusterCIDRs:      []kpov1.CIDR{"10.244.0.0/16", "fd10:244::/48"},
					NodePortAddresses: []kpov1.NodePortAddress{"primary", "198.51.100.0/24", "localhost", "all"},
					DetectLocalMode:   kpov1.DetectLocalInterfaceNamePrefix,
					DetectLocal:       kpov1.DetectLocalSettings{InterfaceNamePrefix: "veth"},
					IPVS:              &kpov1.IPVSSettings{Scheduler: "wlc", StrictARP: true, TCPTimeout: "900s"},
				},
				Agent: kpov1.AgentPodSpec{UpdateStrategy: kpov1.AgentUpdateStrategy{MaxUnavailable: ptr.To(intstr.FromString("10%"))}},
			},
		}
		if err := k8s.Create(testCtx, pc); err != nil {
			t.Fatalf("a valid configuration was rejected: %v", err)
		}
		_ = k8s.Delete(testCtx, pc)
	})

	t.Run("the bounds themselves", func(t *testing.T) {
		pc := &kpov1.ProxyConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "valid-bounds"},
			Spec: kpov1.ProxyConfigurationSpec{
				Mode:         kpov1.ModeIPVS,
				NodeSelector: map[string]string{"test": "validation"},
				ProxySettings: kpov1.ProxySettings{
					SyncPeriod: "24h", MinSyncPeriod: "0",
					Conntrack: kpov1.ConntrackSettings{MaxPerCore: ptr.To[int32](0), TCPEstablishedTimeout: "576h",
						TCPCloseWaitTimeout: "0", UDPTimeout: "1.5m", UDPStreamTimeout: "2073600s", TCPBeLiberal: true},
					IPTables: kpov1.IPTablesSettings{MasqueradeBit: ptr.To[int32](31)},
					NFTables: kpov1.NFTablesSettings{MasqueradeBit: ptr.To[int32](0)},
					IPVS:     &kpov1.IPVSSettings{TCPTimeout: "576h", TCPFinTimeout: "1s", UDPTimeout: "0"},
				},
			},
		}
		settings := pc.Spec.ProxySettings.DeepCopy()
		if err := k8s.Create(testCtx, pc); err != nil {
			t.Fatalf("a valid configuration was rejected: %v", err)
		}
		_ = k8s.Delete(testCtx, pc)
		if _, err := kpov1.Resolve(kpov1.ModeIPVS, settings, field.NewPath("spec")); err != nil {
			t.Errorf("ValidateSettings refused what the API server accepted: %v", err)
		}
	})
}

// objectName makes a test case's name a valid object name of at most 52
// characters (the CRD's own limit).
func objectName(s string) string {
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, strings.ToLower(s))
	return strings.Trim(name[:min(len(name), 52)], "-")
}

// TestKubectlApplyOfInvalidEditChangesNothing is the user's view: kubectl apply of
// a bad edit fails with the rule's message and the stored object stays as it was.
func TestKubectlApplyOfInvalidEditChangesNothing(t *testing.T) {
	needAPIServer(t)
	name := uniqueName(t, "")
	good := fmt.Sprintf("apiVersion: proxy.kpo.dev/v1alpha1\nkind: ProxyConfiguration\nmetadata:\n  name: %s\nspec:\n  mode: iptables\n  nodeSelector: {test: %s}\n  syncPeriod: 30s\n", name, name)
	if out, err := env.Kubectl(testCtx, []byte(good), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { _, _ = env.Kubectl(testCtx, nil, "delete", "proxyconfig", name, "--ignore-not-found") })
	before := getConfig(t, name)

	bad := strings.Replace(good, "mode: iptables", "mode: iptables\n  ipvs: {strictARP: true}", 1)
	out, err := env.Kubectl(testCtx, []byte(bad), "apply", "-f", "-")
	if err == nil {
		t.Fatalf("kubectl apply of an invalid edit succeeded: %s", out)
	}
	if !strings.Contains(err.Error(), "spec.ipvs may only be set when spec.mode is ipvs") {
		t.Errorf("kubectl's error does not carry the rule's message: %v", err)
	}
	after := getConfig(t, name)
	// The status may move meanwhile (the operator writes it); the spec must not.
	if after.Generation != before.Generation || !equality.Semantic.DeepEqual(after.Spec, before.Spec) {
		t.Errorf("the rejected edit changed the spec (generation %d -> %d)", before.Generation, after.Generation)
	}
}

// TestKubectlShowsColumns applies the samples with the built kubectl and checks
// what `kubectl get proxyconfig` shows.
func TestKubectlShowsColumns(t *testing.T) {
	needAPIServer(t)
	samples := filepath.Join(apiserver.RepoRoot(), "config", "samples")
	if out, err := env.Kubectl(testCtx, nil, "apply", "-f", samples); err != nil {
		t.Fatalf("kubectl apply -f config/samples/: %v: %s", err, out)
	}
	t.Cleanup(func() { _, _ = env.Kubectl(testCtx, nil, "delete", "-f", samples, "--ignore-not-found") })
	entries, err := os.ReadDir(samples)
	if err != nil || len(entries) == 0 {
		t.Fatalf("no samples: %v", err)
	}

	// The sample selects every node: give it one, with a ready report.
	sel := uniqueName(t, "")
	createNode(t, sel+"-a", map[string]string{"test": sel})
	gen := getConfig(t, "default").Generation
	writeReport(t, sel+"-a", "default", report{generation: gen, mode: kpov1.ModeNFTables, synced: metav1.ConditionTrue})
	waitForStatus(t, "default", func(pc *kpov1.ProxyConfiguration) error {
		return hasCondition(pc, kpov1.ConditionAvailable, metav1.ConditionTrue, "")
	})

	checkTable := func(args []string, header []string, row []string) {
		t.Helper()
		out, err := env.Kubectl(testCtx, nil, args...)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if got := strings.Fields(lines[0]); !equalStrings(got, header) {
			t.Errorf("kubectl %v header %q, want %q", args, got, header)
		}
		found := false
		for _, l := range lines[1:] {
			fields := strings.Fields(l)
			if len(fields) > 0 && fields[0] == row[0] {
				found = true
				for i, want := range row {
					if want != "*" && (i >= len(fields) || fields[i] != want) {
						t.Errorf("kubectl %v row %q, want %q", args, fields, row)
						break
					}
				}
			}
		}
		if !found {
			t.Errorf("kubectl %v shows no %s:\n%s", args, row[0], out)
		}
	}
	checkTable([]string{"get", "proxyconfig"},
		[]string{"NAME", "MODE", "DESIRED", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"},
		[]string{"default", "nftables", "1", "1", "1", "True", "*"})
	checkTable([]string{"get", "pxc", "-o", "wide"},
		[]string{"NAME", "MODE", "DESIRED", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "ACTIVE", "DEGRADED"},
		[]string{"default", "nftables", "1", "1", "1", "True", "*", "nftables", "AsExpected"})
	checkTable([]string{"get", "proxynodestatus"},
		[]string{"NAME", "CONFIG", "MODE", "SYNCED", "SERVICES", "ENDPOINTS", "REPORTED", "AGE"},
		[]string{sel + "-a", "default", "nftables", "True", "*", "*", "*", "*"})
}

func equalStrings(a, b []string) bool {
	return strings.Join(a, " ") == strings.Join(b, " ")
}

// TestDeployManifestsApply checks `make deploy`'s manifests against the real API
// server: kustomize (built into kubectl) renders config/default and the server
// accepts every object (dry run).
func TestDeployManifestsApply(t *testing.T) {
	needAPIServer(t)
	dir := filepath.Join(apiserver.RepoRoot(), "config", "default")
	out, err := env.Kubectl(testCtx, nil, "apply", "--server-side", "--dry-run=server", "-k", dir)
	if err != nil {
		t.Fatalf("kubectl apply -k config/default: %v: %s", err, out)
	}
	for _, want := range []string{"deployment.apps/kpo-operator", "clusterrole.rbac.authorization.k8s.io/kpo-operator",
		"role.rbac.authorization.k8s.io/kpo-operator", "clusterrole.rbac.authorization.k8s.io/kpo-agent",
		"validatingadmissionpolicy.admissionregistration.k8s.io/kpo-agent-node-status",
		"validatingadmissionpolicybinding.admissionregistration.k8s.io/kpo-agent-node-status",
		"customresourcedefinition.apiextensions.k8s.io/proxyconfigurations.proxy.kpo.dev"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl output does not mention %s:\n%s", want, out)
		}
	}
}
