package controllers

import (
	"context"
	"fmt"

	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers/imagepolicy"
	"kpo.dev/kpo/controllers/render"
)

// agentBinding renders the one ClusterRoleBinding of the agents' fixed role to
// the ServiceAccount of every ProxyConfiguration. Configurations being deleted
// stay in it: their agents must still report CleanedUp. Every reconcile of any
// configuration applies the whole list, and a configuration's deletion
// re-reconciles the others (allConfigurations), which drop it; the garbage
// collector removes the binding with the last configuration.
func (r *ProxyConfigurationReconciler) agentBinding(ctx context.Context) (*rbacv1ac.ClusterRoleBindingApplyConfiguration, error) {
	var all kpov1.ProxyConfigurationList
	if err := r.List(ctx, &all); err != nil {
		return nil, fmt.Errorf("listing proxy configurations: %w", err)
	}
	configs := make([]*kpov1.ProxyConfiguration, 0, len(all.Items))
	for i := range all.Items {
		configs = append(configs, &all.Items[i])
	}
	return render.AgentBinding(r.Namespace, configs), nil
}

// imagePolicy is the agent image policy: ImagePolicy, or else one that allows
// the default agent image only.
func (r *ProxyConfigurationReconciler) imagePolicy() (*imagepolicy.Policy, error) {
	if r.ImagePolicy != nil {
		return r.ImagePolicy, nil
	}
	return imagepolicy.New(r.DefaultAgentImage, "", nil)
}
