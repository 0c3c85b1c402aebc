// Package v1alpha1 holds the proxy.kpo.dev/v1alpha1 API: ProxyConfiguration (how
// nodes proxy) and ProxyNodeStatus (what one node really runs).
//
// +kubebuilder:object:generate=true
// +groupName=proxy.kpo.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of this API.
	GroupVersion = schema.GroupVersion{Group: "proxy.kpo.dev", Version: "v1alpha1"}

	// SchemeBuilder registers this API's types with a runtime.Scheme. (Plain
	// apimachinery, so that importing the API pulls in no controller-runtime.)
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds this API's types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&ProxyConfiguration{}, &ProxyConfigurationList{},
		&ProxyNodeStatus{}, &ProxyNodeStatusList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
