package agent

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// watchConfiguration watches this agent's ProxyConfiguration and, when it is
// being deleted, has the next sync remove every kpo rule instead (the operator
// holds the deletion with a finalizer until the nodes report CleanedUp). One
// watch per node on one object: cheap for the API server, unlike polling.
func (a *Agent) watchConfiguration(ctx context.Context) {
	w, ok := a.opts.Client.(client.WithWatch)
	if !ok || a.opts.Config.ConfigurationName == "" {
		return
	}
	logger := klog.FromContext(ctx)
	for ctx.Err() == nil {
		list := &kpov1.ProxyConfigurationList{}
		wi, err := w.Watch(ctx, list, client.MatchingFieldsSelector{
			Selector: fields.OneTermEqualSelector("metadata.name", a.opts.Config.ConfigurationName)})
		if err != nil {
			logger.V(2).Info("watching the ProxyConfiguration; retrying", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
			continue
		}
		for ev := range wi.ResultChan() {
			pc, ok := ev.Object.(*kpov1.ProxyConfiguration)
			if !ok || ev.Type == watch.Error {
				continue
			}
			if ev.Type == watch.Deleted || pc.DeletionTimestamp != nil {
				if a.deleting.CompareAndSwap(false, true) {
					logger.Info("the ProxyConfiguration is being deleted: removing every kpo rule from this node",
						"configuration", pc.Name)
					a.runner.Trigger()
				}
			}
		}
		wi.Stop()
	}
}

// cleanUpForDeletion removes the rules of every mode and reports it.
func (a *Agent) cleanUpForDeletion(ctx context.Context) error {
	for mode, mk := range a.opts.Backends {
		b, err := mk()
		if err == nil {
			err = b.Cleanup(ctx)
		}
		if err != nil {
			return err
		}
		klog.FromContext(ctx).V(2).Info("removed rules", "mode", mode)
	}
	a.hc.closeAll()
	a.status.cleanedUp(time.Now())
	return nil
}

func (r *statusReporter) cleanedUp(at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.report.ActiveMode = ""
	t := metav1.NewTime(at)
	r.report.LastSyncTime = &t
	r.report.Services, r.report.Endpoints, r.report.Rules = 0, 0, 0
	r.important, r.dirty = true, true
	r.setCondition(kpov1.NodeConditionSynced, metav1.ConditionFalse, kpov1.NodeReasonCleanedUp,
		"the ProxyConfiguration is being deleted; every kpo rule was removed from this node")
}
