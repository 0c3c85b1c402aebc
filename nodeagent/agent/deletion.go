package agent

import (
	"context"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers/render"
	"kpo.dev/kpo/nodeagent/backend"
)

// watchConfiguration watches this agent's ProxyConfiguration and, when it is
// being deleted, has the next sync remove every kpo rule instead (the operator
// holds the deletion with a finalizer until the nodes report CleanedUp or
// HandedOver). One watch per node on one object: cheap for the API server,
// unlike polling.
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
				a.markDeleting(logger, pc.Name)
			}
		}
		wi.Stop()
	}
}

func (a *Agent) markDeleting(logger klog.Logger, name string) {
	if a.deleting.CompareAndSwap(false, true) {
		logger.Info("the ProxyConfiguration is being deleted: this node's kpo rules go, or pass to the configuration that takes the node over",
			"configuration", name)
		a.runner.Trigger()
	}
}

// checkDeletion looks once, before the first sync, whether the configuration
// is already being deleted: an agent (re)started then must not program its
// rules over those of the node's successor. A configuration that cannot be
// read is taken as live (the watch catches up); one that does not exist too,
// since agents also run without one (tests, hand-made configurations).
func (a *Agent) checkDeletion(ctx context.Context) {
	if a.opts.Client == nil || a.opts.Config.ConfigurationName == "" {
		return
	}
	pc := &kpov1.ProxyConfiguration{}
	if err := a.opts.Client.Get(ctx, client.ObjectKey{Name: a.opts.Config.ConfigurationName}, pc); err != nil {
		return
	}
	if pc.DeletionTimestamp != nil {
		a.markDeleting(klog.FromContext(ctx), pc.Name)
	}
}

// syncDeletion is the sync of an agent whose configuration is being deleted.
// If another configuration now holds the node, the node is handed over: its
// agent (waiting for the host lock) replaces these rules with its own in one
// sync, and removes the other modes' leftovers after it: make-before-break,
// the same as a mode switch. Removing them here instead would race with that
// agent's first sync — both may use the same mode, so the same tables and
// chains — and leave the node without rules in between. Only a node nobody
// takes over has its rules removed.
func (a *Agent) syncDeletion(ctx context.Context) error {
	if a.cleanedUp || a.handedOver {
		// Nothing to sync, and nothing stale: keep /livez happy until the
		// DaemonSet (and this pod) goes.
		a.health.Synced()
		return nil
	}
	logger := klog.FromContext(ctx)
	successor, err := a.successor(ctx)
	if err != nil {
		// Unknown: removing the rules might cut a successor's traffic, so wait.
		logger.Error(err, "finding the configuration that takes this node over; will retry")
		return err
	}
	if successor != "" {
		return a.handOver(ctx, successor)
	}
	if err := a.cleanUpForDeletion(ctx); err != nil {
		logger.Error(err, "removing rules for the deletion of the ProxyConfiguration")
		return err
	}
	a.cleanedUp = true
	a.health.Synced()
	return nil
}

// successor names the configuration that holds this node once this one is
// gone — the operator's rule (controllers' nodeOwnership): the oldest live
// configuration that selects the node — or "" when none does.
func (a *Agent) successor(ctx context.Context) (string, error) {
	if a.opts.Client == nil {
		return "", nil
	}
	a.nodeMu.Lock()
	node := a.node
	a.nodeMu.Unlock()
	if node == nil {
		return "", nil // no Node object: no configuration selects it
	}
	var all kpov1.ProxyConfigurationList
	if err := a.opts.Client.List(ctx, &all); err != nil {
		if apierrors.IsForbidden(err) {
			// An agent role from before hand-overs (its own configuration
			// only): behave as before, and say so.
			klog.FromContext(ctx).Error(err, "cannot list ProxyConfigurations to find a successor; removing the rules")
			return "", nil
		}
		return "", fmt.Errorf("listing ProxyConfigurations: %w", err)
	}
	var best *kpov1.ProxyConfiguration
	for i := range all.Items {
		pc := &all.Items[i]
		if pc.Name == a.opts.Config.ConfigurationName || pc.DeletionTimestamp != nil || !render.Selects(pc, node) {
			continue
		}
		if best == nil || render.Older(pc, best) {
			best = pc
		}
	}
	if best == nil {
		return "", nil
	}
	return best.Name, nil
}

// handOver leaves the rules in place for the successor's agent: it reports
// HandedOver (before anything else, and for good: the successor's agent
// writes the same ProxyNodeStatus next), stops serving health and metrics
// (the successor listens on the same ports) and releases the host lock, on
// which that agent waits.
func (a *Agent) handOver(ctx context.Context, successor string) error {
	a.status.HandedOver(time.Now(), successor)
	if err := a.status.WriteFinal(ctx); err != nil {
		return fmt.Errorf("reporting the hand-over to %s: %w", successor, err)
	}
	a.handedOver = true
	a.hc.CloseAll()
	if a.stopServing != nil {
		a.stopServing()
	}
	a.opts.HostLock.Release()
	klog.FromContext(ctx).Info("handed the node over: its rules stay until the successor's agent replaces them",
		"successor", successor)
	return nil
}

// cleanUpForDeletion removes the rules of every mode and reports it. A mode
// that fails does not keep the others from being removed; the error (and the
// ProxyNodeStatus) names what the kernel still holds.
func (a *Agent) cleanUpForDeletion(ctx context.Context) error {
	if err := CleanupAll(ctx, a.opts.Backends, a.opts.Leftovers); err != nil {
		a.status.CleanupFailed(err)
		return err
	}
	a.hc.CloseAll()
	a.status.CleanedUp(time.Now())
	return nil
}

// CleanupError is a cleanup that failed halfway: the modes whose removal
// failed, and what the kernel still holds.
type CleanupError struct {
	// Failed maps each mode whose cleanup failed to its error.
	Failed map[kpov1.Mode]error
	// Remaining lists kpo's objects still in the kernel (Leftovers), or says
	// why they could not be listed.
	Remaining []string
}

func (e *CleanupError) Error() string {
	var modes []string
	for _, m := range []kpov1.Mode{kpov1.ModeIPTables, kpov1.ModeNFTables, kpov1.ModeIPVS} {
		if err, ok := e.Failed[m]; ok {
			modes = append(modes, fmt.Sprintf("%s: %v", m, err))
		}
	}
	remaining := "nothing listed"
	if len(e.Remaining) > 0 {
		remaining = strings.Join(e.Remaining, ", ")
	}
	return fmt.Sprintf("removing kpo's rules failed (%s); the node still holds: %s", strings.Join(modes, "; "), remaining)
}

// Unwrap gives errors.Is and errors.As the modes' errors.
func (e *CleanupError) Unwrap() []error {
	var out []error
	for _, err := range e.Failed {
		out = append(out, err)
	}
	return out
}

// CleanupAll removes the rules of every mode in backends, each independently;
// leftovers (may be nil) lists what remains when one fails. It is the cleanup
// of kpo-agent --cleanup and of a deleted configuration.
func CleanupAll(ctx context.Context, backends map[kpov1.Mode]func() (backend.Backend, error), leftovers func(context.Context) ([]string, error)) error {
	failed := map[kpov1.Mode]error{}
	for mode, mk := range backends {
		b, err := mk()
		if err == nil {
			err = b.Cleanup(ctx)
		}
		if err != nil {
			failed[mode] = err
			continue
		}
		klog.FromContext(ctx).V(2).Info("removed rules", "mode", mode)
	}
	if len(failed) == 0 {
		return nil
	}
	ce := &CleanupError{Failed: failed}
	if leftovers != nil {
		remaining, err := leftovers(ctx)
		switch {
		case err != nil:
			ce.Remaining = []string{"(listing them failed: " + err.Error() + ")"}
		default:
			ce.Remaining = remaining
		}
	}
	return ce
}
