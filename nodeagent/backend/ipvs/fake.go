package ipvs

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"syscall"
)

// knownSchedulers are the IPVS schedulers of a stock kernel (the ip_vs_*
// modules). The kernel answers ENOENT for a scheduler whose module it cannot
// load; the fake does the same for names outside this list.
var knownSchedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh", "fo", "ovf", "twos"}

// FakeHandle is an in-memory IPVS enforcing the kernel's rules that matter to
// the backend: EEXIST for a duplicate service or destination, ENOENT for a
// missing one, a destination needs its service, the address family of a
// destination must match its service's, unknown schedulers are refused. It
// records how many times each operation ran, so tests can assert that a sync
// did (or did not) change anything.
type FakeHandle struct {
	mu       sync.Mutex
	svcs     map[VSKey]*fakeService
	timeouts Timeouts
	// Ops counts calls by method name.
	Ops map[string]int
	// FailOn makes the named method fail with EIO, to test error paths.
	FailOn map[string]bool
}

type fakeService struct {
	svc   Service
	dests map[netip.AddrPort]*Destination
}

// NewFakeHandle returns an empty fake IPVS.
func NewFakeHandle() *FakeHandle {
	return &FakeHandle{svcs: map[VSKey]*fakeService{}, Ops: map[string]int{}, FailOn: map[string]bool{}}
}

func (f *FakeHandle) op(name string) error {
	f.Ops[name]++
	if f.FailOn[name] {
		return fmt.Errorf("%s: %w", name, syscall.EIO)
	}
	return nil
}

// ResetOps forgets the operation counts.
func (f *FakeHandle) ResetOps() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Ops = map[string]int{}
}

// Mutations sums the counts of the operations that change the kernel.
func (f *FakeHandle) Mutations() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, m := range []string{"NewService", "UpdateService", "DelService", "NewDestination", "UpdateDestination", "DelDestination", "SetConfig"} {
		n += f.Ops[m]
	}
	return n
}

func checkService(s Service) error {
	if !s.Addr.IsValid() || s.Port == 0 {
		return fmt.Errorf("service %v: %w", s.VSKey, syscall.EINVAL)
	}
	if !slices.Contains(knownSchedulers, s.Scheduler) {
		// The kernel's ip_vs_scheduler_get fails: "Scheduler module ip_vs_x not found".
		return fmt.Errorf("scheduler %q: %w", s.Scheduler, syscall.ENOENT)
	}
	return nil
}

// GetServices implements Handle.
func (f *FakeHandle) GetServices() ([]Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.op("GetServices"); err != nil {
		return nil, err
	}
	out := make([]Service, 0, len(f.svcs))
	for _, s := range f.svcs {
		out = append(out, s.svc)
	}
	return out, nil
}

// NewService implements Handle.
func (f *FakeHandle) NewService(s Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.op("NewService"); err != nil {
		return err
	}
	if err := checkService(s); err != nil {
		return err
	}
	if _, ok := f.svcs[s.VSKey]; ok {
		return fmt.Errorf("service %v: %w", s.VSKey, syscall.EEXIST)
	}
	f.svcs[s.VSKey] = &fakeService{svc: s, dests: map[netip.AddrPort]*Destination{}}
	return nil
}

// UpdateService implements Handle.
func (f *FakeHandle) UpdateService(s Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.op("UpdateService"); err != nil {
		return err
	}
	if err := checkService(s); err != nil {
		return err
	}
	cur, ok := f.svcs[s.VSKey]
	if !ok {
		return fmt.Errorf("service %v: %w", s.VSKey, syscall.ESRCH)
	}
	cur.svc = s
	return nil
}

// DelService implements Handle: the kernel drops the destinations with it.
func (f *FakeHandle) DelService(k VSKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.op("DelService"); err != nil {
		return err
	}
	if _, ok := f.svcs[k]; !ok {
		return fmt.Errorf("service %v: %w", k, syscall.ESRCH)
	}
	delete(f.svcs, k)
	return nil
}

func (f *FakeHandle) service(k VSKey) (*fakeService, error) {
	s, ok := f.svcs[k]
	if !ok {
		// ip_vs_genl_set_cmd answers ESRCH for a destination of a missing service.
		return nil, fmt.Errorf("service %v: %w", k, syscall.ESRCH)
	}
	return s, nil
}

// GetDestinations implements Handle.
func (f *FakeHandle) GetDestinations(k VSKey) ([]Destination, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.op("GetDestinations"); err != nil {
		return nil, err
	}
	s, err := f.service(k)
	if err != nil {
		return nil, err
	}
	out := make([]Destination, 0, len(s.dests))
	for _, d := range s.dests {
		out = append(out, *d)
	}
	return out, nil
}

func checkDest(k VSKey, d netip.AddrPort) error {
	if !d.Addr().IsValid() || d.Addr().Is4() != k.Addr.Is4() {
		// Mixed families need the tunnel method, never masquerade.
		return fmt.Errorf("destination %v of %v: %w", d, k, syscall.EINVAL)
	}
	return nil
}

// NewDestination implements Handle.
func (f *FakeHandle) NewDestination(k VSKey, d Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.op("NewDestination"); err != nil {
		return err
	}
	s, err := f.service(k)
	if err != nil {
		return err
	}
	if err := checkDest(k, d.Addr); err != nil {
		return err
	}
	if _, ok := s.dests[d.Addr]; ok {
		return fmt.Errorf("destination %v of %v: %w", d.Addr, k, syscall.EEXIST)
	}
	s.dests[d.Addr] = &Destination{Addr: d.Addr, Weight: d.Weight}
	return nil
}

// UpdateDestination implements Handle; connection counts are kept.
func (f *FakeHandle) UpdateDestination(k VSKey, d Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.op("UpdateDestination"); err != nil {
		return err
	}
	s, err := f.service(k)
	if err != nil {
		return err
	}
	cur, ok := s.dests[d.Addr]
	if !ok {
		return fmt.Errorf("destination %v of %v: %w", d.Addr, k, syscall.ENOENT)
	}
	cur.Weight = d.Weight
	return nil
}

// DelDestination implements Handle.
func (f *FakeHandle) DelDestination(k VSKey, d netip.AddrPort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.op("DelDestination"); err != nil {
		return err
	}
	s, err := f.service(k)
	if err != nil {
		return err
	}
	if _, ok := s.dests[d]; !ok {
		return fmt.Errorf("destination %v of %v: %w", d, k, syscall.ENOENT)
	}
	delete(s.dests, d)
	return nil
}

// GetConfig implements Handle.
func (f *FakeHandle) GetConfig() (Timeouts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.timeouts, f.op("GetConfig")
}

// SetConfig implements Handle: as in the kernel, a zero timeout keeps the
// current value.
func (f *FakeHandle) SetConfig(t Timeouts) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.op("SetConfig"); err != nil {
		return err
	}
	if t.TCP != 0 {
		f.timeouts.TCP = t.TCP
	}
	if t.TCPFin != 0 {
		f.timeouts.TCPFin = t.TCPFin
	}
	if t.UDP != 0 {
		f.timeouts.UDP = t.UDP
	}
	return nil
}

// SetConnections sets a destination's connection counts, as traffic would.
func (f *FakeHandle) SetConnections(k VSKey, d netip.AddrPort, active, inactive int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.svcs[k]; ok {
		if dst, ok := s.dests[d]; ok {
			dst.ActiveConnections, dst.InactiveConnections = active, inactive
		}
	}
}

// Service returns a virtual server and its destinations by address.
func (f *FakeHandle) Service(k VSKey) (Service, map[netip.AddrPort]Destination, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.svcs[k]
	if !ok {
		return Service{}, nil, false
	}
	ds := map[netip.AddrPort]Destination{}
	for a, d := range s.dests {
		ds[a] = *d
	}
	return s.svc, ds, true
}

// Keys lists the virtual servers, sorted.
func (f *FakeHandle) Keys() []VSKey {
	f.mu.Lock()
	defer f.mu.Unlock()
	ks := slices.Collect(maps.Keys(f.svcs))
	slices.SortFunc(ks, func(a, b VSKey) int {
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		if a.Port != b.Port {
			return int(a.Port) - int(b.Port)
		}
		return int(a.Protocol) - int(b.Protocol)
	})
	return ks
}

// FakeLinks is an in-memory rtnetlink: interfaces and their addresses.
// Adding an address twice is EEXIST and deleting a missing one
// EADDRNOTAVAIL, as the kernel answers.
type FakeLinks struct {
	mu    sync.Mutex
	links map[string]map[netip.Addr]bool
	// Node is what NodeAddrs returns.
	Node []netip.Addr
	Ops  map[string]int
	// Sysctls are what SetSysctl wrote.
	Sysctls map[string]string
}

// NewFakeLinks returns a fake with no interfaces and the given node addresses.
func NewFakeLinks(node ...netip.Addr) *FakeLinks {
	return &FakeLinks{links: map[string]map[netip.Addr]bool{}, Node: node, Ops: map[string]int{}, Sysctls: map[string]string{}}
}

// EnsureDummy implements Links.
func (l *FakeLinks) EnsureDummy(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Ops["EnsureDummy"]++
	if l.links[name] == nil {
		l.links[name] = map[netip.Addr]bool{}
	}
	return nil
}

// DeleteDummy implements Links.
func (l *FakeLinks) DeleteDummy(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Ops["DeleteDummy"]++
	if l.links[name] == nil {
		return fmt.Errorf("link %s: %w", name, syscall.ENOENT)
	}
	delete(l.links, name)
	return nil
}

// Addrs implements Links.
func (l *FakeLinks) Addrs(name string) ([]netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Ops["Addrs"]++
	as, ok := l.links[name]
	if !ok {
		return nil, fmt.Errorf("link %s: %w", name, syscall.ENOENT)
	}
	out := slices.Collect(maps.Keys(as))
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// AddAddr implements Links.
func (l *FakeLinks) AddAddr(name string, a netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Ops["AddAddr"]++
	as, ok := l.links[name]
	if !ok {
		return fmt.Errorf("link %s: %w", name, syscall.ENODEV)
	}
	if as[a] {
		return fmt.Errorf("address %v: %w", a, syscall.EEXIST)
	}
	as[a] = true
	return nil
}

// DelAddr implements Links.
func (l *FakeLinks) DelAddr(name string, a netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Ops["DelAddr"]++
	as, ok := l.links[name]
	if !ok {
		return fmt.Errorf("link %s: %w", name, syscall.ENODEV)
	}
	if !as[a] {
		return fmt.Errorf("address %v: %w", a, syscall.EADDRNOTAVAIL)
	}
	delete(as, a)
	return nil
}

// NodeAddrs implements Links.
func (l *FakeLinks) NodeAddrs(string) ([]netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Ops["NodeAddrs"]++
	return slices.Clone(l.Node), nil
}

// HasLink reports whether the interface exists.
func (l *FakeLinks) HasLink(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.links[name] != nil
}

// SetSysctl implements Links.
func (l *FakeLinks) SetSysctl(name, value string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Sysctls[name] = value
	return nil
}
