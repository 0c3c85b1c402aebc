// Package apiserveraddr finds the API server's own address for the node
// agents, so that nobody hand-edits it into the operator's manifest: the
// kubernetes Service's EndpointSlice, which the API servers themselves keep
// (their endpoint reconciler writes their advertise addresses), read through
// whatever address the operator reached the API server by. The agents must
// not depend on the kubernetes Service's ClusterIP: on a node without
// kube-proxy nothing serves it until kpo's own agent has programmed it.
package apiserveraddr

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The kubernetes Service's EndpointSlice, as kube-apiserver names it
// (pkg/controlplane/reconcilers, the endpoints adapter).
const (
	Namespace = metav1.NamespaceDefault
	SliceName = "kubernetes"
)

// Reading that one object is all the operator may do in namespace default
// (config/rbac, docs/security.md).
// +kubebuilder:rbac:groups=discovery.k8s.io,namespace=default,resources=endpointslices,verbs=get,resourceNames=kubernetes

// Discover reads the kubernetes Service's EndpointSlice and returns one API
// server's address as host and port (Pick).
func Discover(ctx context.Context, c client.Reader) (host, port string, err error) {
	var s discoveryv1.EndpointSlice
	if err := c.Get(ctx, client.ObjectKey{Namespace: Namespace, Name: SliceName}, &s); err != nil {
		return "", "", fmt.Errorf("reading EndpointSlice %s/%s: %w", Namespace, SliceName, err)
	}
	return Pick(&s)
}

// Pick returns the lowest ready address of the slice with its https port:
// every agent then gets the same one, and the choice only moves when that
// API server leaves the slice (the operator picks again when it restarts).
func Pick(s *discoveryv1.EndpointSlice) (host, port string, err error) {
	var p int32
	for _, ep := range s.Ports {
		if ep.Port != nil && (p == 0 || (ep.Name != nil && *ep.Name == "https")) {
			p = *ep.Port
		}
	}
	if p == 0 {
		return "", "", fmt.Errorf("EndpointSlice %s/%s has no port", s.Namespace, s.Name)
	}
	var ready []string
	for _, ep := range s.Endpoints {
		if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
			continue
		}
		for _, a := range ep.Addresses {
			if net.ParseIP(a) != nil {
				ready = append(ready, a)
			}
		}
	}
	if len(ready) == 0 {
		return "", "", fmt.Errorf("EndpointSlice %s/%s has no ready address", s.Namespace, s.Name)
	}
	slices.Sort(ready)
	return ready[0], strconv.Itoa(int(p)), nil
}
