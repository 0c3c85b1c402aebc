package noderuntime

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"kpo.dev/kpo/hack/procs"
)

// container is one container of a pod: a process, restarted per the pod's
// restart policy, and what its status reports.
type container struct {
	w    *podWorker
	spec corev1.Container

	mu       sync.Mutex
	proc     *procs.Proc
	started  metav1.Time
	ready    bool // readiness probe (or running, without one)
	startup  bool // startup probe passed (or running, without one)
	restarts int32
	waiting  *corev1.ContainerStateWaiting
	lastTerm *corev1.ContainerStateTerminated
	done     bool // will not run again (restart policy)
	// killReason is set when the runtime itself stops the process (a failed
	// liveness probe), for the terminated state's reason.
	killReason string
}

// Back-off between restarts: kubelet's shape (doubling, capped), shorter, since
// the local cluster's containers start in milliseconds.
const (
	initialBackoff = time.Second
	maxBackoff     = 30 * time.Second
	// A container that ran this long without failing restarts without delay.
	backoffReset = 2 * time.Minute
)

// supervise runs the container until ctx ends (the pod stops), restarting it
// per the restart policy. On ctx's end the process gets SIGTERM and, after
// the pod's grace period, SIGKILL.
func (c *container) supervise(ctx context.Context) {
	backoff := initialBackoff
	for ctx.Err() == nil {
		cmd, err := c.command()
		if err != nil {
			c.setWaiting("CreateContainerConfigError", err.Error())
			if !sleepCtx(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		logPath := filepath.Join(c.w.dir, c.spec.Name+".log")
		proc, err := procs.Start(c.w.rt.cfg.Ledger, c.w.key+"/"+c.spec.Name, cmd, logPath)
		if err != nil {
			c.setWaiting("RunContainerError", err.Error())
			if !sleepCtx(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		c.mu.Lock()
		c.proc, c.started, c.waiting, c.killReason = proc, metav1.Now(), nil, ""
		c.ready = c.spec.ReadinessProbe == nil && c.spec.StartupProbe == nil
		c.startup = c.spec.StartupProbe == nil
		c.mu.Unlock()
		c.w.changed()

		probeCtx, stopProbes := context.WithCancel(ctx)
		go c.runProbes(probeCtx, proc)
		select {
		case <-proc.Done():
		case <-ctx.Done():
			proc.Stop(c.w.grace())
		}
		stopProbes()
		ranFor := c.recordExit(proc)
		c.w.changed()
		if ctx.Err() != nil || c.isDone() {
			return
		}
		if ranFor > backoffReset {
			backoff = initialBackoff
		}
		c.setWaiting("CrashLoopBackOff", fmt.Sprintf("back-off %v restarting failed container %s", backoff, c.spec.Name))
		if !sleepCtx(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, maxBackoff)
		c.mu.Lock()
		c.restarts++
		c.mu.Unlock()
	}
}

// recordExit turns the process's end into the terminated state and decides,
// per the restart policy, whether the container runs again.
func (c *container) recordExit(proc *procs.Proc) time.Duration {
	code, sig := proc.ExitCode()
	c.mu.Lock()
	defer c.mu.Unlock()
	reason := "Completed"
	if code != 0 || sig != 0 {
		reason = "Error"
	}
	if c.killReason != "" {
		reason = c.killReason
	}
	if sig != 0 {
		code = 128 + int(sig)
	}
	c.lastTerm = &corev1.ContainerStateTerminated{ExitCode: int32(code), Reason: reason,
		StartedAt: c.started, FinishedAt: metav1.Now()}
	c.proc, c.ready = nil, false
	switch {
	case c.w.ctx.Err() != nil: // the pod is stopping
		c.done = true
	case c.w.restartPolicy() == corev1.RestartPolicyNever:
		c.done = true
	case c.w.restartPolicy() == corev1.RestartPolicyOnFailure:
		c.done = code == 0
	}
	return time.Since(c.started.Time)
}

func (c *container) isDone() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

func (c *container) setWaiting(reason, msg string) {
	c.mu.Lock()
	c.waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: msg}
	c.mu.Unlock()
	c.w.changed()
}

// kill stops the running process for reason (a failed liveness probe); the
// supervisor restarts it per the restart policy.
func (c *container) kill(reason string) {
	c.mu.Lock()
	proc := c.proc
	c.killReason = reason
	c.mu.Unlock()
	if proc != nil {
		go proc.Stop(c.w.grace())
	}
}

// podInit is run by /bin/sh inside the container's new mount namespace: it
// bind-mounts each volume (source, mount point, "ro"|"rw" triples up to "--")
// and then execs the container's command. Mount points missing on the host
// are created (and recorded by the runtime, so that teardown removes them).
const podInit = `set -e
while [ "$1" != "--" ]; do
	src=$1 dst=$2 mode=$3
	shift 3
	if [ -d "$src" ]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")"; [ -e "$dst" ] || : > "$dst"; fi
	mount --bind "$src" "$dst"
	if [ "$mode" = ro ]; then mount -o remount,bind,ro "$dst"; fi
done
shift
exec "$@"`

// command builds the container's process: nsenter into the pod's network
// namespace, unshare a mount namespace, mount the volumes (podInit), drop to
// the container's user if it sets one, and exec the image's binary.
func (c *container) command() (*exec.Cmd, error) {
	w := c.w
	img, err := w.rt.cfg.Images.lookup(c.spec.Image)
	if err != nil {
		return nil, err
	}
	env, err := w.env(c.spec)
	if err != nil {
		return nil, err
	}
	argv := c.spec.Command
	if len(argv) == 0 {
		argv = img.Entrypoint
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("image %s has no entrypoint here: set the container's command", c.spec.Image)
	}
	argv = append(expandAll(argv, env), expandAll(c.spec.Args, env)...)
	exe, err := img.executable(argv[0])
	if err != nil {
		return nil, err
	}

	args := []string{"--net=" + w.sb.ns.Path(), "--", "unshare", "--mount", "--", "/bin/sh", "-c", podInit, "kpo-pod-init"}
	for _, m := range c.spec.VolumeMounts {
		src, ok := w.vols.paths[m.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %q: no such volume", m.Name)
		}
		if m.SubPath != "" {
			src = filepath.Join(src, filepath.Clean("/"+m.SubPath))
		}
		if src == m.MountPath {
			continue // a hostPath at its own path: nothing to mount
		}
		w.recordMissing(m.MountPath)
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		args = append(args, src, m.MountPath, mode)
	}
	args = append(args, "--")
	if uid, gid := w.user(c.spec); uid != nil {
		// setpriv changes the user, which clears the parent-death signal: set it again.
		args = append(args, "setpriv", fmt.Sprintf("--reuid=%d", *uid), fmt.Sprintf("--regid=%d", ptr.Deref(gid, *uid)),
			"--clear-groups", "--pdeathsig=SIGKILL", "--")
	}
	args = append(append(args, exe), argv[1:]...)
	cmd := exec.Command("nsenter", args...)
	cmd.Env = envList(env)
	cmd.Dir = "/"
	if d := c.spec.WorkingDir; d != "" {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			cmd.Dir = d
		}
	}
	return cmd, nil
}

// env resolves the container's environment as kubelet does: the kubernetes
// Service's address first, then envFrom, then env (later wins), with $(VAR)
// references to earlier variables expanded.
func (w *podWorker) env(spec corev1.Container) ([]corev1.EnvVar, error) {
	pod := w.podCopy()
	ctx := w.ctx
	hostname := pod.Name
	if pod.Spec.HostNetwork {
		hostname = w.rt.cfg.NodeName
	}
	vars := []corev1.EnvVar{
		{Name: "PATH", Value: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		{Name: "HOSTNAME", Value: hostname},
	}
	if svc, err := w.rt.cfg.Kube.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{}); err == nil {
		vars = append(vars, corev1.EnvVar{Name: "KUBERNETES_SERVICE_HOST", Value: svc.Spec.ClusterIP},
			corev1.EnvVar{Name: "KUBERNETES_SERVICE_PORT", Value: fmt.Sprint(svc.Spec.Ports[0].Port)})
	}
	set := func(name, value string) {
		for i := range vars {
			if vars[i].Name == name {
				vars[i].Value = value
				return
			}
		}
		vars = append(vars, corev1.EnvVar{Name: name, Value: value})
	}
	for _, from := range spec.EnvFrom {
		var data map[string][]byte
		var err error
		switch {
		case from.ConfigMapRef != nil:
			data, err = w.rt.configMapFiles(ctx, pod.Namespace, from.ConfigMapRef.Name, nil, ptr.Deref(from.ConfigMapRef.Optional, false))
		case from.SecretRef != nil:
			data, err = w.rt.secretFiles(ctx, pod.Namespace, from.SecretRef.Name, nil, ptr.Deref(from.SecretRef.Optional, false))
		}
		if err != nil {
			return nil, fmt.Errorf("envFrom: %w", err)
		}
		for k, v := range data {
			set(from.Prefix+k, string(v))
		}
	}
	for _, e := range spec.Env {
		value, err := w.envValue(pod, e, vars)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		set(e.Name, value)
	}
	return vars, nil
}

func (w *podWorker) envValue(pod *corev1.Pod, e corev1.EnvVar, earlier []corev1.EnvVar) (string, error) {
	from := e.ValueFrom
	switch {
	case from == nil:
		return expand(e.Value, earlier), nil
	case from.FieldRef != nil:
		return fieldValue(pod, from.FieldRef.FieldPath)
	case from.ConfigMapKeyRef != nil:
		ref := from.ConfigMapKeyRef
		data, err := w.rt.configMapFiles(w.ctx, pod.Namespace, ref.Name, []corev1.KeyToPath{{Key: ref.Key, Path: ref.Key}}, ptr.Deref(ref.Optional, false))
		return string(data[ref.Key]), err
	case from.SecretKeyRef != nil:
		ref := from.SecretKeyRef
		data, err := w.rt.secretFiles(w.ctx, pod.Namespace, ref.Name, []corev1.KeyToPath{{Key: ref.Key, Path: ref.Key}}, ptr.Deref(ref.Optional, false))
		return string(data[ref.Key]), err
	}
	return "", fmt.Errorf("only value, fieldRef, configMapKeyRef and secretKeyRef are supported (no resourceFieldRef: this runtime has no resource limits)")
}

func envList(vars []corev1.EnvVar) []string {
	out := make([]string, 0, len(vars))
	for _, v := range vars {
		out = append(out, v.Name+"="+v.Value)
	}
	return out
}

// expand replaces $(NAME) with the variable's value when it is defined, and
// $$ with $, as kubelet does for env values, command and args.
func expand(s string, vars []corev1.EnvVar) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i:], ')')
			if end < 0 {
				b.WriteByte(s[i])
				continue
			}
			name, found := s[i+2:i+end], false
			for j := len(vars) - 1; j >= 0; j-- {
				if vars[j].Name == name {
					b.WriteString(vars[j].Value)
					found = true
					break
				}
			}
			if !found {
				b.WriteString(s[i : i+end+1])
			}
			i += end
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

func expandAll(in []string, vars []corev1.EnvVar) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = expand(s, vars)
	}
	return out
}

// sleepCtx waits for d or ctx's end; false means ctx ended.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
