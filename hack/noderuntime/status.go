package noderuntime

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

// ConditionIgnored is the pod condition listing the fields this runtime does
// not enforce (status True when there are any).
const ConditionIgnored corev1.PodConditionType = "NodeRuntimeIgnored"

// writeStatusLoop writes the pod's status whenever it changed, and once more
// after the containers have stopped.
func (w *podWorker) writeStatusLoop() {
	for {
		select {
		case <-w.dirty:
			w.writeStatus()
		case <-w.final:
			w.writeStatus()
			return
		}
	}
}

// writeStatus patches the pod's status (a strategic merge, as kubelet does, so
// that the scheduler's PodScheduled condition stays), retrying a few times on
// API errors; the UID in the patch makes it a no-op on a re-created pod.
func (w *podWorker) writeStatus() {
	status := w.status()
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"uid": w.uid}, "status": status})
	if err != nil {
		return
	}
	// Time stamps alone do not make a change worth writing.
	if string(body) == w.lastStatus {
		return
	}
	ns, name, _ := strings.Cut(w.key, "/")
	for attempt := 0; attempt < 5; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = w.rt.cfg.Kube.CoreV1().Pods(ns).Patch(ctx, name, types.StrategicMergePatchType, body, metav1.PatchOptions{}, "status")
		cancel()
		if err == nil {
			w.lastStatus = string(body)
			return
		}
		if !sleepCtx(context.Background(), time.Duration(attempt+1)*200*time.Millisecond) {
			return
		}
	}
	w.rt.cfg.Logf("%s: status: %v", w.key, err)
}

// status is the pod's status as this runtime sees it.
func (w *podWorker) status() corev1.PodStatus {
	pod := w.podCopy()
	w.mu.Lock()
	setupErr, haveSandbox := w.setupErr, w.sb != nil
	st := corev1.PodStatus{StartTime: &w.startTime}
	w.mu.Unlock()
	if haveSandbox {
		st.PodIP, st.PodIPs = pod.Status.PodIP, pod.Status.PodIPs
	}
	st.HostIP, st.HostIPs = pod.Status.HostIP, pod.Status.HostIPs

	allReady, running, terminated, failed := true, 0, 0, 0
	for _, c := range w.containers {
		cs := c.status(setupErr)
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		allReady = allReady && cs.Ready
		switch {
		case cs.State.Running != nil:
			running++
		case cs.State.Terminated != nil && c.isDone():
			terminated++
			if cs.State.Terminated.ExitCode != 0 {
				failed++
			}
		}
	}
	switch {
	case terminated == len(w.containers) && failed > 0:
		st.Phase = corev1.PodFailed
	case terminated == len(w.containers):
		st.Phase = corev1.PodSucceeded
	case running > 0 || terminated > 0 || restartedOnce(st.ContainerStatuses):
		st.Phase = corev1.PodRunning
	default:
		st.Phase = corev1.PodPending
	}
	if setupErr != "" {
		st.Reason, st.Message = "NodeRuntime", setupErr
	}
	truth := func(b bool) corev1.ConditionStatus {
		if b {
			return corev1.ConditionTrue
		}
		return corev1.ConditionFalse
	}
	ready := allReady && len(w.containers) > 0
	st.Conditions = []corev1.PodCondition{
		w.condition(corev1.PodReadyToStartContainers, truth(haveSandbox && setupErr == ""), "", ""),
		w.condition(corev1.PodInitialized, corev1.ConditionTrue, "", ""),
		w.condition(corev1.ContainersReady, truth(ready), "", ""),
		w.condition(corev1.PodReady, truth(ready), "", ""),
	}
	if ign := ignored(pod); len(ign) > 0 {
		st.Conditions = append(st.Conditions, w.condition(ConditionIgnored, corev1.ConditionTrue, "NotEnforced",
			"the kpo node runtime ignores: "+strings.Join(ign, "; ")))
	}
	return st
}

// restartedOnce reports whether any container has run before (a pod in
// back-off is Running, not Pending).
func restartedOnce(statuses []corev1.ContainerStatus) bool {
	for _, cs := range statuses {
		if cs.RestartCount > 0 || cs.LastTerminationState.Terminated != nil {
			return true
		}
	}
	return false
}

// condition keeps a condition's lastTransitionTime while its status holds.
func (w *podWorker) condition(t corev1.PodConditionType, s corev1.ConditionStatus, reason, msg string) corev1.PodCondition {
	w.mu.Lock()
	defer w.mu.Unlock()
	old, ok := w.conditions[t]
	if ok && old.Status == s && old.Reason == reason && old.Message == msg {
		return old
	}
	c := corev1.PodCondition{Type: t, Status: s, Reason: reason, Message: msg, LastTransitionTime: metav1.Now()}
	if ok && old.Status == s {
		c.LastTransitionTime = old.LastTransitionTime
	}
	w.conditions[t] = c
	return c
}

// status is the container's status.
func (c *container) status(setupErr string) corev1.ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	cs := corev1.ContainerStatus{
		Name: c.spec.Name, Image: c.spec.Image, ImageID: "kpo-noderuntime://" + c.spec.Image,
		RestartCount: c.restarts, Ready: c.ready && c.proc != nil,
		Started: ptr.To(c.proc != nil && c.startup),
	}
	switch {
	case c.proc != nil:
		cs.State.Running = &corev1.ContainerStateRunning{StartedAt: c.started}
		cs.ContainerID = fmt.Sprintf("kpo://%d", c.proc.Pid())
	case c.waiting != nil:
		cs.State.Waiting = c.waiting
	case c.lastTerm != nil && c.done:
		cs.State.Terminated = c.lastTerm
	case setupErr != "":
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating", Message: setupErr}
	default:
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
	}
	if c.lastTerm != nil && cs.State.Terminated == nil {
		cs.LastTerminationState.Terminated = c.lastTerm
	}
	return cs
}
