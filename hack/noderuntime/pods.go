package noderuntime

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"

	"kpo.dev/kpo/test/netns"
)

// runPods watches the pods bound to this node and reconciles each into a
// worker, until ctx ends.
func (r *Runtime) runPods(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(r.cfg.Kube, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", r.cfg.NodeName).String()
		}))
	informer := factory.Core().V1().Pods().Informer()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer queue.ShutDown()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(key)
		}
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return ctx.Err()
	}
	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()
	for {
		key, shutdown := queue.Get()
		if shutdown {
			return nil
		}
		obj, exists, err := informer.GetStore().GetByKey(key)
		if err == nil {
			var pod *corev1.Pod
			if exists {
				pod = obj.(*corev1.Pod)
			}
			err = r.reconcile(ctx, key, pod)
		}
		if err != nil {
			r.cfg.Logf("%s: pod %s: %v", r.cfg.NodeName, key, err)
			queue.AddRateLimited(key)
		} else {
			queue.Forget(key)
		}
		queue.Done(key)
	}
}

// reconcile makes the node run what the pod object says: start a worker for a
// new pod, stop it (with the grace period) for a deleted one, then remove the
// object as kubelet does.
func (r *Runtime) reconcile(ctx context.Context, key string, pod *corev1.Pod) error {
	r.mu.Lock()
	w := r.workers[key]
	r.mu.Unlock()

	if pod == nil || (w != nil && w.uid != string(pod.UID)) {
		// Gone from the API (force-deleted) or replaced by a pod of the same name.
		if w != nil {
			r.stopWorker(key, w, 0)
		}
		if pod == nil {
			return nil
		}
		w = nil
	}
	if pod.DeletionTimestamp != nil {
		grace := time.Duration(ptr.Deref(pod.DeletionGracePeriodSeconds, 0)) * time.Second
		if w == nil {
			return r.finalDelete(ctx, pod)
		}
		w.mu.Lock()
		stopping := w.stopping
		w.stopping = true
		w.mu.Unlock()
		if !stopping {
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.stopWorker(key, w, grace)
				if err := r.finalDelete(ctx, pod); err != nil && ctx.Err() == nil {
					r.cfg.Logf("%s: deleting pod %s: %v", r.cfg.NodeName, key, err)
				}
			}()
		}
		return nil
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil // finished, and not ours to restart
	}
	if w != nil {
		w.update(pod)
		return nil
	}
	w = newPodWorker(r, pod)
	r.mu.Lock()
	r.workers[key] = w
	r.mu.Unlock()
	r.cfg.Logf("%s: starting pod %s", r.cfg.NodeName, key)
	go w.run()
	w.changed()
	return nil
}

func (r *Runtime) stopWorker(key string, w *podWorker, grace time.Duration) {
	w.stop(grace)
	r.mu.Lock()
	if r.workers[key] == w {
		delete(r.workers, key)
	}
	r.mu.Unlock()
}

// finalDelete removes the pod object once its containers are gone (grace 0,
// for this UID only), which is what lets a ReplicaSet or DaemonSet replace it.
func (r *Runtime) finalDelete(ctx context.Context, pod *corev1.Pod) error {
	err := r.cfg.Kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To[int64](0),
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("final delete: %w", err)
	}
	return nil
}

// stopAll stops every pod (node shutdown) with at most grace each.
func (r *Runtime) stopAll(grace time.Duration) {
	r.mu.Lock()
	workers := r.workers
	r.workers = map[string]*podWorker{}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() { w.stop(min(grace, w.grace())) })
	}
	wg.Wait()
}

// PodNS is the network namespace of a running pod on this node (nil if the
// pod does not run here or has no sandbox yet): for tests and the demo, to
// send traffic from a pod.
func (r *Runtime) PodNS(namespace, name string) *netns.NS {
	r.mu.Lock()
	w := r.workers[namespace+"/"+name]
	r.mu.Unlock()
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sb == nil {
		return nil
	}
	return w.sb.ns
}
