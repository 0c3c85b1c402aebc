package noderuntime

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// podWorker runs one pod: its sandbox, its volumes, its containers, and the
// status it reports.
type podWorker struct {
	rt  *Runtime
	key string // namespace/name
	uid string
	dir string

	ctx    context.Context
	cancel context.CancelFunc

	mu         sync.Mutex
	pod        *corev1.Pod
	sb         *sandbox
	vols       *volumeSet
	setupErr   string // why the pod cannot start (yet)
	startTime  metav1.Time
	graceSecs  int64
	stopping   bool // deletion seen: the stop is under way
	containers []*container
	dirty      chan struct{} // a status write is due
	final      chan struct{} // closed when the containers have stopped
	stopped    chan struct{} // closed when run has returned
	// conditions remembers when each condition last changed.
	conditions map[corev1.PodConditionType]corev1.PodCondition
	lastStatus string // what was written last (JSON), to skip writes that change nothing
}

func newPodWorker(rt *Runtime, pod *corev1.Pod) *podWorker {
	ctx, cancel := context.WithCancel(context.Background())
	w := &podWorker{
		rt: rt, key: pod.Namespace + "/" + pod.Name, uid: string(pod.UID),
		dir: filepath.Join(rt.cfg.Dir, "pods", pod.Namespace+"_"+pod.Name+"_"+string(pod.UID)),
		ctx: ctx, cancel: cancel, pod: pod.DeepCopy(), startTime: metav1.Now(),
		graceSecs: ptr.Deref(pod.Spec.TerminationGracePeriodSeconds, 30),
		dirty:     make(chan struct{}, 1), final: make(chan struct{}), stopped: make(chan struct{}),
		conditions: map[corev1.PodConditionType]corev1.PodCondition{},
	}
	for _, spec := range pod.Spec.Containers {
		w.containers = append(w.containers, &container{w: w, spec: spec})
	}
	return w
}

// changed asks for a status write.
func (w *podWorker) changed() {
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

func (w *podWorker) update(pod *corev1.Pod) {
	w.mu.Lock()
	w.pod = pod.DeepCopy()
	w.mu.Unlock()
}

// podCopy is the latest pod with the IPs this runtime gave it (for fieldRefs).
func (w *podWorker) podCopy() *corev1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	pod := w.pod.DeepCopy()
	if w.sb != nil {
		pod.Status.PodIPs, pod.Status.PodIP = nil, w.sb.ips[0]
		for _, ip := range w.sb.ips {
			pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip})
		}
	}
	pod.Status.HostIP = w.rt.nodeIPs()[0]
	pod.Status.HostIPs = nil
	for _, ip := range w.rt.nodeIPs() {
		pod.Status.HostIPs = append(pod.Status.HostIPs, corev1.HostIP{IP: ip})
	}
	return pod
}

func (w *podWorker) restartPolicy() corev1.RestartPolicy {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod.Spec.RestartPolicy
}

func (w *podWorker) grace() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return time.Duration(w.graceSecs) * time.Second
}

// user is the container's runAsUser/runAsGroup (container over pod).
func (w *podWorker) user(spec corev1.Container) (uid, gid *int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if psc := w.pod.Spec.SecurityContext; psc != nil {
		uid, gid = psc.RunAsUser, psc.RunAsGroup
	}
	if sc := spec.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = sc.RunAsGroup
		}
	}
	return uid, gid
}

// recordMissing notes mount points that do not exist on the host yet (podInit
// creates them) so that teardown removes them again.
func (w *podWorker) recordMissing(path string) {
	var missing []string
	for p := filepath.Clean(path); p != "/"; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		}
		missing = append(missing, p)
	}
	for _, p := range missing {
		w.rt.cfg.Ledger.RecordCreatedPath(p)
	}
}

// run sets the pod up and runs its containers until the worker is stopped,
// then writes the pod's final status.
func (w *podWorker) run() {
	defer close(w.stopped)
	statusDone := make(chan struct{})
	go func() {
		defer close(statusDone)
		w.writeStatusLoop()
	}()
	var containers sync.WaitGroup
	if w.setUp() {
		for _, c := range w.containers {
			containers.Go(func() { c.supervise(w.ctx) })
		}
		w.refreshVolumes()
	}
	containers.Wait()
	close(w.final)
	<-statusDone
}

// setUp checks what the runtime cannot do, then builds the sandbox and the
// volumes, retrying (an API object may not exist yet) until the pod stops.
func (w *podWorker) setUp() bool {
	pod := w.podCopy()
	if why := unsupported(pod); why != "" {
		w.setSetupErr(why)
		<-w.ctx.Done()
		return false
	}
	backoff := initialBackoff
	for {
		err := w.trySetUp(pod)
		if err == nil {
			w.setSetupErr("")
			return true
		}
		w.setSetupErr(err.Error())
		if !sleepCtx(w.ctx, backoff) {
			return false
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func (w *podWorker) trySetUp(pod *corev1.Pod) error {
	w.mu.Lock()
	haveSandbox := w.sb != nil
	w.mu.Unlock()
	if !haveSandbox {
		sb, err := w.rt.newSandbox(w.uid, pod.Name, pod.Spec.HostNetwork)
		if err != nil {
			return err
		}
		w.mu.Lock()
		w.sb = sb
		w.mu.Unlock()
		w.changed()
	}
	uid, gid := w.podUser()
	vols, err := w.rt.writeVolumes(w.ctx, w.podCopy(), filepath.Join(w.dir, "volumes"), uid, gid)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.vols = vols
	w.mu.Unlock()
	return nil
}

// podUser is the user the pod's files belong to: the first container's.
func (w *podWorker) podUser() (uid, gid *int64) {
	if len(w.containers) == 0 {
		return nil, nil
	}
	return w.user(w.containers[0].spec)
}

// refreshVolumes rewrites the volumes before their service-account tokens
// expire (at 80% of their life, as kubelet does) until the pod stops.
func (w *podWorker) refreshVolumes() {
	for {
		w.mu.Lock()
		exp := w.vols.tokenExpiry
		w.mu.Unlock()
		wait := time.Hour
		if !exp.IsZero() {
			wait = time.Until(exp) * 8 / 10
		}
		if !sleepCtx(w.ctx, wait) {
			return
		}
		uid, gid := w.podUser()
		vols, err := w.rt.writeVolumes(w.ctx, w.podCopy(), filepath.Join(w.dir, "volumes"), uid, gid)
		if err != nil {
			w.rt.cfg.Logf("%s: refreshing volumes: %v", w.key, err)
			continue
		}
		w.mu.Lock()
		w.vols = vols
		w.mu.Unlock()
	}
}

func (w *podWorker) setSetupErr(msg string) {
	w.mu.Lock()
	changed := w.setupErr != msg
	w.setupErr = msg
	w.mu.Unlock()
	if changed {
		w.changed()
	}
}

// stop stops the containers (SIGTERM, SIGKILL after grace), removes the
// sandbox and writes the final status.
func (w *podWorker) stop(grace time.Duration) {
	w.mu.Lock()
	w.graceSecs = int64(grace / time.Second)
	w.mu.Unlock()
	w.cancel()
	<-w.stopped
	w.mu.Lock()
	sb := w.sb
	w.sb = nil
	w.mu.Unlock()
	if sb != nil {
		sb.close()
	}
	_ = os.RemoveAll(w.dir)
}

// unsupported says which of the pod's features this runtime cannot run, if any.
func unsupported(pod *corev1.Pod) string {
	var missing []string
	if len(pod.Spec.InitContainers) > 0 {
		missing = append(missing, "initContainers")
	}
	if len(pod.Spec.EphemeralContainers) > 0 {
		missing = append(missing, "ephemeralContainers")
	}
	for _, c := range pod.Spec.Containers {
		for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
			if p != nil && p.GRPC != nil {
				missing = append(missing, "gRPC probes (container "+c.Name+")")
			}
		}
		if c.Lifecycle != nil && (c.Lifecycle.PostStart != nil || c.Lifecycle.PreStop != nil) {
			missing = append(missing, "lifecycle hooks (container "+c.Name+")")
		}
	}
	if len(missing) == 0 {
		return ""
	}
	return "the kpo node runtime cannot run: " + strings.Join(missing, ", ")
}

// ignored lists the pod's fields that this runtime does not enforce; the pod
// runs, and its NodeRuntimeIgnored condition says what was ignored.
func ignored(pod *corev1.Pod) []string {
	var out []string
	add := func(s string) {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, c := range pod.Spec.Containers {
		if len(c.Resources.Limits) > 0 || len(c.Resources.Requests) > 0 {
			add("resources (no cgroups)")
		}
		if sc := c.SecurityContext; sc != nil {
			if sc.Capabilities != nil {
				add("securityContext.capabilities")
			}
			if ptr.Deref(sc.ReadOnlyRootFilesystem, false) {
				add("securityContext.readOnlyRootFilesystem")
			}
			if sc.AllowPrivilegeEscalation != nil {
				add("securityContext.allowPrivilegeEscalation")
			}
			if sc.SeccompProfile != nil || sc.AppArmorProfile != nil || sc.SELinuxOptions != nil {
				add("securityContext seccomp/AppArmor/SELinux profiles")
			}
		}
		for _, p := range c.Ports {
			if p.HostPort != 0 && !pod.Spec.HostNetwork {
				add("ports.hostPort")
			}
		}
	}
	if len(pod.Spec.ReadinessGates) > 0 {
		add("readinessGates")
	}
	if ptr.Deref(pod.Spec.EnableServiceLinks, true) {
		add("service link environment variables (only KUBERNETES_SERVICE_HOST/PORT are set)")
	}
	if pod.Spec.DNSPolicy != "" && pod.Spec.DNSPolicy != corev1.DNSNone {
		add(fmt.Sprintf("dnsPolicy %s (the host's resolver is used)", pod.Spec.DNSPolicy))
	}
	return out
}
