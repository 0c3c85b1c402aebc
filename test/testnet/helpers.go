package testnet

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
)

// BuildAgent builds kpo-agent into dir and returns its path; $KPO_AGENT_BIN
// names a prebuilt binary instead.
func BuildAgent(dir string) (string, error) {
	if bin := os.Getenv("KPO_AGENT_BIN"); bin != "" {
		return bin, nil
	}
	out := filepath.Join(dir, "kpo-agent")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/kpo-agent")
	cmd.Dir = apiserver.RepoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building kpo-agent: %w: %s", err, b)
	}
	return out, nil
}

var serverLine = regexp.MustCompile(`server: \S+`)

func replaceServer(kubeconfig, server string) string {
	return serverLine.ReplaceAllString(kubeconfig, "server: "+server)
}

// LockedBuffer is a bytes.Buffer for a process's output that tests read while
// the process writes.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Tail is the last n bytes of s, marked as cut when it is.
func Tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

// ServiceSpec describes a test Service and the pods behind it.
type ServiceSpec struct {
	Name string
	// ClusterIPs: one per family, from 10.96.0.0/16 and fd10:96::/112.
	ClusterIPs []string
	Protocol   corev1.Protocol
	Pods       []*Pod
	// Mutate adjusts the Service before it is created.
	Mutate func(*corev1.Service)
}

// Namespace is where test Services live.
const Namespace = "testnet"

// CreateService creates the Service and its EndpointSlices (one per family),
// as the EndpointSlice controller would, pointing at the pods' echo servers.
func (n *Net) CreateService(t testing.TB, spec ServiceSpec) *corev1.Service {
	t.Helper()
	ctx := context.Background()
	n.ensureNamespace(t)
	if spec.Protocol == "" {
		spec.Protocol = corev1.ProtocolTCP
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: spec.Name},
		Spec: corev1.ServiceSpec{
			ClusterIP: spec.ClusterIPs[0], ClusterIPs: spec.ClusterIPs,
			Ports: []corev1.ServicePort{{Name: "echo", Port: 80, Protocol: spec.Protocol}},
		},
	}
	if len(spec.ClusterIPs) == 2 {
		policy := corev1.IPFamilyPolicyRequireDualStack
		svc.Spec.IPFamilyPolicy = &policy
	}
	if spec.Mutate != nil {
		spec.Mutate(svc)
	}
	lbStatus := svc.Status.LoadBalancer
	if err := n.API.Client.Create(ctx, svc); err != nil {
		t.Fatalf("creating service %s: %v", spec.Name, err)
	}
	t.Cleanup(func() { _ = n.API.Client.Delete(context.Background(), svc) })
	if len(lbStatus.Ingress) > 0 {
		svc.Status.LoadBalancer = lbStatus
		if err := n.API.Client.Status().Update(ctx, svc); err != nil {
			t.Fatalf("service %s status: %v", spec.Name, err)
		}
	}
	n.SetEndpoints(t, svc, spec.Pods, nil)
	return svc
}

// EndpointState overrides the conditions of one pod's endpoint.
type EndpointState struct {
	Ready, Serving, Terminating bool
}

// SetEndpoints writes the Service's EndpointSlices (IPv4 and IPv6) for pods;
// states overrides the conditions of some pods (default: ready).
func (n *Net) SetEndpoints(t testing.TB, svc *corev1.Service, pods []*Pod, states map[*Pod]EndpointState) {
	t.Helper()
	ctx := context.Background()
	port := svc.Spec.Ports[0]
	for _, family := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6} {
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: svc.Namespace, Name: svc.Name + "-" + strings.ToLower(string(family)),
				Labels:      map[string]string{discoveryv1.LabelServiceName: svc.Name},
				Annotations: map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": time.Now().Format(time.RFC3339Nano)}},
			AddressType: family,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(port.Name), Port: ptr.To[int32](8080), Protocol: ptr.To(port.Protocol)}},
		}
		for _, p := range pods {
			ip := p.IP4
			if family == discoveryv1.AddressTypeIPv6 {
				ip = p.IP6
			}
			st, ok := states[p]
			if !ok {
				st = EndpointState{Ready: true, Serving: true}
			}
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
				Addresses: []string{ip}, NodeName: ptr.To(p.Node.Name),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(st.Ready), Serving: ptr.To(st.Serving), Terminating: ptr.To(st.Terminating)},
			})
		}
		existing := &discoveryv1.EndpointSlice{}
		err := n.API.Client.Get(ctx, client.ObjectKeyFromObject(slice), existing)
		if err == nil {
			slice.ResourceVersion = existing.ResourceVersion
			err = n.API.Client.Update(ctx, slice)
		} else {
			err = n.API.Client.Create(ctx, slice)
		}
		if err != nil {
			t.Fatalf("endpoint slice %s: %v", slice.Name, err)
		}
	}
}

func (n *Net) ensureNamespace(t testing.TB) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}
	if err := n.API.Client.Create(context.Background(), ns); err != nil && !isAlreadyExists(err) {
		t.Fatal(err)
	}
}

func isAlreadyExists(err error) bool { return apierrors.IsAlreadyExists(err) }

// AgentConfig is the agents' configuration file in mode on a test network:
// the address plan's pod ranges, a short minSyncPeriod (changes reach the
// kernel within ~50 ms), everything else resolved as the agent resolves
// its file (kpov1.Resolve).
func AgentConfig(mode kpov1.Mode) *kpov1.AgentConfiguration {
	cfg := &kpov1.AgentConfiguration{ConfigurationName: "default", ConfigurationGeneration: 1, Mode: mode}
	cfg.ClusterCIDRs = []kpov1.CIDR{"10.244.0.0/16", "fd10:244::/48"}
	cfg.MinSyncPeriod = "50ms"
	if _, err := kpov1.Resolve(mode, &cfg.ProxySettings, nil); err != nil {
		panic(fmt.Sprintf("the test network's agent configuration: %v", err))
	}
	return cfg
}
