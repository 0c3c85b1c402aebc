// Package v1alpha1 holds the proxy.kpo.dev/v1alpha1 API: ProxyConfiguration (how
// nodes proxy) and ProxyNodeStatus (what one node really runs).
//
// +kubebuilder:object:generate=true
// +groupName=proxy.kpo.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of this API.
	GroupVersion = schema.GroupVersion{Group: "proxy.kpo.dev", Version: "v1alpha1"}

	// SchemeBuilder registers this API's types with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds this API's types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
