package agent

import (
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"

	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/tracker"
)

// ListWatchConfig is cfg for the agent's clientset of built-in objects
// (Services, EndpointSlices, Nodes): protobuf on the wire, as kube-proxy's
// (its clientConnection.contentType defaults to
// "application/vnd.kubernetes.protobuf", pkg/proxy/apis/config/v1alpha1/defaults.go,
// set on its client in cmd/kube-proxy/app/server.go). Decoding 20k objects
// of the initial lists is most of an agent's start-up at 10k Services, and
// protobuf decodes several times faster than JSON. Custom resources have no
// protobuf encoding: clients for them keep cfg as it is.
//
// Without gzip: the initial lists come as a compressed stream, and
// inflating it was a sixth of the agent's CPU from start to its first sync
// at 10k Services (KPO_AGENT_CPU_PROFILE; the API server spends more
// compressing). A proxy's lists are a few MiB even at 50k Services
// (protobuf, trimmed by slimObject on arrival, but sent whole): cheap on a
// node's link to its API server, and the CPU is the node's and the API
// server's.
func ListWatchConfig(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.ContentType = runtime.ContentTypeProtobuf
	c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	c.DisableCompression = true
	return c
}

// slimObject is the informers' transform: it keeps of an object only what
// the agent reads (the model's inputs, see model.Build and the tracker), so
// that the caches hold less and the garbage collector walks less. It runs on
// the freshly decoded object before it enters the cache, so trimming it in
// place is safe. What it drops:
//   - every object: managedFields; annotations other than those the agent reads;
//   - Services: the pod selector (the endpoint controller's input, not a proxy's);
//   - EndpointSlices: labels other than those the agent reads; each
//     endpoint's targetRef, hostname, zone (the model reads hints, not
//     zones) and deprecatedTopology;
//
// and EndpointSlices' endpoints share one copy of each node name and of the
// condition values (sharedValues), where the decoder gives every endpoint
// its own. The cache's objects are read-only to everyone (client-go's
// contract), so sharing is safe.
//
// Adding a field to the model means keeping it here (TestSlimObjectKeepsModelInputs).
func slimObject(o any) (any, error) {
	switch t := o.(type) {
	case *corev1.Service:
		slimMeta(&t.ObjectMeta, model.AnnotationSourceRanges, model.AnnotationTopologyMode)
		t.Spec.Selector = nil
	case *discoveryv1.EndpointSlice:
		slimMeta(&t.ObjectMeta, tracker.AnnotationLastChangeTriggerTime)
		t.Labels = keepOnly(t.Labels, discoveryv1.LabelServiceName, model.LabelServiceProxyName, model.LabelHeadless)
		for i := range t.Endpoints {
			e := &t.Endpoints[i]
			e.TargetRef, e.Hostname, e.Zone, e.DeprecatedTopology = nil, nil, nil, nil
			c := &e.Conditions
			c.Ready, c.Serving, c.Terminating = sharedBool(c.Ready), sharedBool(c.Serving), sharedBool(c.Terminating)
		}
		shared.nodeNames(t.Endpoints)
	default:
		return dropManagedFields(o)
	}
	return o, nil
}

// slimMeta drops managedFields, owner references and every annotation but keep.
func slimMeta(m *metav1.ObjectMeta, keep ...string) {
	m.ManagedFields, m.OwnerReferences = nil, nil
	m.Annotations = keepOnly(m.Annotations, keep...)
}

// keepOnly is m with only the keys keep (nil for none); m itself when it
// holds nothing else.
func keepOnly(m map[string]string, keep ...string) map[string]string {
	if len(m) == 0 {
		return m
	}
	var kept map[string]string
	for _, k := range keep {
		if v, ok := m[k]; ok {
			if kept == nil {
				kept = make(map[string]string, len(keep))
			}
			kept[k] = v
		}
	}
	if len(kept) == len(m) {
		return m
	}
	return kept
}

// sharedValues hands out one *string per node name for the EndpointSlices'
// endpoints. The decoder allocates a pointer and a string per endpoint; at
// 5k Services × 50 endpoints the copies were megabytes of the cache
// (BenchmarkSlimObjectRetained). The table forgets everything when it
// holds maxSharedNames (nodes come and go): pointers handed out stay valid,
// they are just no longer shared with later ones.
type sharedValues struct {
	mu    sync.Mutex
	names map[string]*string
}

const maxSharedNames = 10000

var shared = &sharedValues{names: map[string]*string{}}

// nodeNames points the endpoints' nodeNames at the shared copies.
func (s *sharedValues) nodeNames(eps []discoveryv1.Endpoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range eps {
		p := eps[i].NodeName
		if p == nil {
			continue
		}
		if q, ok := s.names[*p]; ok {
			eps[i].NodeName = q
			continue
		}
		if len(s.names) >= maxSharedNames {
			s.names = map[string]*string{}
		}
		s.names[*p] = p
	}
}

// sharedTrue and sharedFalse are every endpoint condition's value.
var sharedTrue, sharedFalse = true, false

func sharedBool(p *bool) *bool {
	switch {
	case p == nil:
		return nil
	case *p:
		return &sharedTrue
	}
	return &sharedFalse
}
