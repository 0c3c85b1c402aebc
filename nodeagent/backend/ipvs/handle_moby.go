package ipvs

import (
	"net"
	"net/netip"

	mobyipvs "github.com/moby/ipvs"
	"golang.org/x/sys/unix"
)

// Flag bits of struct ip_vs_service_user (include/uapi/linux/ip_vs.h).
const (
	svcFlagPersistent = 0x0001
	// svcFlagsMask is what GetServices keeps of the kernel's flags: the rest
	// (IP_VS_SVC_F_HASHED...) is kernel bookkeeping kpo never sets.
	svcFlagsMask = svcFlagPersistent
)

// mobyHandle adapts github.com/moby/ipvs to Handle. Only call it once the
// Probe passed: moby/ipvs does not notice a kernel without IPVS.
type mobyHandle struct{ h *mobyipvs.Handle }

func newKernelHandle() (Handle, error) {
	h, err := mobyipvs.New("")
	if err != nil {
		return nil, err
	}
	return mobyHandle{h}, nil
}

func toMoby(s Service) *mobyipvs.Service {
	ms := &mobyipvs.Service{Address: net.IP(s.Addr.AsSlice()), Protocol: s.Protocol, Port: s.Port, SchedName: s.Scheduler,
		AddressFamily: unix.AF_INET, Netmask: 0xffffffff}
	if s.Addr.Is6() {
		ms.AddressFamily, ms.Netmask = unix.AF_INET6, 128
	}
	if s.Persistent {
		ms.Flags, ms.Timeout = svcFlagPersistent, s.Timeout
	}
	return ms
}

func keyService(k VSKey) *mobyipvs.Service { return toMoby(Service{VSKey: k}) }

func fromMoby(ms *mobyipvs.Service) (Service, bool) {
	a, ok := netip.AddrFromSlice(ms.Address)
	if !ok || ms.FWMark != 0 {
		return Service{}, false
	}
	if ms.AddressFamily == unix.AF_INET {
		a = a.Unmap()
	}
	s := Service{VSKey: VSKey{Addr: a, Protocol: ms.Protocol, Port: ms.Port}, Scheduler: ms.SchedName}
	if ms.Flags&svcFlagsMask&svcFlagPersistent != 0 {
		s.Persistent, s.Timeout = true, ms.Timeout
	}
	return s, true
}

func toMobyDest(d Destination) *mobyipvs.Destination {
	md := &mobyipvs.Destination{Address: net.IP(d.Addr.Addr().AsSlice()), Port: d.Addr.Port(), Weight: d.Weight,
		ConnectionFlags: mobyipvs.ConnectionFlagMasq, AddressFamily: unix.AF_INET}
	if d.Addr.Addr().Is6() {
		md.AddressFamily = unix.AF_INET6
	}
	return md
}

func (m mobyHandle) GetServices() ([]Service, error) {
	mss, err := m.h.GetServices()
	if err != nil {
		return nil, err
	}
	out := make([]Service, 0, len(mss))
	for _, ms := range mss {
		// Firewall-mark services are never kpo's: skip them.
		if s, ok := fromMoby(ms); ok {
			out = append(out, s)
		}
	}
	return out, nil
}

func (m mobyHandle) NewService(s Service) error    { return m.h.NewService(toMoby(s)) }
func (m mobyHandle) UpdateService(s Service) error { return m.h.UpdateService(toMoby(s)) }
func (m mobyHandle) DelService(k VSKey) error      { return m.h.DelService(keyService(k)) }

func (m mobyHandle) GetDestinations(k VSKey) ([]Destination, error) {
	mds, err := m.h.GetDestinations(keyService(k))
	if err != nil {
		return nil, err
	}
	out := make([]Destination, 0, len(mds))
	for _, md := range mds {
		a, ok := netip.AddrFromSlice(md.Address)
		if !ok {
			continue
		}
		if md.AddressFamily == unix.AF_INET {
			a = a.Unmap()
		}
		out = append(out, Destination{Addr: netip.AddrPortFrom(a, md.Port), Weight: md.Weight,
			ActiveConnections: md.ActiveConnections, InactiveConnections: md.InactiveConnections})
	}
	return out, nil
}

func (m mobyHandle) NewDestination(k VSKey, d Destination) error {
	return m.h.NewDestination(keyService(k), toMobyDest(d))
}

func (m mobyHandle) UpdateDestination(k VSKey, d Destination) error {
	return m.h.UpdateDestination(keyService(k), toMobyDest(d))
}

func (m mobyHandle) DelDestination(k VSKey, d netip.AddrPort) error {
	return m.h.DelDestination(keyService(k), toMobyDest(Destination{Addr: d}))
}

func (m mobyHandle) GetConfig() (Timeouts, error) {
	c, err := m.h.GetConfig()
	if err != nil {
		return Timeouts{}, err
	}
	return Timeouts{TCP: c.TimeoutTCP, TCPFin: c.TimeoutTCPFin, UDP: c.TimeoutUDP}, nil
}

func (m mobyHandle) SetConfig(t Timeouts) error {
	return m.h.SetConfig(&mobyipvs.Config{TimeoutTCP: t.TCP, TimeoutTCPFin: t.TCPFin, TimeoutUDP: t.UDP})
}
