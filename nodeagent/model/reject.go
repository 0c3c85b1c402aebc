package model

import (
	"cmp"
	"fmt"
)

// Kinds of the API objects a Rejection names.
const (
	KindService       = "Service"
	KindEndpointSlice = "EndpointSlice"
)

// Reasons for skipping (part of) an object. Each names what is wrong in
// CamelCase, as Kubernetes condition reasons do; docs/robustness.md lists what
// kube-proxy does with the same input.
const (
	// Service fields.
	ReasonInvalidClusterIP           = "InvalidClusterIP"
	ReasonDuplicateClusterIPFamily   = "DuplicateClusterIPFamily"
	ReasonInvalidPort                = "InvalidPort"
	ReasonInvalidProtocol            = "InvalidProtocol"
	ReasonDuplicatePort              = "DuplicatePort"
	ReasonInvalidNodePort            = "InvalidNodePort"
	ReasonInvalidHealthCheckNodePort = "InvalidHealthCheckNodePort"
	ReasonInvalidExternalIP          = "InvalidExternalIP"
	ReasonInvalidLoadBalancerIP      = "InvalidLoadBalancerIP"
	ReasonInvalidLoadBalancerIPMode  = "InvalidLoadBalancerIPMode"
	ReasonInvalidSourceRange         = "InvalidSourceRange"
	ReasonInvalidAffinityTimeout     = "InvalidAffinityTimeout"

	// EndpointSlice fields.
	ReasonInvalidEndpointPort     = "InvalidEndpointPort"
	ReasonInvalidEndpointProtocol = "InvalidEndpointProtocol"
	ReasonInvalidEndpointAddress  = "InvalidEndpointAddress"
	ReasonEndpointFamilyMismatch  = "EndpointFamilyMismatch"
	ReasonTooManyEndpoints        = "TooManyEndpoints"
	ReasonTooManyEndpointPorts    = "TooManyEndpointPorts"

	// Conflicts between Services (the loser is named; see package arbiter).
	ReasonClusterIPConflict      = "ClusterIPConflict"
	ReasonLoadBalancerIPConflict = "LoadBalancerIPConflict"
	ReasonExternalIPConflict     = "ExternalIPConflict"
	ReasonNodePortConflict       = "NodePortConflict"
)

// Rejection is a part of an API object the model does not program: the agent
// counts it, names it in its ProxyNodeStatus and logs it, and programs the rest.
type Rejection struct {
	Kind      string
	Namespace string
	Name      string
	Reason    string
	// Message says what exactly was skipped and why.
	Message string
}

// CompareRejections orders rejections by object, then reason and message: the
// stable order of status reports.
func CompareRejections(a, b Rejection) int {
	return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name),
		cmp.Compare(a.Reason, b.Reason), cmp.Compare(a.Message, b.Message))
}

// rejections collects the rejections of one build, once each.
type rejections struct {
	list []Rejection
	seen map[Rejection]bool
}

func (rs *rejections) add(kind, namespace, name, reason, format string, args ...any) {
	r := Rejection{Kind: kind, Namespace: namespace, Name: name, Reason: reason, Message: fmt.Sprintf(format, args...)}
	if rs.seen[r] {
		return
	}
	if rs.seen == nil {
		rs.seen = map[Rejection]bool{}
	}
	rs.seen[r] = true
	rs.list = append(rs.list, r)
}
