package soak

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"kpo.dev/kpo/test/testnet"
)

// Namespace holds the soak's own Services: the stable ones, the transient
// ones the churn creates and deletes, the canary.
const Namespace = "soak"

// TransientPool is how many transient Services the churn keeps: it creates
// one and, once the pool is full, deletes the oldest, so the number of
// Services stays constant after the first TransientPool creations (well
// within the first half of a run, which the slopes leave out).
const TransientPool = 50

// transientIPs is the range the transient Services' ClusterIPs cycle through
// (10.96.200.1–10.96.201.250): ten times the pool, so an address is long
// released by the API server when it comes round again.
const transientIPs = 500

// Churn makes a steady stream of changes, one per Step, in a fixed cycle:
//
//	move one endpoint of a loaded Service (EndpointSlice update)
//	replace all endpoints of a loaded Service (EndpointSlice update)
//	create a transient Service and its EndpointSlice (TCP or UDP)
//	update a transient: its Service port (80 ↔ 81) or its endpoints
//	delete the oldest transient Service and its EndpointSlice
//
// Loaded Services are the testnet.Loader's; transient ones live in
// Namespace. Endpoint addresses are pod-network addresses nobody serves: the
// churn's Services are for the proxies to program, the stable Services carry
// the traffic.
type Churn struct {
	kube     kubernetes.Interface
	loader   *testnet.Loader
	services int
	rng      *rand.Rand
	step     int
	// next numbers transient Services; live are those that exist, oldest first.
	next int
	live []int
	// Counts is how many changes of each kind were made.
	Counts map[string]int
}

// NewChurn churns the first services Services of loader and its own
// transient ones; seed fixes the choice of Services.
func NewChurn(kube kubernetes.Interface, loader *testnet.Loader, services int, seed uint64) *Churn {
	return &Churn{kube: kube, loader: loader, services: services, rng: rand.New(rand.NewPCG(seed, 0)),
		Counts: map[string]int{}}
}

// Step makes the next change of the cycle.
func (c *Churn) Step(ctx context.Context) error {
	c.step++
	kind := c.step % 5
	if kind == 4 && len(c.live) < TransientPool {
		kind = 0 // the pool is filling: nothing to delete yet
	}
	var err error
	var what string
	switch kind {
	case 0:
		what, err = "endpoint moved", c.loader.Touch(ctx, c.rng.IntN(c.services), c.step)
	case 1:
		addrs := []string{testnet.ChangedEndpointIP(c.step), testnet.ChangedEndpointIP(c.step + 500)}
		what, err = "endpoints replaced", c.loader.Retarget(ctx, c.rng.IntN(c.services), addrs...)
	case 2:
		what, err = "service created", c.create(ctx)
	case 3:
		what, err = c.update(ctx)
	case 4:
		what, err = "service deleted", c.deleteOldest(ctx)
	}
	if err != nil {
		return fmt.Errorf("churn step %d (%s): %w", c.step, what, err)
	}
	c.Counts[what]++
	return nil
}

// Live is the number of transient Services that exist.
func (c *Churn) Live() int { return len(c.live) }

func transientName(k int) string { return fmt.Sprintf("churn-%d", k) }

// TransientIP is transient Service k's ClusterIP.
func TransientIP(k int) string {
	i := k % transientIPs
	return fmt.Sprintf("10.96.%d.%d", 200+i/250, 1+i%250)
}

// transientProtocol alternates: UDP transients make the agents clear stale
// conntrack entries when their endpoints go.
func transientProtocol(k int) corev1.Protocol {
	if k%2 == 1 {
		return corev1.ProtocolUDP
	}
	return corev1.ProtocolTCP
}

// transientEndpoint is an address of transient k's gen-th endpoint set:
// 10.244.240.0–10.244.247.255, which neither the loader nor the nodes use.
func transientEndpoint(k, gen int) string {
	i := (k*7 + gen) % 2000
	return fmt.Sprintf("10.244.%d.%d", 240+i/250, 1+i%250)
}

func (c *Churn) create(ctx context.Context) error {
	k := c.next
	c.next++
	ip := TransientIP(k)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: transientName(k)},
		Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []corev1.ServicePort{{Name: "p", Port: 80, Protocol: transientProtocol(k)}}},
	}
	if _, err := c.kube.CoreV1().Services(Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return err
	}
	c.live = append(c.live, k)
	_, err := c.kube.DiscoveryV1().EndpointSlices(Namespace).Create(ctx, transientSlice(k, 0), metav1.CreateOptions{})
	return err
}

// transientSlice is transient k's EndpointSlice, generation gen of its
// endpoints (two remote endpoints).
func transientSlice(k, gen int) *discoveryv1.EndpointSlice {
	name := transientName(k)
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: name},
			// As the EndpointSlice controller writes it: the agents' programming
			// latency histogram observes from here.
			Annotations: map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": time.Now().Format(time.RFC3339Nano)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("p"), Port: ptr.To[int32](8080), Protocol: ptr.To(transientProtocol(k))}},
	}
	for e := range 2 {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{transientEndpoint(k, 2*gen+e)}, NodeName: ptr.To(testnet.RemoteNode),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		})
	}
	return s
}

// update changes a random live transient: every other time its Service's
// port, else its endpoints.
func (c *Churn) update(ctx context.Context) (string, error) {
	if len(c.live) == 0 {
		return "service created", c.create(ctx)
	}
	k := c.live[c.rng.IntN(len(c.live))]
	if c.step%2 == 0 {
		svcs := c.kube.CoreV1().Services(Namespace)
		svc, err := svcs.Get(ctx, transientName(k), metav1.GetOptions{})
		if err != nil {
			return "service updated", err
		}
		svc.Spec.Ports[0].Port = 161 - svc.Spec.Ports[0].Port // 80 ↔ 81
		_, err = svcs.Update(ctx, svc, metav1.UpdateOptions{})
		return "service updated", err
	}
	slices := c.kube.DiscoveryV1().EndpointSlices(Namespace)
	old, err := slices.Get(ctx, transientName(k), metav1.GetOptions{})
	if err != nil {
		return "transient endpoints replaced", err
	}
	s := transientSlice(k, c.step)
	s.ResourceVersion = old.ResourceVersion
	_, err = slices.Update(ctx, s, metav1.UpdateOptions{})
	return "transient endpoints replaced", err
}

func (c *Churn) deleteOldest(ctx context.Context) error {
	k := c.live[0]
	c.live = c.live[1:]
	// Either order happens in a cluster (the Service first, its EndpointSlice
	// when the controller notices; or a slice removed alone): alternate.
	slice := func() error {
		return c.kube.DiscoveryV1().EndpointSlices(Namespace).Delete(ctx, transientName(k), metav1.DeleteOptions{})
	}
	svc := func() error {
		return c.kube.CoreV1().Services(Namespace).Delete(ctx, transientName(k), metav1.DeleteOptions{})
	}
	first, second := svc, slice
	if k%2 == 1 {
		first, second = slice, svc
	}
	if err := first(); err != nil {
		return err
	}
	return second()
}

// Run makes rate changes per second until stop is closed (or a change
// fails) and returns how many it made. A change under way when stop closes is
// completed, so that every transient Service that exists has its
// EndpointSlice.
func (c *Churn) Run(stop <-chan struct{}, rate float64) (int, error) {
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	n := 0
	for {
		select {
		case <-stop:
			return n, nil
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := c.Step(ctx)
		cancel()
		if err != nil {
			return n, err
		}
		n++
	}
}
