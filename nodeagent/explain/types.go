// Package explain says, in the user's terms, what a node does with traffic
// to a Service and why: which endpoints may receive it (and with what
// affinity), whether the source is masqueraded, or whether it is dropped or
// refused, each decision with the Service field, traffic policy, topology
// hint, endpoint condition or ProxyConfiguration setting behind it.
//
// It decides nothing itself: it reads the node's model as the agent builds
// it (the tracker and model.BuildServicePorts on the same objects, the
// node's NodeInfo from package nodeinfo) and the routes the backends
// translate (model.ServicePort.Routes, with their RouteWhy and the port's
// Selection), so an explanation cannot drift from what the agent programs.
// The few node-level decisions the backends make outside the routes (which
// addresses accept NodePorts, what the iptables mode leaves to routing) are
// named with the backend file that makes them.
package explain

import (
	"net/netip"

	"kpo.dev/kpo/nodeagent/model"
)

// Target is the kind of address traffic is sent to.
type Target string

const (
	ToClusterIP      Target = "clusterIP"
	ToNodePort       Target = "nodePort"
	ToExternalIP     Target = "externalIP"
	ToLoadBalancerIP Target = "loadBalancerIP"
)

// SourceKind is where traffic comes from.
type SourceKind string

const (
	FromPod      SourceKind = "pod"
	FromNode     SourceKind = "node"
	FromExternal SourceKind = "external"
)

// Source is the sender of the traffic.
type Source struct {
	Kind SourceKind `json:"kind"`
	// Name is the pod's namespace/name or the node's name ("" for an address).
	Name string `json:"name,omitempty"`
	// IP is the source address.
	IP netip.Addr `json:"ip"`
	// Node is the node a pod runs on, or the node itself.
	Node string `json:"node,omitempty"`
	// Interface is the interface the traffic arrives on at the node
	// explained, when known (detect-local by interface); "" means "the
	// pod's own interface on its node", which is what kube-proxy assumes.
	Interface string `json:"interface,omitempty"`
}

// Query is one question: traffic from Source to Addr:Port, an address of
// kind Target.
type Query struct {
	Target Target     `json:"target"`
	Addr   netip.Addr `json:"address"`
	// Port is the port used: the service port, or the NodePort.
	Port   int32  `json:"port"`
	Source Source `json:"source"`
}

// Outcome is what the node does with the traffic.
type Outcome string

const (
	// Forwarded: translated to one of Endpoints.
	Forwarded Outcome = "forwarded"
	// Dropped: silently (the client times out).
	Dropped Outcome = "dropped"
	// Refused: TCP reset or ICMP port unreachable.
	Refused Outcome = "refused"
	// NotHandled: the node's proxy rules leave the traffic alone; it goes
	// where the node routes it (nothing listens on a NodePort address that
	// does not accept NodePorts; a service address is routed away).
	NotHandled Outcome = "not handled"
)

// Explanation is what one node does with the traffic of a Query, and why.
type Explanation struct {
	// Node is the node explained; Service the service port (namespace/name:port/protocol/family).
	Node    string `json:"node"`
	Service string `json:"service"`
	Query   Query  `json:"query"`
	// SourceClass is how the node sees the source: pods (this node's, as
	// detect-local tells them), node (its own traffic) or outside.
	SourceClass string  `json:"sourceClass"`
	Outcome     Outcome `json:"outcome"`
	// Endpoints are those that may receive the traffic (Forwarded only).
	Endpoints []Endpoint `json:"endpoints,omitempty"`
	// Masquerade: the endpoint sees the node's address, not the source's.
	Masquerade bool `json:"masquerade"`
	// Affinity is the ClientIP affinity timeout ("" for none).
	Affinity string `json:"affinity,omitempty"`
	// Excluded are the endpoints the node does not use for this traffic.
	Excluded []Endpoint `json:"excluded,omitempty"`
	// Reasons are the decisions, in order, each naming what decided it.
	Reasons []Reason `json:"reasons"`
	// Programmed says whether the node's last report names this model as
	// the one it programmed (kubectl kpo sets it; nil when unknown).
	Programmed *Programmed `json:"programmed,omitempty"`
	// Warnings say what may make reality differ (a node that has not
	// programmed this model yet, an assumption about the node).
	Warnings []string `json:"warnings,omitempty"`
}

// Endpoint is one endpoint with why it is used or not.
type Endpoint struct {
	Address string `json:"address"`
	// Node is the endpoint's nodeName ("" when not set).
	Node  string `json:"node,omitempty"`
	Ready bool   `json:"ready"`
	// Hairpin: the endpoint is the sender itself; that connection is
	// masqueraded whatever the route says.
	Hairpin bool   `json:"hairpin,omitempty"`
	Why     string `json:"why"`
}

// Reason is one decision and what decided it.
type Reason struct {
	// Code is a CamelCase word (see the Reason* constants).
	Code string `json:"code"`
	// DecidedBy names the Service field, policy, endpoint condition,
	// topology hint or ProxyConfiguration setting.
	DecidedBy string `json:"decidedBy"`
	Message   string `json:"message"`
}

// Reason codes.
const (
	ReasonNotServed              = "NotServed"
	ReasonNodePortAddress        = "NodePortAddress"
	ReasonLocalhostNodePort      = "LocalhostNodePort"
	ReasonDetectLocal            = "DetectLocal"
	ReasonSourceRanges           = "LoadBalancerSourceRanges"
	ReasonClusterIP              = "ClusterIP"
	ReasonInternalPolicyLocal    = "InternalTrafficPolicyLocal"
	ReasonExternalCluster        = "ExternalTrafficPolicyCluster"
	ReasonExternalLocal          = "ExternalTrafficPolicyLocal"
	ReasonShortCircuit           = "ShortCircuit"
	ReasonPodsUnknown            = "PodsNotToldApart"
	ReasonIPVSOneSet             = "IPVSOneSet"
	ReasonTopologyNode           = "TopologyNodeHints"
	ReasonTopologyZone           = "TopologyZoneHints"
	ReasonTerminatingFallback    = "TerminatingFallback"
	ReasonNoEndpoints            = "NoEndpoints"
	ReasonNoLocalEndpoints       = "NoLocalEndpoints"
	ReasonIPTablesOutput         = "IPTablesNodeOutput"
	ReasonIPTablesNodePortFilter = "IPTablesNodePortFilter"
	ReasonMasqueradeAll          = "MasqueradeAll"
	ReasonMasquerade             = "Masquerade"
	ReasonKeepSource             = "KeepSource"
	ReasonHairpin                = "Hairpin"
	ReasonAffinity               = "SessionAffinity"
	ReasonRejected               = "Rejected"
)

// sourceName is the source class's name in explanations.
func sourceName(s model.Source) string {
	switch s {
	case model.FromPods:
		return "pods"
	case model.FromNode:
		return "node"
	}
	return "outside"
}
