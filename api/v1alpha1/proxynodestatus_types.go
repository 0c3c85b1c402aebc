package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Condition types of a ProxyNodeStatus.
const (
	// NodeConditionSynced is True when the kernel holds the rules of the agent's last
	// complete sync of the current configuration.
	NodeConditionSynced = "Synced"
	// NodeConditionHealthy is True when the agent's rules are fresh (its /healthz answers 200).
	NodeConditionHealthy = "Healthy"
)

// Reasons used in ProxyNodeStatus conditions.
const (
	NodeReasonSynced          = "Synced"
	NodeReasonSyncFailed      = "SyncFailed"
	NodeReasonNotSyncedYet    = "NotSyncedYet"
	NodeReasonModeUnavailable = "ModeUnavailable"
	NodeReasonIPVSUnavailable = "IPVSUnavailable"
	NodeReasonFresh           = "Fresh"
	NodeReasonStale           = "RulesStale"
	NodeReasonCleanedUp       = "CleanedUp"
	// NodeReasonCleanupFailed: the configuration is being deleted and removing
	// kpo's rules failed; the message names what remains.
	NodeReasonCleanupFailed = "CleanupFailed"
	// NodeReasonHandedOver: the configuration is being deleted and another one
	// takes the node over; its agent replaces the rules (make-before-break).
	NodeReasonHandedOver = "HandedOver"
	// NodeReasonNotReporting is the operator's, never an agent's: the node's
	// report was not written for longer than its staleAfterSeconds, so the
	// agent (or its node) stopped reporting and its last word is not trusted.
	NodeReasonNotReporting = "NotReporting"
)

// MaxRejectedObjects is how many rejected objects a ProxyNodeStatus names.
const MaxRejectedObjects = 10

// RejectedObject is (a part of) an API object the agent does not program: a
// value the kernel would refuse (such as an EndpointSlice port of 70000), or
// the losing side of a conflict between Services (two Services with the same
// externalIP and port). The rest of the node's rules are programmed.
type RejectedObject struct {
	// Kind is Service or EndpointSlice.
	// +kubebuilder:validation:MaxLength=64
	Kind string `json:"kind"`
	// Namespace of the object.
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Namespace string `json:"namespace,omitempty"`
	// Name of the object.
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// Reason is a CamelCase word, such as InvalidEndpointPort or ExternalIPConflict.
	// +kubebuilder:validation:MaxLength=64
	Reason string `json:"reason"`
	// Message says what is skipped and why.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Message string `json:"message,omitempty"`
}

// ProxyNodeReport is what one node's agent reports about the node.
type ProxyNodeReport struct {
	// Configuration is the name of the ProxyConfiguration the agent applies.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Configuration string `json:"configuration,omitempty"`

	// ConfigurationGeneration is the generation of that ProxyConfiguration the agent applies.
	// +optional
	ConfigurationGeneration int64 `json:"configurationGeneration,omitempty"`

	// RequestedMode is the mode the configuration asks for.
	// +optional
	RequestedMode Mode `json:"requestedMode,omitempty"`

	// ActiveMode is the mode whose rules the kernel holds. It differs from RequestedMode
	// when the node's kernel cannot run the requested mode and the agent keeps the old one.
	// +optional
	ActiveMode Mode `json:"activeMode,omitempty"`

	// LastSyncTime is when the last successful sync finished, as of
	// LastReportTime: a sync that changes nothing the operator needs (counts,
	// times) is not written on its own (docs/scale.md).
	// +optional
	LastSyncTime *metav1.Time `json:"lastSyncTime,omitempty"`

	// LastSyncDuration is how long that sync took, such as 12ms.
	// +kubebuilder:validation:MaxLength=32
	// +optional
	LastSyncDuration string `json:"lastSyncDuration,omitempty"`

	// LastFullSyncTime is when the last successful full (not partial) sync finished.
	// +optional
	LastFullSyncTime *metav1.Time `json:"lastFullSyncTime,omitempty"`

	// Services is the number of service ports programmed.
	// +optional
	Services int32 `json:"services"`
	// Endpoints is the number of endpoints programmed.
	// +optional
	Endpoints int32 `json:"endpoints"`
	// Rules is the number of rules (or map elements, or virtual servers) the mode holds.
	// +optional
	Rules int32 `json:"rules"`

	// ProgrammedModel identifies the model the last successful sync
	// programmed into the kernel, as of LastReportTime: digests of what every
	// service port and the node's settings ask the kernel for. It is
	// computed when a report is written (it rides the writes that happen
	// anyway, never causes one), so a sync after LastReportTime is not in it.
	// kubectl kpo explain computes the same digests of the model it builds
	// from the objects it reads and says whether the node has programmed it.
	// +optional
	ProgrammedModel *ProgrammedModel `json:"programmedModel,omitempty"`

	// LastError is the last sync error, empty after a successful sync.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	LastError string `json:"lastError,omitempty"`

	// Conntrack says which conntrack sysctls of spec.conntrack the agent set at start.
	// +optional
	Conntrack *ConntrackSysctls `json:"conntrack,omitempty"`

	// RejectedObjects names the first (in the order of kind, namespace, name and
	// reason) of the API objects, or parts of them, that the agent skips as
	// invalid or that lose a conflict with another Service.
	// +kubebuilder:validation:MaxItems=10
	// +listType=atomic
	// +optional
	RejectedObjects []RejectedObject `json:"rejectedObjects,omitempty"`
	// RejectedObjectCount is how many there are in all (one per object and reason).
	// +optional
	RejectedObjectCount int32 `json:"rejectedObjectCount,omitempty"`

	// LastReportTime is when the agent wrote this report. It writes when its
	// state changes (conditions, mode, errors, rejected objects) and otherwise
	// once per heartbeat (5 minutes), with its current counts and sync times.
	// +optional
	LastReportTime *metav1.Time `json:"lastReportTime,omitempty"`
	// StaleAfterSeconds is how long the report may be trusted without a newer
	// write (two heartbeats and their jitter): the operator counts a node
	// whose report it has not seen written for that long as not ready, with
	// reason NotReporting, instead of believing the report's last word.
	// +kubebuilder:validation:Minimum=0
	// +optional
	StaleAfterSeconds int32 `json:"staleAfterSeconds,omitempty"`

	// AgentVersion is the version of the agent binary.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	AgentVersion string `json:"agentVersion,omitempty"`

	// Conditions: Synced and Healthy.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ProgrammedModel identifies a node's model by digests (nodeagent/explain's
// Hasher): equal digests, equal model.
type ProgrammedModel struct {
	// Services is the digest of every service port the node proxies: its
	// addresses, policies and resolved endpoint sets.
	// +kubebuilder:validation:MaxLength=64
	Services string `json:"services"`
	// Node is the digest of the node's settings: NodePort addresses, how
	// pods' traffic is told apart (detect-local) and the service ranges.
	// +kubebuilder:validation:MaxLength=64
	Node string `json:"node"`
	// SyncTime is when the sync that programmed this model finished.
	SyncTime metav1.Time `json:"syncTime"`
}

// ProxyNodeStatus reports what one node's agent really runs. It is named after the
// node, written only by that node's agent and owned by the Node, so that it goes
// away with the node.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName={pns}
// +kubebuilder:selectablefield:JSONPath=`.status.configuration`
// +kubebuilder:printcolumn:name="Config",type=string,JSONPath=`.status.configuration`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.status.activeMode`
// +kubebuilder:printcolumn:name="Synced",type=string,JSONPath=`.status.conditions[?(@.type=="Synced")].status`
// +kubebuilder:printcolumn:name="Services",type=integer,JSONPath=`.status.services`
// +kubebuilder:printcolumn:name="Endpoints",type=integer,JSONPath=`.status.endpoints`
// +kubebuilder:printcolumn:name="Reported",type=date,JSONPath=`.status.lastReportTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Synced")].reason`,priority=1
// +kubebuilder:printcolumn:name="Last-sync",type=date,JSONPath=`.status.lastSyncTime`,priority=1
// +kubebuilder:printcolumn:name="Rules",type=integer,JSONPath=`.status.rules`,priority=1
// +kubebuilder:printcolumn:name="Duration",type=string,JSONPath=`.status.lastSyncDuration`,priority=1
// +kubebuilder:printcolumn:name="Rejected",type=integer,JSONPath=`.status.rejectedObjectCount`,priority=1
// +kubebuilder:printcolumn:name="Model",type=string,JSONPath=`.status.programmedModel.services`,priority=1
type ProxyNodeStatus struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Status ProxyNodeReport `json:"status,omitempty"`
}

// ProxyNodeStatusList is a list of ProxyNodeStatus.
//
// +kubebuilder:object:root=true
type ProxyNodeStatusList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ProxyNodeStatus `json:"items"`
}

// ConntrackSysctls is what the agent did with spec.conntrack when it started,
// as "name=value" (sysctl names such as net.netfilter.nf_conntrack_max).
type ConntrackSysctls struct {
	// Applied are the settings the kernel now holds.
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=128
	// +listType=atomic
	// +optional
	Applied []string `json:"applied,omitempty"`
	// Failed are the settings the agent could not apply, each with the reason
	// (for example nf_conntrack_max, which only the host's network namespace may set).
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=512
	// +listType=atomic
	// +optional
	Failed []string `json:"failed,omitempty"`
}
