package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Mode is the kernel mechanism a node agent programs.
// +kubebuilder:validation:Enum=iptables;nftables;ipvs
type Mode string

const (
	ModeIPTables Mode = "iptables"
	ModeNFTables Mode = "nftables"
	ModeIPVS     Mode = "ipvs"
)

// AllModes lists every mode, in the order the agent cleans up leftovers.
var AllModes = []Mode{ModeIPTables, ModeNFTables, ModeIPVS}

// CIDR is an IPv4 or IPv6 network in CIDR notation, such as 10.244.0.0/16 or fd10:244::/48.
// +kubebuilder:validation:MaxLength=64
// +kubebuilder:validation:XValidation:rule="isCIDR(self)",message="must be a valid CIDR such as 10.244.0.0/16 or fd10:244::/48"
type CIDR string

// NodePortAddress is a CIDR whose addresses on the node accept NodePort traffic, or
// one of kube-proxy's keywords: "primary" (the node's primary IPs), "localhost"
// (127.0.0.0/8 and ::1), "all" (every address).
// +kubebuilder:validation:MaxLength=64
// +kubebuilder:validation:XValidation:rule="self in ['primary', 'localhost', 'all'] || isCIDR(self)",message="must be a valid CIDR or one of primary, localhost, all"
type NodePortAddress string

// DetectLocalMode is how the proxy recognises traffic from this node's pods
// (kube-proxy's detectLocalMode).
// +kubebuilder:validation:Enum=ClusterCIDR;NodeCIDR;BridgeInterface;InterfaceNamePrefix
type DetectLocalMode string

// Detect-local modes.
const (
	// DetectLocalClusterCIDR: a source in clusterCIDRs is a pod.
	DetectLocalClusterCIDR DetectLocalMode = "ClusterCIDR"
	// DetectLocalNodeCIDR: a source in this node's podCIDRs is a pod of this node.
	DetectLocalNodeCIDR DetectLocalMode = "NodeCIDR"
	// DetectLocalBridgeInterface: a packet arriving on detectLocal.bridgeInterface.
	DetectLocalBridgeInterface DetectLocalMode = "BridgeInterface"
	// DetectLocalInterfaceNamePrefix: a packet arriving on an interface whose
	// name starts with detectLocal.interfaceNamePrefix.
	DetectLocalInterfaceNamePrefix DetectLocalMode = "InterfaceNamePrefix"
)

// DetectLocalSettings are the interface names of the interface-based modes.
type DetectLocalSettings struct {
	// BridgeInterface is the bridge pods are attached to (mode BridgeInterface).
	// +kubebuilder:validation:MaxLength=15
	// +kubebuilder:validation:Pattern=`^[a-zA-Z0-9_.-]*$`
	// +optional
	BridgeInterface string `json:"bridgeInterface,omitempty"`
	// InterfaceNamePrefix starts the names of pods' host-side interfaces, such as
	// veth or cali (mode InterfaceNamePrefix).
	// +kubebuilder:validation:MaxLength=15
	// +kubebuilder:validation:Pattern=`^[a-zA-Z0-9_.-]*$`
	// +optional
	InterfaceNamePrefix string `json:"interfaceNamePrefix,omitempty"`
}

// Duration is a Go duration string, such as 500ms, 30s or 1h.
// It is a string (not metav1.Duration) so that CEL rules can compare durations.
// +kubebuilder:validation:MaxLength=32
// +kubebuilder:validation:Pattern=`^(0|([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+)$`
type Duration string

// ProxyConfigurationSpec says how the selected nodes proxy Service traffic.
//
// +kubebuilder:validation:XValidation:rule="!has(self.detectLocalMode) || self.detectLocalMode != 'BridgeInterface' || (has(self.detectLocal) && has(self.detectLocal.bridgeInterface) && size(self.detectLocal.bridgeInterface) > 0)",message="spec.detectLocal.bridgeInterface is required when spec.detectLocalMode is BridgeInterface",fieldPath=".detectLocal.bridgeInterface"
// +kubebuilder:validation:XValidation:rule="!has(self.detectLocalMode) || self.detectLocalMode != 'InterfaceNamePrefix' || (has(self.detectLocal) && has(self.detectLocal.interfaceNamePrefix) && size(self.detectLocal.interfaceNamePrefix) > 0)",message="spec.detectLocal.interfaceNamePrefix is required when spec.detectLocalMode is InterfaceNamePrefix",fieldPath=".detectLocal.interfaceNamePrefix"
// +kubebuilder:validation:XValidation:rule="!has(self.ipvs) || self.mode == 'ipvs'",message="spec.ipvs may only be set when spec.mode is ipvs",fieldPath=".ipvs"
// +kubebuilder:validation:XValidation:rule="!has(self.minSyncPeriod) || !has(self.syncPeriod) || duration(self.minSyncPeriod) <= duration(self.syncPeriod)",message="spec.minSyncPeriod must not be longer than spec.syncPeriod",fieldPath=".minSyncPeriod"
// +kubebuilder:validation:XValidation:rule="!has(self.healthzPort) || !has(self.metricsPort) || self.healthzPort != self.metricsPort",message="spec.healthzPort and spec.metricsPort must differ",fieldPath=".metricsPort"
type ProxyConfigurationSpec struct {
	// Mode is the dataplane the node agents program: iptables, nftables or ipvs.
	// Editing it switches every selected node, make-before-break.
	// +kubebuilder:default=iptables
	// +optional
	Mode Mode `json:"mode,omitempty"`

	// NodeSelector selects the nodes that run this configuration's agent.
	// Empty selects every node. A node selected by an older ProxyConfiguration stays with it.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// Tolerations of the agent pods. The default tolerates every taint, like kube-proxy:
	// a node that cannot proxy Services is broken whatever its taints.
	// +kubebuilder:default={{operator: "Exists"}}
	// +kubebuilder:validation:MaxItems=64
	// +optional
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// Agent configures the node-agent pods.
	// +kubebuilder:default={}
	// +optional
	Agent AgentPodSpec `json:"agent,omitempty"`

	// ProxySettings are the proxy's settings, with kube-proxy's meaning and defaults.
	ProxySettings `json:",inline"`
}

// AgentPodSpec configures the node-agent DaemonSet's pods.
type AgentPodSpec struct {
	// Image of the node agent. Defaults to the operator's --agent-image.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Image string `json:"image,omitempty"`

	// ImagePullPolicy of the agent container.
	// +kubebuilder:validation:Enum=Always;IfNotPresent;Never
	// +kubebuilder:default=IfNotPresent
	// +optional
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`

	// Resources of the agent container.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// PriorityClassName of the agent pods.
	// +kubebuilder:default=system-node-critical
	// +kubebuilder:validation:MaxLength=253
	// +optional
	PriorityClassName string `json:"priorityClassName,omitempty"`

	// UpdateStrategy bounds how many agents restart at once when the configuration changes.
	// +optional
	UpdateStrategy AgentUpdateStrategy `json:"updateStrategy,omitempty"`

	// LogLevel is the agent's klog verbosity (0 to 10).
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10
	// +kubebuilder:default=2
	// +optional
	LogLevel int32 `json:"logLevel,omitempty"`
}

// AgentUpdateStrategy is the agents' rolling update.
type AgentUpdateStrategy struct {
	// MaxUnavailable is the number or percentage of agents that may be restarting at once
	// (a DaemonSet's rollingUpdate.maxUnavailable). Default 1.
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? self >= 1 : self.matches('^[1-9][0-9]?%$|^100%$')",message="must be a positive count or a percentage between 1% and 100%"
	// +optional
	MaxUnavailable *intstr.IntOrString `json:"maxUnavailable,omitempty"`
}

// ProxySettings are the proxy's own settings. They are rendered into the agents'
// configuration file; field names and defaults follow KubeProxyConfiguration.
type ProxySettings struct {
	// ClusterCIDRs are the pod networks. Traffic from outside them to a Service is
	// masqueraded (kube-proxy's detect-local by cluster CIDR).
	// +kubebuilder:validation:MaxItems=16
	// +listType=set
	// +optional
	ClusterCIDRs []CIDR `json:"clusterCIDRs,omitempty"`

	// DetectLocalMode is how traffic from pods is told from other traffic (pods
	// reaching a ClusterIP keep their address, others are masqueraded; pods
	// short-circuit external traffic with externalTrafficPolicy Local):
	// ClusterCIDR (default: the source is in clusterCIDRs), NodeCIDR (the source
	// is in this node's podCIDRs), BridgeInterface or InterfaceNamePrefix (the
	// packet arrives on that bridge, or on an interface with that prefix).
	// +kubebuilder:default=ClusterCIDR
	// +optional
	DetectLocalMode DetectLocalMode `json:"detectLocalMode,omitempty"`

	// DetectLocal holds the interface names of the interface-based modes.
	// +optional
	DetectLocal DetectLocalSettings `json:"detectLocal,omitempty"`

	// MasqueradeAll masquerades all Service traffic, not only traffic from outside the cluster.
	// +optional
	MasqueradeAll bool `json:"masqueradeAll,omitempty"`

	// NodePortAddresses are the node addresses that accept NodePort traffic, as
	// kube-proxy's: CIDRs (the node's interface addresses inside them), "primary"
	// (the node's primary IPs), "localhost", "all". Each IP family is resolved on
	// its own: a family no value names accepts NodePorts on all its addresses.
	// Empty means "primary" in nftables mode and all local addresses otherwise,
	// kube-proxy's defaults.
	// +kubebuilder:validation:MaxItems=16
	// +listType=set
	// +optional
	NodePortAddresses []NodePortAddress `json:"nodePortAddresses,omitempty"`

	// SyncPeriod is the longest time between two full resyncs of the rules,
	// between 1s and 24h. Rules count as stale after twice this without a
	// successful sync.
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('24h')",message="spec.syncPeriod must be between 1s and 24h"
	// +optional
	SyncPeriod Duration `json:"syncPeriod,omitempty"`

	// MinSyncPeriod is the shortest time between two syncs; changes arriving faster are batched.
	// 0 syncs every change at once (as kube-proxy); at most syncPeriod.
	// +kubebuilder:default="1s"
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('24h')",message="spec.minSyncPeriod must be at most 24h"
	// +optional
	MinSyncPeriod Duration `json:"minSyncPeriod,omitempty"`

	// HealthzPort is the node port of the agent's /healthz and /livez (on all addresses).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +kubebuilder:default=10256
	// +optional
	HealthzPort int32 `json:"healthzPort,omitempty"`

	// MetricsPort is the node port of the agent's Prometheus /metrics (on
	// metricsBindAddress).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +kubebuilder:default=10249
	// +optional
	MetricsPort int32 `json:"metricsPort,omitempty"`

	// MetricsBindAddress is the IP address the agent's /metrics listens on
	// (the port is metricsPort), as kube-proxy's metricsBindAddress: 127.0.0.1
	// (the default) keeps the metrics on the node; 0.0.0.0 (or ::, both
	// families) lets Prometheus scrape them over the network
	// (config/monitoring), on every address of the node, as kube-proxy
	// does with that setting.
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self)",message="spec.metricsBindAddress must be an IP address such as 127.0.0.1 or 0.0.0.0"
	// +kubebuilder:default="127.0.0.1"
	// +optional
	MetricsBindAddress string `json:"metricsBindAddress,omitempty"`

	// Conntrack sets the node's connection-tracking limits and timeouts.
	// +kubebuilder:default={}
	// +optional
	Conntrack ConntrackSettings `json:"conntrack,omitempty"`

	// IPTables holds settings of the iptables mode.
	// +kubebuilder:default={}
	// +optional
	IPTables IPTablesSettings `json:"iptables,omitempty"`

	// NFTables holds settings of the nftables mode.
	// +kubebuilder:default={}
	// +optional
	NFTables NFTablesSettings `json:"nftables,omitempty"`

	// IPVS holds settings of the ipvs mode; only allowed when mode is ipvs.
	// +optional
	IPVS *IPVSSettings `json:"ipvs,omitempty"`

	// MigrateFromKubeProxy, once kpo's rules are in place on a node, removes what
	// upstream kube-proxy left there: its iptables chains (KUBE-SERVICES,
	// KUBE-SVC-*, ... but not kubelet's KUBE-FIREWALL or canaries), its
	// "kube-proxy" nftables tables and its kube-ipvs0 interface. Stop
	// kube-proxy first; kpo never touches kube-proxy's rules otherwise.
	// +optional
	MigrateFromKubeProxy bool `json:"migrateFromKubeProxy,omitempty"`
}

// ConntrackSettings are kube-proxy's conntrack settings, applied by the agent at
// start as kube-proxy applies them. A zero value leaves the kernel's setting alone.
type ConntrackSettings struct {
	// MaxPerCore is the number of conntrack entries allowed per CPU core:
	// net.netfilter.nf_conntrack_max becomes maxPerCore × CPUs (at least min,
	// at most 1048576 as in kube-proxy). 0 leaves nf_conntrack_max alone and ignores min.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:default=32768
	// +optional
	MaxPerCore *int32 `json:"maxPerCore,omitempty"`

	// Min is the lower bound of the conntrack table size, whatever MaxPerCore says.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:default=131072
	// +optional
	Min *int32 `json:"min,omitempty"`

	// TCPEstablishedTimeout is how long an idle established TCP connection is tracked
	// (net.netfilter.nf_conntrack_tcp_timeout_established). 0 keeps the kernel's.
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('576h')",message="spec.conntrack.tcpEstablishedTimeout must be at most 576h (24 days; the kernel refuses much more)"
	// +kubebuilder:validation:XValidation:rule="int(duration(self)) % 1000000000 == 0",message="spec.conntrack.tcpEstablishedTimeout must be a whole number of seconds (the kernel counts in seconds)"
	// +optional
	TCPEstablishedTimeout Duration `json:"tcpEstablishedTimeout,omitempty"`

	// TCPCloseWaitTimeout is how long a TCP connection in CLOSE_WAIT is tracked
	// (net.netfilter.nf_conntrack_tcp_timeout_close_wait). 0 keeps the kernel's.
	// +kubebuilder:default="1h"
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('576h')",message="spec.conntrack.tcpCloseWaitTimeout must be at most 576h (24 days; the kernel refuses much more)"
	// +kubebuilder:validation:XValidation:rule="int(duration(self)) % 1000000000 == 0",message="spec.conntrack.tcpCloseWaitTimeout must be a whole number of seconds (the kernel counts in seconds)"
	// +optional
	TCPCloseWaitTimeout Duration `json:"tcpCloseWaitTimeout,omitempty"`

	// TCPBeLiberal, when true, makes conntrack accept TCP packets outside the
	// window instead of marking them INVALID (net.netfilter.nf_conntrack_tcp_be_liberal=1).
	// False leaves the kernel's setting alone, as kube-proxy does.
	// +optional
	TCPBeLiberal bool `json:"tcpBeLiberal,omitempty"`

	// UDPTimeout is how long an idle, unreplied UDP flow is tracked
	// (net.netfilter.nf_conntrack_udp_timeout). 0 keeps the kernel's.
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('576h')",message="spec.conntrack.udpTimeout must be at most 576h (24 days; the kernel refuses much more)"
	// +kubebuilder:validation:XValidation:rule="int(duration(self)) % 1000000000 == 0",message="spec.conntrack.udpTimeout must be a whole number of seconds (the kernel counts in seconds)"
	// +optional
	UDPTimeout Duration `json:"udpTimeout,omitempty"`

	// UDPStreamTimeout is how long an idle UDP stream (replied flow) is tracked
	// (net.netfilter.nf_conntrack_udp_timeout_stream). 0 keeps the kernel's.
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('576h')",message="spec.conntrack.udpStreamTimeout must be at most 576h (24 days; the kernel refuses much more)"
	// +kubebuilder:validation:XValidation:rule="int(duration(self)) % 1000000000 == 0",message="spec.conntrack.udpStreamTimeout must be a whole number of seconds (the kernel counts in seconds)"
	// +optional
	UDPStreamTimeout Duration `json:"udpStreamTimeout,omitempty"`
}

// IPTablesSettings are settings of the iptables mode.
type IPTablesSettings struct {
	// MasqueradeBit is the bit of the packet mark that flags packets to masquerade:
	// 0 to 31, but not 15, the bit of kubelet's KUBE-MARK-DROP.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=31
	// +kubebuilder:validation:XValidation:rule="self != 15",message="spec.iptables.masqueradeBit must not be 15: kubelet's KUBE-MARK-DROP uses that bit (0x8000)"
	// +kubebuilder:default=14
	// +optional
	MasqueradeBit *int32 `json:"masqueradeBit,omitempty"`

	// LocalhostNodePorts lets NodePorts answer on 127.0.0.1 (IPv4 only, as kube-proxy).
	// +kubebuilder:default=true
	// +optional
	LocalhostNodePorts *bool `json:"localhostNodePorts,omitempty"`
}

// NFTablesSettings are settings of the nftables mode.
type NFTablesSettings struct {
	// MasqueradeBit is the bit of the packet mark that flags packets to masquerade:
	// 0 to 31, but not 15, the bit of kubelet's KUBE-MARK-DROP.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=31
	// +kubebuilder:validation:XValidation:rule="self != 15",message="spec.nftables.masqueradeBit must not be 15: kubelet's KUBE-MARK-DROP uses that bit (0x8000)"
	// +kubebuilder:default=14
	// +optional
	MasqueradeBit *int32 `json:"masqueradeBit,omitempty"`
}

// IPVSScheduler is an IPVS scheduling algorithm.
// +kubebuilder:validation:Enum=rr;wrr;lc;wlc;lblc;lblcr;sh;dh;sed;nq;mh;fo;ovf;twos
type IPVSScheduler string

// IPVSSettings are settings of the ipvs mode.
type IPVSSettings struct {
	// Scheduler is the IPVS scheduler of every virtual server.
	// +kubebuilder:default=rr
	// +optional
	Scheduler IPVSScheduler `json:"scheduler,omitempty"`

	// StrictARP makes the node answer ARP only for addresses on the receiving interface
	// (arp_ignore=1, arp_announce=2), needed when load-balancer IPs live on kpo-ipvs0.
	// +optional
	StrictARP bool `json:"strictARP,omitempty"`

	// TCPTimeout is IPVS's idle timeout of TCP sessions. 0 keeps the kernel's.
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('576h')",message="spec.ipvs.tcpTimeout must be at most 576h (24 days; the kernel refuses much more)"
	// +kubebuilder:validation:XValidation:rule="int(duration(self)) % 1000000000 == 0",message="spec.ipvs.tcpTimeout must be a whole number of seconds (the kernel counts in seconds)"
	// +optional
	TCPTimeout Duration `json:"tcpTimeout,omitempty"`

	// TCPFinTimeout is IPVS's timeout of TCP sessions after FIN. 0 keeps the kernel's.
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('576h')",message="spec.ipvs.tcpFinTimeout must be at most 576h (24 days; the kernel refuses much more)"
	// +kubebuilder:validation:XValidation:rule="int(duration(self)) % 1000000000 == 0",message="spec.ipvs.tcpFinTimeout must be a whole number of seconds (the kernel counts in seconds)"
	// +optional
	TCPFinTimeout Duration `json:"tcpFinTimeout,omitempty"`

	// UDPTimeout is IPVS's timeout of UDP flows. 0 keeps the kernel's.
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('576h')",message="spec.ipvs.udpTimeout must be at most 576h (24 days; the kernel refuses much more)"
	// +kubebuilder:validation:XValidation:rule="int(duration(self)) % 1000000000 == 0",message="spec.ipvs.udpTimeout must be a whole number of seconds (the kernel counts in seconds)"
	// +optional
	UDPTimeout Duration `json:"udpTimeout,omitempty"`

	// ExcludeCIDRs are networks whose IPVS virtual servers the agent must not delete.
	// +kubebuilder:validation:MaxItems=64
	// +listType=set
	// +optional
	ExcludeCIDRs []CIDR `json:"excludeCIDRs,omitempty"`
}

// Condition types of a ProxyConfiguration.
const (
	// ConditionAvailable is True when every desired node runs the current spec and is synced.
	ConditionAvailable = "Available"
	// ConditionProgressing is True while agents are rolling out or have not yet synced the current spec.
	ConditionProgressing = "Progressing"
	// ConditionDegraded is True when some node cannot apply the spec (see failingNodes) or
	// the configuration could not be rendered or applied.
	ConditionDegraded = "Degraded"
	// ConditionCleanedUp is set while the configuration is being deleted: False
	// while the operator waits for nodes to remove their rules or to be taken
	// over (the message names them and why), and when it gives up.
	ConditionCleanedUp = "CleanedUp"
)

// Reasons used in ProxyConfiguration conditions.
const (
	ReasonAsExpected           = "AsExpected"
	ReasonRollingOut           = "RollingOut"
	ReasonNodesNotReady        = "NodesNotReady"
	ReasonNoNodes              = "NoNodesSelected"
	ReasonNodeSelectorConflict = "NodeSelectorConflict"
	ReasonNodesFailing         = "NodesFailing"
	ReasonApplyFailed          = "ApplyFailed"
	// ReasonImageNotAllowed: spec.agent.image is outside the operator's agent
	// image policy (--agent-image-allow); nothing is rendered for the spec.
	ReasonImageNotAllowed = "ImageNotAllowed"
	// ReasonWaitingForNodes: deletion waits for nodes to clean up or be taken over.
	ReasonWaitingForNodes = "WaitingForNodes"
	// ReasonCleanupTimedOut: deletion gave up waiting; the named nodes may keep rules.
	ReasonCleanupTimedOut = "CleanupTimedOut"
)

// MaxFailingNodes bounds status.failingNodes so that a broken cluster does not
// produce an oversized object.
const MaxFailingNodes = 10

// NodeFailure is one node that does not run the spec as asked.
type NodeFailure struct {
	// Node is the node's name.
	// +kubebuilder:validation:MaxLength=253
	Node string `json:"node"`
	// Reason is a CamelCase reason, such as SyncFailed or IPVSUnavailable.
	// +kubebuilder:validation:MaxLength=128
	Reason string `json:"reason"`
	// Message says what went wrong.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Message string `json:"message,omitempty"`
}

// ProxyConfigurationStatus is the roll-up of the selected nodes' ProxyNodeStatus reports.
type ProxyConfigurationStatus struct {
	// ObservedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Mode is the mode the nodes really run: the mode itself when all reporting nodes
	// agree, "Mixed" while they differ (during a switch), empty before any report.
	// +optional
	Mode string `json:"mode,omitempty"`

	// DesiredNodes is the number of nodes that should run this configuration's agent.
	// +optional
	DesiredNodes int32 `json:"desiredNodes"`
	// UpdatedNodes is the number of nodes whose agent pod runs the current spec.
	// +optional
	UpdatedNodes int32 `json:"updatedNodes"`
	// ReadyNodes is the number of nodes whose agent reports the current spec applied and synced.
	// +optional
	ReadyNodes int32 `json:"readyNodes"`

	// FailingNodes lists up to ten nodes that report a failure, with the reason.
	// +kubebuilder:validation:MaxItems=10
	// +listType=map
	// +listMapKey=node
	// +optional
	FailingNodes []NodeFailure `json:"failingNodes,omitempty"`

	// Conditions: Available, Progressing and Degraded; CleanedUp while the
	// configuration is being deleted.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ProxyConfiguration says how a set of nodes proxies Service traffic: the mode, the
// nodes and the proxy settings. The operator runs one node agent per selected node.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName={proxyconfig,pxc}
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 52",message="metadata.name must be at most 52 characters: the agent's objects are named kpo-agent-<name>"
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Desired",type=integer,JSONPath=`.status.desiredNodes`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.readyNodes`
// +kubebuilder:printcolumn:name="Up-to-date",type=integer,JSONPath=`.status.updatedNodes`
// +kubebuilder:printcolumn:name="Available",type=string,JSONPath=`.status.conditions[?(@.type=="Available")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Active",type=string,JSONPath=`.status.mode`,priority=1
// +kubebuilder:printcolumn:name="Degraded",type=string,JSONPath=`.status.conditions[?(@.type=="Degraded")].reason`,priority=1
type ProxyConfiguration struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Spec ProxyConfigurationSpec `json:"spec,omitempty"`
	// +optional
	Status ProxyConfigurationStatus `json:"status,omitempty"`
}

// ProxyConfigurationList is a list of ProxyConfigurations.
//
// +kubebuilder:object:root=true
type ProxyConfigurationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ProxyConfiguration `json:"items"`
}
