package v1alpha1

import (
	"fmt"
	"time"

	"sigs.k8s.io/yaml"
)

// AgentConfigKey is the key of the agent configuration in the operator's ConfigMap,
// and the file name the agent reads.
const AgentConfigKey = "config.yaml"

// AgentConfigKind is the kind written into the agent configuration file.
const AgentConfigKind = "AgentConfiguration"

// AgentReadyPath is the agent's readiness endpoint on its healthz port: 503
// until the agent's first successful sync. The operator's DaemonSet probes it,
// so that a configuration that cannot sync stops a rolling update.
const AgentReadyPath = "/readyz"

// AgentConfiguration is the node agent's configuration file. The operator renders it
// from a ProxyConfiguration into a ConfigMap; the agent reads it at start. It is the
// whole contract between the two: the agent never needs the CR itself.
//
// +kubebuilder:object:generate=true
type AgentConfiguration struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`

	// ConfigurationName and ConfigurationGeneration identify the spec this file was
	// rendered from; the agent reports them back in its ProxyNodeStatus.
	ConfigurationName       string `json:"configurationName"`
	ConfigurationGeneration int64  `json:"configurationGeneration"`

	Mode Mode `json:"mode"`

	ProxySettings `json:",inline"`
}

// ParseAgentConfiguration reads an agent configuration file, fills in kube-proxy's
// defaults for anything left empty, so that the agent never runs on zero values,
// and validates it with the CRD's rules (Validate), so that the agent never runs
// on values the API server would refuse.
func ParseAgentConfiguration(data []byte) (*AgentConfiguration, error) {
	cfg := &AgentConfiguration{}
	if err := yaml.UnmarshalStrict(data, cfg); err != nil {
		return nil, fmt.Errorf("parsing agent configuration: %w", err)
	}
	if cfg.Kind != AgentConfigKind || cfg.APIVersion != GroupVersion.String() {
		return nil, fmt.Errorf("agent configuration has apiVersion %q kind %q, want %q %q",
			cfg.APIVersion, cfg.Kind, GroupVersion.String(), AgentConfigKind)
	}
	mode, err := Resolve(cfg.Mode, &cfg.ProxySettings, nil)
	if err != nil {
		return nil, fmt.Errorf("invalid agent configuration: %w", err)
	}
	cfg.Mode = mode
	return cfg, nil
}

// DefaultMetricsBindAddress keeps the agents' metrics on the node, as
// kube-proxy's default (127.0.0.1:10249).
const DefaultMetricsBindAddress = "127.0.0.1"

// Default fills in kube-proxy's defaults for every unset setting: the
// defaulting half of Resolve (call Resolve). The CRD's OpenAPI defaults say
// the same; this keeps configurations rendered by hand or by an older
// operator safe.
func (s *ProxySettings) Default() {
	if s.DetectLocalMode == "" {
		s.DetectLocalMode = DetectLocalClusterCIDR
	}
	if s.SyncPeriod == "" {
		s.SyncPeriod = "30s"
	}
	if s.MinSyncPeriod == "" {
		s.MinSyncPeriod = "1s"
	}
	if s.HealthzPort == 0 {
		s.HealthzPort = 10256
	}
	if s.MetricsBindAddress == "" {
		s.MetricsBindAddress = DefaultMetricsBindAddress
	}
	if s.MetricsPort == 0 {
		s.MetricsPort = 10249
	}
	setInt32(&s.Conntrack.MaxPerCore, 32768)
	setInt32(&s.Conntrack.Min, 131072)
	if s.Conntrack.TCPEstablishedTimeout == "" {
		s.Conntrack.TCPEstablishedTimeout = "24h"
	}
	if s.Conntrack.TCPCloseWaitTimeout == "" {
		s.Conntrack.TCPCloseWaitTimeout = "1h"
	}
	setInt32(&s.IPTables.MasqueradeBit, 14)
	if s.IPTables.LocalhostNodePorts == nil {
		t := true
		s.IPTables.LocalhostNodePorts = &t
	}
	setInt32(&s.NFTables.MasqueradeBit, 14)
	if s.IPVS != nil && s.IPVS.Scheduler == "" {
		s.IPVS.Scheduler = "rr"
	}
}

func setInt32(p **int32, v int32) {
	if *p == nil {
		*p = &v
	}
}

// SyncPeriodDuration parses SyncPeriod.
func (s *ProxySettings) SyncPeriodDuration() (time.Duration, error) {
	return s.SyncPeriod.Parse("syncPeriod")
}

// MinSyncPeriodDuration parses MinSyncPeriod.
func (s *ProxySettings) MinSyncPeriodDuration() (time.Duration, error) {
	return s.MinSyncPeriod.Parse("minSyncPeriod")
}

// Parse returns the duration; field names the setting in the error.
func (d Duration) Parse(field string) (time.Duration, error) {
	if d == "" {
		return 0, nil
	}
	v, err := time.ParseDuration(string(d))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", field, err)
	}
	return v, nil
}

// MarshalAgentConfiguration renders the file the agent reads.
func MarshalAgentConfiguration(cfg *AgentConfiguration) ([]byte, error) {
	cfg.APIVersion = GroupVersion.String()
	cfg.Kind = AgentConfigKind
	return yaml.Marshal(cfg)
}
