package noderuntime

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"kpo.dev/kpo/hack/procs"
)

// runProbes runs the container's startup probe, then its readiness and
// liveness probes, until ctx ends (the process exited or the pod stops).
func (c *container) runProbes(ctx context.Context, proc *procs.Proc) {
	if p := c.spec.StartupProbe; p != nil {
		passed := false
		c.probeLoop(ctx, p, func(ok bool) bool {
			if passed = ok; !ok {
				c.kill("StartupProbeFailed")
			}
			return true
		})
		if !passed {
			return
		}
		c.mu.Lock()
		c.startup = true
		c.ready = c.spec.ReadinessProbe == nil
		c.mu.Unlock()
		c.w.changed()
	}
	if p := c.spec.LivenessProbe; p != nil {
		go c.probeLoop(ctx, p, func(ok bool) bool {
			if !ok {
				c.kill("LivenessProbeFailed")
			}
			return !ok
		})
	}
	if p := c.spec.ReadinessProbe; p != nil {
		c.probeLoop(ctx, p, func(ok bool) bool {
			c.mu.Lock()
			changed := c.ready != ok && c.proc == proc
			if changed {
				c.ready = ok
			}
			c.mu.Unlock()
			if changed {
				c.w.changed()
			}
			return false
		})
	}
}

// probeLoop probes every period after the initial delay until ctx ends or
// report says stop. report gets each result that reaches its threshold
// (successThreshold successes or failureThreshold failures in a row).
func (c *container) probeLoop(ctx context.Context, p *corev1.Probe, report func(ok bool) (stop bool)) {
	period := seconds(p.PeriodSeconds, 10)
	timeout := seconds(p.TimeoutSeconds, 1)
	needSuccess, needFailure := int(max(p.SuccessThreshold, 1)), int(max(p.FailureThreshold, 3))
	successes, failures := 0, 0
	if !sleepCtx(ctx, time.Duration(p.InitialDelaySeconds)*time.Second) {
		return
	}
	for {
		err := c.w.probe(ctx, c.spec, p, timeout)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			successes, failures = successes+1, 0
		} else {
			successes, failures = 0, failures+1
		}
		if (successes >= needSuccess || failures >= needFailure) && report(err == nil) {
			return
		}
		if !sleepCtx(ctx, period) {
			return
		}
	}
}

func seconds(v, dflt int32) time.Duration {
	if v <= 0 {
		v = dflt
	}
	return time.Duration(v) * time.Second
}

// probe runs one probe. Network probes dial from the node's namespace, as
// kubelet dials from the node: the pod's IP (the node's for hostNetwork pods).
func (w *podWorker) probe(ctx context.Context, spec corev1.Container, p *corev1.Probe, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	host := w.sb.ips[0]
	switch {
	case p.HTTPGet != nil:
		g := p.HTTPGet
		port, err := resolvePort(g.Port, spec)
		if err != nil {
			return err
		}
		if g.Host != "" {
			host = g.Host
		}
		scheme := "http"
		if g.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet,
			fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), g.Path), nil)
		if err != nil {
			return err
		}
		for _, h := range g.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		client := &http.Client{Transport: &http.Transport{
			DialContext:       w.dialFromNode,
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // kubelet does not verify probe certificates either
			DisableKeepAlives: true,
		}}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe: status %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		port, err := resolvePort(p.TCPSocket.Port, spec)
		if err != nil {
			return err
		}
		if p.TCPSocket.Host != "" {
			host = p.TCPSocket.Host
		}
		conn, err := w.dialFromNode(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case p.Exec != nil:
		return w.execProbe(ctx, spec, p.Exec.Command)
	}
	return fmt.Errorf("probe: only httpGet, tcpSocket and exec probes are supported")
}

// dialFromNode opens a connection whose socket lives in the node's namespace.
func (w *podWorker) dialFromNode(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := w.rt.cfg.NS.Do(func() error {
		var err error
		conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// execProbe runs the command in the container's namespaces (network and
// mounts, so it sees the volumes), with the image's binaries.
func (w *podWorker) execProbe(ctx context.Context, spec corev1.Container, command []string) error {
	if len(command) == 0 {
		return fmt.Errorf("exec probe without a command")
	}
	var pid int
	for _, c := range w.containers {
		if c.spec.Name == spec.Name {
			c.mu.Lock()
			if c.proc != nil {
				pid = c.proc.Pid()
			}
			c.mu.Unlock()
		}
	}
	if pid == 0 {
		return fmt.Errorf("container not running")
	}
	img, err := w.rt.cfg.Images.lookup(spec.Image)
	if err != nil {
		return err
	}
	exe := command[0]
	if p, err := img.executable(exe); err == nil {
		exe = p
	}
	args := append([]string{"--target", strconv.Itoa(pid), "--net", "--mount", "--", exe}, command[1:]...)
	if out, err := exec.CommandContext(ctx, "nsenter", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("exec probe: %w: %s", err, out)
	}
	return nil
}

// resolvePort turns a probe's port (a number or a container port's name) into a number.
func resolvePort(p intstr.IntOrString, spec corev1.Container) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range spec.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("no container port named %q", p.StrVal)
}
