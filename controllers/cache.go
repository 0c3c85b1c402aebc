package controllers

import (
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"kpo.dev/kpo/controllers/render"
)

// CacheOptions keeps the operator's caches to what it owns: namespaced objects in
// its namespace, and the agents' one ClusterRoleBinding by name. A large
// cluster's ConfigMaps are none of its business, and its RBAC allows no more:
// a list or watch with a metadata.name field selector is what RBAC's
// resourceNames allow.
func CacheOptions(namespace string) cache.Options {
	inNamespace := map[string]cache.Config{namespace: {}}
	return cache.Options{
		// Nothing the operator does reads managedFields; at 5,000 nodes they
		// are most of a cached Node, report or Lease (docs/scale.md).
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&appsv1.DaemonSet{}:      {Namespaces: inNamespace},
			&corev1.ConfigMap{}:      {Namespaces: inNamespace},
			&corev1.ServiceAccount{}: {Namespaces: inNamespace},
			&rbacv1.ClusterRoleBinding{}: {
				Field: fields.OneTermEqualSelector("metadata.name", render.AgentBindingName),
			},
			// The kubelets' node heartbeats, for the rollup's staleness.
			&coordinationv1.Lease{}: {Namespaces: map[string]cache.Config{NodeLeaseNamespace: {}}},
		}}
}
