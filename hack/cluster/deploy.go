package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/images"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/hack/release"
)

// Manifests the demo and the whole-system tests apply, relative to the repository.
const (
	SamplesDir = "config/samples"
	EchoApp    = "hack/demo/echo.yaml"
	// InstallYAML is where DeployOperator writes the install.yaml it applies.
	InstallYAML = "bin/cluster-install.yaml"
)

// Repo is a path inside the repository.
func Repo(rel string) string { return filepath.Join(apiserver.RepoRoot(), rel) }

// poll calls cond every 200 ms until it returns nil or timeout passes; the
// error then says what was last seen.
func poll(ctx context.Context, timeout time.Duration, what string, cond func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := cond(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not done after %v: %w", what, timeout, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// WaitNodesReady waits until every node is registered and Ready.
func (c *Cluster) WaitNodesReady(ctx context.Context, timeout time.Duration) error {
	return poll(ctx, timeout, "nodes Ready", func(ctx context.Context) error {
		nodes, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		ready := 0
		for _, n := range nodes.Items {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		if ready < len(c.Nodes) {
			return fmt.Errorf("%d of %d nodes Ready", ready, len(c.Nodes))
		}
		// Pods need their namespace's default service account (the controller manager makes it).
		_, err = c.Kube.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}

// DeployOperator applies install.yaml as `make release` renders it (package
// hack/release): the operator pinned by the digest `make images` wrote, with
// one setting a release leaves empty, the operator's own API server address:
// this cluster has no kube-proxy, so nothing serves the kubernetes Service
// before kpo's agents run. The agents' address is discovered (the operator
// reads the kubernetes EndpointSlice). It waits until the Deployment is
// available.
func (c *Cluster) DeployOperator(ctx context.Context, timeout time.Duration) error {
	kubectl, err := apiserver.Binary("kubectl")
	if err != nil {
		return err
	}
	digest, err := release.ImageDigest(filepath.Join(ImagesDir(), "digests.txt"), images.Kpo.Name)
	if err != nil {
		return err
	}
	install, err := release.InstallYAML(ctx, release.Options{
		Repo: Repo("."), Kubectl: kubectl, Version: "dev", Image: images.Kpo.Name, Digest: digest,
		KubeAPIServer: fmt.Sprintf("%s:%d", netns.LANIP4, APIServerPort),
	})
	if err != nil {
		return err
	}
	if err := os.WriteFile(Repo(InstallYAML), install, 0o644); err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, nil, "apply", "--server-side", "-f", Repo(InstallYAML)); err != nil {
		return err
	}
	return c.WaitDeployment(ctx, release.Namespace, release.OperatorDeployment, timeout)
}

// WaitDeployment waits until a Deployment's pods are all updated and available.
func (c *Cluster) WaitDeployment(ctx context.Context, namespace, name string, timeout time.Duration) error {
	return poll(ctx, timeout, "deployment "+namespace+"/"+name, func(ctx context.Context) error {
		var d appsv1.Deployment
		if err := c.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &d); err != nil {
			return err
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		if d.Status.ObservedGeneration < d.Generation || d.Status.UpdatedReplicas < want || d.Status.AvailableReplicas < want {
			return fmt.Errorf("%d/%d available, %d updated", d.Status.AvailableReplicas, want, d.Status.UpdatedReplicas)
		}
		return nil
	})
}

// WaitProxyAvailable waits until the ProxyConfiguration reports Available for
// its current generation with every desired node ready in mode.
func (c *Cluster) WaitProxyAvailable(ctx context.Context, name string, mode kpov1.Mode, timeout time.Duration) (*kpov1.ProxyConfiguration, error) {
	var pc kpov1.ProxyConfiguration
	err := poll(ctx, timeout, fmt.Sprintf("ProxyConfiguration %s Available in %s mode", name, mode), func(ctx context.Context) error {
		if err := c.Client.Get(ctx, client.ObjectKey{Name: name}, &pc); err != nil {
			return err
		}
		st := pc.Status
		avail := apimeta.FindStatusCondition(st.Conditions, kpov1.ConditionAvailable)
		switch {
		case st.ObservedGeneration != pc.Generation:
			return fmt.Errorf("status describes generation %d, spec is %d", st.ObservedGeneration, pc.Generation)
		case avail == nil || avail.Status != metav1.ConditionTrue:
			return fmt.Errorf("not Available: %+v", avail)
		case st.Mode != string(mode):
			return fmt.Errorf("nodes run %q", st.Mode)
		case st.DesiredNodes == 0 || st.ReadyNodes != st.DesiredNodes:
			return fmt.Errorf("%d of %d nodes ready", st.ReadyNodes, st.DesiredNodes)
		}
		return nil
	})
	return &pc, err
}

// DeployEcho applies the demo app and waits until its Service has n ready endpoints.
func (c *Cluster) DeployEcho(ctx context.Context, n int, timeout time.Duration) (*corev1.Service, error) {
	if _, err := c.Kubectl(ctx, nil, "apply", "--server-side", "-f", Repo(EchoApp)); err != nil {
		return nil, err
	}
	if err := c.WaitReadyEndpoints(ctx, "demo", "echo", n, timeout); err != nil {
		return nil, err
	}
	return c.Kube.CoreV1().Services("demo").Get(ctx, "echo", metav1.GetOptions{})
}

// WaitReadyEndpoints waits until a Service's EndpointSlices hold n ready
// endpoints (per address family).
func (c *Cluster) WaitReadyEndpoints(ctx context.Context, namespace, service string, n int, timeout time.Duration) error {
	return poll(ctx, timeout, fmt.Sprintf("%d ready endpoints of %s/%s", n, namespace, service), func(ctx context.Context) error {
		slices, err := c.Kube.DiscoveryV1().EndpointSlices(namespace).List(ctx, metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=" + service})
		if err != nil {
			return err
		}
		ready := map[discoveryv1.AddressType]int{}
		for _, s := range slices.Items {
			for _, ep := range s.Endpoints {
				if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
					ready[s.AddressType]++
				}
			}
		}
		if ready[discoveryv1.AddressTypeIPv4] != n {
			return fmt.Errorf("ready endpoints by family: %v", ready)
		}
		return nil
	})
}

// DescribePods summarises every pod's status (phase, the runtime's message,
// each container's state): what to print when something does not come up.
func (c *Cluster) DescribePods(ctx context.Context) string {
	pods, err := c.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range pods.Items {
		fmt.Fprintf(&b, "%s/%s on %s: %s %s %s\n", p.Namespace, p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.Reason, p.Status.Message)
		for _, cs := range p.Status.ContainerStatuses {
			switch s := cs.State; {
			case s.Waiting != nil:
				fmt.Fprintf(&b, "  %s: waiting %s: %s\n", cs.Name, s.Waiting.Reason, s.Waiting.Message)
			case s.Running != nil:
				fmt.Fprintf(&b, "  %s: running since %s, ready %v, restarts %d\n", cs.Name, s.Running.StartedAt.Format(time.TimeOnly), cs.Ready, cs.RestartCount)
			case s.Terminated != nil:
				fmt.Fprintf(&b, "  %s: terminated %s (exit %d)\n", cs.Name, s.Terminated.Reason, s.Terminated.ExitCode)
			}
		}
	}
	return b.String()
}

// WaitDaemonSet waits until a DaemonSet's pods are all updated and available.
func (c *Cluster) WaitDaemonSet(ctx context.Context, namespace, name string, timeout time.Duration) error {
	return poll(ctx, timeout, "daemonset "+namespace+"/"+name, func(ctx context.Context) error {
		var ds appsv1.DaemonSet
		if err := c.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &ds); err != nil {
			return err
		}
		st := ds.Status
		if st.ObservedGeneration < ds.Generation || st.DesiredNumberScheduled == 0 ||
			st.UpdatedNumberScheduled < st.DesiredNumberScheduled || st.NumberAvailable < st.DesiredNumberScheduled {
			return fmt.Errorf("%d desired, %d updated, %d available", st.DesiredNumberScheduled, st.UpdatedNumberScheduled, st.NumberAvailable)
		}
		return nil
	})
}
