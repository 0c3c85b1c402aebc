package testnet

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
)

// Loader creates N Services × E endpoints with parallel client-go workers, for
// benchmarks. The number of Services only grows (they cannot be deleted in
// bulk quickly), so measure sizes in ascending order of Services; the
// endpoints per Service may go up or down: Ensure rewrites every EndpointSlice
// of the first N whose endpoint count differs (1000×50 then 10000×2 puts the
// first 1000 back to 2 endpoints).
type Loader struct {
	kube kubernetes.Interface
	mu   sync.Mutex
	// endpoints per service index as written by Ensure; -1 marks a service
	// that Retarget changed, which the next Ensure rewrites.
	endpoints map[int]int
}

// NewLoader returns a loader writing through kube (make it from
// LoaderConfig: the loader runs 16 workers).
func NewLoader(kube kubernetes.Interface) *Loader { return &Loader{kube: kube} }

// LoaderConfig is cfg as the loader wants it: no client-side rate limit that
// matters (client-go's default 5 QPS would make 10k Services take over an
// hour) and protobuf, which costs the API server less than JSON to decode and
// encode; the objects stored are the same.
func LoaderConfig(cfg *rest.Config) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 1000, 2000
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	return cfg
}

// BenchNamespace holds the loader's Services.
const BenchNamespace = "bench"
const benchNamespace = BenchNamespace

// RemoteNode owns every endpoint: a node that runs neither proxy, so that both
// proxies see only remote endpoints and neither gets local-endpoint rules.
const RemoteNode = "node-remote"

// Ensure makes services Services exist, each with endpoints endpoints (growing
// or shrinking their EndpointSlices). Services beyond services that an earlier
// call created stay as they were: callers go in ascending order of services.
func (l *Loader) Ensure(b testing.TB, services, endpoints int) {
	b.Helper()
	ctx := context.Background()
	if l.endpoints == nil {
		l.endpoints = map[int]int{}
		_, _ = l.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNamespace}}, metav1.CreateOptions{})
	}
	l.mu.Lock()
	have := len(l.endpoints)
	l.mu.Unlock()
	if have > services {
		b.Fatalf("the loader holds %d Services and cannot delete them: measure sizes in ascending order of Services (%d after %d)",
			have, services, have)
	}
	start := time.Now()
	l.mu.Lock()
	var todo []int
	for i := range services {
		if l.endpoints[i] != endpoints {
			todo = append(todo, i)
		}
	}
	l.mu.Unlock()
	if err := l.run(ctx, todo, endpoints, b.Logf); err != nil {
		b.Fatal(err)
	}
	l.mu.Lock()
	for i := range services {
		l.endpoints[i] = endpoints
	}
	l.mu.Unlock()
	if len(todo) > 0 {
		b.Logf("loaded %d services × %d endpoints in %v", services, endpoints, time.Since(start).Round(time.Millisecond))
	}
}

// loaderWorkers is how many requests the loader keeps in flight: enough to
// keep a 2-core API server busy (it, not the loader, is the bottleneck).
const loaderWorkers = 16

// progressEvery is how often a long load logs how far it got: 50k Services
// take many minutes (see docs/benchmarks.md), and a silent run looks hung.
const progressEvery = time.Minute

// run writes the services in todo with endpoints endpoints, with
// loaderWorkers workers; it stops at the first error and returns it.
func (l *Loader) run(ctx context.Context, todo []int, endpoints int, logf func(string, ...any)) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var done atomic.Int64
	work := make(chan int)
	var wg sync.WaitGroup
	for range loaderWorkers {
		wg.Go(func() {
			for i := range work {
				if err := l.one(ctx, i, endpoints); err != nil {
					cancel(fmt.Errorf("service %d: %w", i, err))
					continue
				}
				done.Add(1)
			}
		})
	}
	start, next := time.Now(), time.Now().Add(progressEvery)
	for _, i := range todo {
		if ctx.Err() != nil {
			break
		}
		work <- i
		if now := time.Now(); now.After(next) {
			next = now.Add(progressEvery)
			d := done.Load()
			logf("loader: %d of %d services written (%.0f/s)", d, len(todo), float64(d)/now.Sub(start).Seconds())
		}
	}
	close(work)
	wg.Wait()
	return context.Cause(ctx)
}

// one creates service i (if new) and writes its EndpointSlice with n endpoints.
func (l *Loader) one(ctx context.Context, i, n int) error {
	name := fmt.Sprintf("svc-%d", i)
	l.mu.Lock()
	_, known := l.endpoints[i]
	l.mu.Unlock()
	if !known {
		ip := BenchServiceIP(i)
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: benchNamespace, Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		}
		if _, err := l.kube.CoreV1().Services(benchNamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	slice := benchSlice(i, n)
	if !known {
		// A new Service has no slice yet: create it without the Get that
		// write does first (a third of the requests of a fresh load).
		_, err := l.kube.DiscoveryV1().EndpointSlices(benchNamespace).Create(ctx, slice, metav1.CreateOptions{})
		if !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return l.write(ctx, slice)
}

// benchSlice is the EndpointSlice of service i with n endpoints.
func benchSlice(i, n int) *discoveryv1.EndpointSlice {
	name := fmt.Sprintf("svc-%d", i)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNamespace, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for e := range n {
		// Pod addresses behind other nodes: 10.244.2.0/24 onwards, unique per endpoint.
		k := i*n + e
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{fmt.Sprintf("10.244.%d.%d", 2+k/250%250, 1+k%250)},
			NodeName:  ptr.To(RemoteNode),
		})
	}
	return slice
}

// BenchServiceIP is the ClusterIP of the loader's service i (10.96.100.1
// onwards, 250 to a /24); from service 39000 on (10.96.255.250 is the last
// of those), 10.96.1.1 onwards, so that 50k Services fit the /16.
func BenchServiceIP(i int) string {
	if i >= 39000 {
		i -= 39000
		return fmt.Sprintf("10.96.%d.%d", 1+i/250, 1+i%250)
	}
	return fmt.Sprintf("10.96.%d.%d", 100+i/250, 1+i%250)
}

// ChangedEndpointIP is the gen-th address that Touch and Retarget move
// endpoints to: 10.244.252.1–10.244.255.250, pod network addresses that Ensure
// never uses (it stays below 10.244.252.0), so that each is a real change. They
// repeat after 1000.
func ChangedEndpointIP(gen int) string {
	return fmt.Sprintf("10.244.%d.%d", 252+gen/250%4, 1+gen%250)
}

// write creates or updates an EndpointSlice.
func (l *Loader) write(ctx context.Context, slice *discoveryv1.EndpointSlice) error {
	name := slice.Name
	slices := l.kube.DiscoveryV1().EndpointSlices(benchNamespace)
	existing, err := slices.Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		slice.ResourceVersion = existing.ResourceVersion
		_, err = slices.Update(ctx, slice, metav1.UpdateOptions{})
		return err
	}
	_, err = slices.Create(ctx, slice, metav1.CreateOptions{})
	return err
}

// Touch moves the first endpoint of service i to a new address (gen makes it
// unique), the smallest change that needs a partial sync.
func (l *Loader) Touch(ctx context.Context, i, gen int) error {
	slices := l.kube.DiscoveryV1().EndpointSlices(benchNamespace)
	s, err := slices.Get(ctx, fmt.Sprintf("svc-%d", i), metav1.GetOptions{})
	if err != nil {
		return err
	}
	if len(s.Endpoints) == 0 {
		return fmt.Errorf("slice %s has no endpoints", s.Name)
	}
	s.Endpoints[0].Addresses = []string{ChangedEndpointIP(gen)}
	_, err = slices.Update(ctx, s, metav1.UpdateOptions{})
	return err
}

// Retarget replaces all endpoints of service i with addrs (one
// EndpointSlice update, as when a Deployment's pods are replaced). The next
// Ensure restores the service.
func (l *Loader) Retarget(ctx context.Context, i int, addrs ...string) error {
	name := fmt.Sprintf("svc-%d", i)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNamespace, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, a := range addrs {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, NodeName: ptr.To(RemoteNode)})
	}
	l.mu.Lock()
	l.endpoints[i] = -1
	l.mu.Unlock()
	return l.write(ctx, slice)
}
