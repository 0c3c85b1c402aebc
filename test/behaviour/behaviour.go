// Package behaviour is kpo's behaviour table, written once and run at every
// level a backend can be tested at:
//
//   - the fake kernels (unit tests): the table's Services go through the
//     agent's tracker into a snapshot, the backend syncs it into its fake,
//     and each probe is a packet traced through what the fake holds
//     (Tracer; RunFake);
//   - the real kernel in network namespaces, or in the VM for IPVS: the
//     same sync into a one-node topology with pods, probes are real
//     connections (RunKernel);
//   - the whole agent against a real API server on a two-node test
//     network (test/e2e): the objects are created in the API server.
//
// A case is Services (with their endpoints, by the role of the pod behind
// each) and probes: from whom, to which address, and the outcome — answered
// by which endpoints and with which source address, refused, or dropped.
// Where kube-proxy's modes differ, a probe says so per mode (Probe.Except),
// with the kube-proxy file the difference comes from. The expected outcomes
// are kube-proxy v1.37.1's, as test/conformance measures them against the
// real kube-proxy; this table pins them per mode so that every level can
// check them without one.
package behaviour

import (
	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// Role is a host of the table's world; each level maps roles to its own
// namespaces and addresses (Hosts).
type Role string

// The world: node-1 runs the proxy under test; pod-a and pod-b are its
// pods, remote is a pod on node-2, client-pod is a pod of node-1 that backs
// no Service; client and other-client are outside the cluster, client
// inside the source ranges the table uses and other-client outside them.
const (
	PodA        Role = "pod-a"
	PodB        Role = "pod-b"
	Remote      Role = "remote"
	ClientPod   Role = "client-pod"
	Node        Role = "node"
	Client      Role = "client"
	OtherClient Role = "other-client"
)

// Pods are the pod roles, in the order the levels create them.
var Pods = []Role{PodA, PodB, Remote, ClientPod}

// NodeName is the node under test; RemoteNode holds the remote pod.
const (
	NodeName   = "node-1"
	RemoteNode = "node-2"
)

// EchoPort is where every pod's echo server listens, TCP and UDP; it
// answers with the name of its role.
const EchoPort = 8080

// Answer is what becomes of a connection attempt.
type Answer int

const (
	// Served: an endpoint answers.
	Served Answer = iota
	// Refused: a TCP reset or ICMP unreachable, at once.
	Refused
	// Dropped: no answer (a firewall drop, or an address nothing translates).
	Dropped
)

func (a Answer) String() string {
	return [...]string{"served", "refused", "dropped"}[a]
}

// Source is what address an endpoint sees a connection come from.
type Source int

const (
	// AnySource: not checked (the node's own connections: which of its
	// addresses they leave with is routing's choice).
	AnySource Source = iota
	// Kept: the client's own address. A connection that comes back to the
	// pod that made it (hairpin) is always masqueraded, or the pod would
	// answer itself directly.
	Kept
	// Masqueraded: an address of the node.
	Masqueraded
)

func (s Source) String() string {
	return [...]string{"any source", "source kept", "masqueraded"}[s]
}

// Outcome is what a probe must meet.
type Outcome struct {
	Answer Answer
	// By are the endpoints that answer (Served): every one of them, and no other.
	By     []Role
	Source Source
	// Sticky: every connection of the client goes to the same endpoint
	// (ClientIP affinity). The fakes trace first packets only, without
	// affinity state: there it is checked as By alone.
	Sticky bool
}

// ServedBy is the outcome of a connection answered by by, its source as src says.
func ServedBy(src Source, by ...Role) Outcome { return Outcome{Answer: Served, By: by, Source: src} }

// StickyTo is ServedBy with ClientIP affinity.
func StickyTo(src Source, by ...Role) Outcome {
	o := ServedBy(src, by...)
	o.Sticky = true
	return o
}

var (
	refused = Outcome{Answer: Refused}
	dropped = Outcome{Answer: Dropped}
)

// Probe is one connection attempt and what must become of it.
type Probe struct {
	From Role
	// Proto is "tcp" (the default) or "udp".
	Proto string
	// To is the destination, "ip:port".
	To   string
	Want Outcome
	// Except holds the outcomes of the modes where kube-proxy's mode
	// answers otherwise (the comment at the probe says why).
	Except map[kpov1.Mode]Outcome
}

// In is the outcome in mode.
func (p Probe) In(mode kpov1.Mode) Outcome {
	if o, ok := p.Except[mode]; ok {
		return o
	}
	return p.Want
}

// Network is the probe's Go network name.
func (p Probe) Network() string {
	if p.Proto == "" {
		return "tcp"
	}
	return p.Proto
}

// Case is Services with their endpoints and the probes that check them;
// Steps change the Services while the proxy runs.
type Case struct {
	Name     string
	Services []Service
	Probes   []Probe
	Steps    []Step
}

// Step replaces a case's Services (a Service of the case missing from
// Services is deleted) and probes again.
type Step struct {
	Name     string
	Services []Service
	Probes   []Probe
}
