package agent

import (
	"fmt"
	"testing"

	"net/netip"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/tracker"
)

// TestSlimObjectKeepsModelInputs: the model resolves the same service ports
// from the trimmed objects as from the full ones, for a Service that uses
// every input the model reads, and the trimmed objects lost what they should.
func TestSlimObjectKeepsModelInputs(t *testing.T) {
	meta := func(name string, ann map[string]string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: "ns", Name: name, Annotations: ann,
			Labels:          map[string]string{discoveryv1.LabelServiceName: "web"},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
			OwnerReferences: []metav1.OwnerReference{{Kind: "Service", Name: "web"}}}
	}
	svc := func() *corev1.Service {
		return &corev1.Service{
			ObjectMeta: meta("web", map[string]string{
				model.AnnotationSourceRanges: "203.0.113.0/28", "kubectl.kubernetes.io/last-applied-configuration": "{…}"}),
			Spec: corev1.ServiceSpec{
				Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
				Selector:              map[string]string{"app": "web"},
				Ports:                 []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080), NodePort: 30080}},
				ExternalIPs:           []string{"203.0.113.7"},
				ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, HealthCheckNodePort: 31000,
				SessionAffinity:       corev1.ServiceAffinityClientIP,
				SessionAffinityConfig: &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}},
			},
			Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "203.0.113.9"}}}},
		}
	}
	slice := func() *discoveryv1.EndpointSlice {
		ep := func(ip, node string, ready bool) discoveryv1.Endpoint {
			return discoveryv1.Endpoint{Addresses: []string{ip}, NodeName: ptr.To(node), Zone: ptr.To("z1"),
				Hostname:   ptr.To("h"),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(true), Terminating: ptr.To(!ready)},
				Hints:      &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "z1"}}},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "ns", Name: "web-" + ip}}
		}
		m := meta("web-abc", map[string]string{tracker.AnnotationLastChangeTriggerTime: "2026-11-30T07:00:00Z", "other": "x"})
		m.Labels[discoveryv1.LabelManagedBy] = "endpointslice-controller.k8s.io"
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  m,
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{ep("10.244.1.5", "node-1", true), ep("10.244.2.5", "node-2", false)},
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)}},
		}
	}
	node := model.NodeContext{Name: "node-1", Zone: "z1"}
	wantPorts, wantRej := model.BuildServicePorts(svc(), []*discoveryv1.EndpointSlice{slice()}, node)

	s, err := slimObject(svc())
	if err != nil {
		t.Fatal(err)
	}
	sl, err := slimObject(slice())
	if err != nil {
		t.Fatal(err)
	}
	slimSvc, slimSlice := s.(*corev1.Service), sl.(*discoveryv1.EndpointSlice)
	gotPorts, gotRej := model.BuildServicePorts(slimSvc, []*discoveryv1.EndpointSlice{slimSlice}, node)
	if d := cmp.Diff(wantPorts, gotPorts, cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}, netip.AddrPort{})); d != "" {
		t.Errorf("service ports from trimmed objects differ (-full +trimmed):\n%s", d)
	}
	if d := cmp.Diff(wantRej, gotRej); d != "" {
		t.Errorf("rejections from trimmed objects differ (-full +trimmed):\n%s", d)
	}
	if len(wantPorts) == 0 {
		t.Fatal("the full objects resolve to no service port: the comparison shows nothing")
	}

	if slimSvc.ManagedFields != nil || slimSvc.OwnerReferences != nil || slimSvc.Spec.Selector != nil || len(slimSvc.Annotations) != 1 {
		t.Errorf("trimmed Service still holds what the agent never reads: %+v", slimSvc.ObjectMeta)
	}
	if e := slimSlice.Endpoints[0]; e.TargetRef != nil || e.Hostname != nil || e.Zone != nil {
		t.Errorf("trimmed endpoint still holds targetRef/hostname/zone: %+v", e)
	}
	if got := slimSlice.Annotations; len(got) != 1 || got[tracker.AnnotationLastChangeTriggerTime] == "" {
		t.Errorf("trimmed EndpointSlice annotations = %v, want only the trigger time", got)
	}
	if got := slimSlice.Labels; len(got) != 1 || got[discoveryv1.LabelServiceName] != "web" {
		t.Errorf("trimmed EndpointSlice labels = %v, want only the service name", got)
	}
}

// TestSlimObjectSharesNodeNamesAndConditions: endpoints decoded separately
// (each with its own pointers, as from the wire) share one node name and
// one value per condition once trimmed, and still read the same.
func TestSlimObjectSharesNodeNamesAndConditions(t *testing.T) {
	decoded := func(ip, node string, ready bool) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{Endpoints: []discoveryv1.Endpoint{{Addresses: []string{ip},
			NodeName:   ptr.To(string([]byte(node))),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(true)}}}}
	}
	var eps []discoveryv1.Endpoint
	for i, ready := range []bool{true, false, true} {
		o, err := slimObject(decoded(fmt.Sprintf("10.244.1.%d", i), "node-shared", ready))
		if err != nil {
			t.Fatal(err)
		}
		eps = append(eps, o.(*discoveryv1.EndpointSlice).Endpoints[0])
	}
	a, b, c := eps[0], eps[1], eps[2]
	if a.NodeName != b.NodeName || b.NodeName != c.NodeName || *a.NodeName != "node-shared" {
		t.Errorf("node names not shared: %p %p %p", a.NodeName, b.NodeName, c.NodeName)
	}
	if a.Conditions.Ready != c.Conditions.Ready || a.Conditions.Serving != b.Conditions.Serving {
		t.Errorf("equal conditions not shared")
	}
	if !*a.Conditions.Ready || *b.Conditions.Ready || !*b.Conditions.Serving || a.Conditions.Terminating != nil {
		t.Errorf("conditions changed: %+v %+v", a.Conditions, b.Conditions)
	}
}

func TestListWatchConfigIsProtobuf(t *testing.T) {
	in := &rest.Config{Host: "https://198.51.100.254:6443"}
	c := ListWatchConfig(in)
	if c.ContentType != runtime.ContentTypeProtobuf || in.ContentType != "" {
		t.Errorf("ContentType = %q (input %q), want protobuf on a copy", c.ContentType, in.ContentType)
	}
	if !c.DisableCompression || in.DisableCompression {
		t.Errorf("DisableCompression = %v (input %v), want true on a copy", c.DisableCompression, in.DisableCompression)
	}
}
