package ipvs

import (
	"fmt"
	"net/netip"
	"time"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/backend/iptables"
	"kpo.dev/kpo/nodeagent/model"
)

// Config holds the ipvs mode's settings (kpov1.IPVSSettings, parsed).
type Config struct {
	// Scheduler of every virtual server; "rr" when empty.
	Scheduler string
	// StrictARP sets arp_ignore=1 and arp_announce=2.
	StrictARP bool
	// Timeouts are IPVS's global connection timeouts; zero keeps the kernel's.
	Timeouts Timeouts
	// ExcludeCIDRs: virtual servers there are never deleted.
	ExcludeCIDRs []netip.Prefix
	// TerminationBound: see DefaultTerminationBound; 0 means the default.
	TerminationBound time.Duration
}

// ConfigFrom parses the API's settings (nil means defaults).
func ConfigFrom(s *kpov1.IPVSSettings) (Config, error) {
	var c Config
	if s == nil {
		return c, nil
	}
	c.Scheduler, c.StrictARP = string(s.Scheduler), s.StrictARP
	for _, d := range []struct {
		in  kpov1.Duration
		out *time.Duration
	}{{s.TCPTimeout, &c.Timeouts.TCP}, {s.TCPFinTimeout, &c.Timeouts.TCPFin}, {s.UDPTimeout, &c.Timeouts.UDP}} {
		if d.in == "" {
			continue
		}
		v, err := time.ParseDuration(string(d.in))
		if err != nil {
			return c, fmt.Errorf("ipvs timeout: %w", err)
		}
		*d.out = v
	}
	for _, p := range s.ExcludeCIDRs {
		pfx, err := netip.ParsePrefix(string(p))
		if err != nil {
			return c, fmt.Errorf("ipvs excludeCIDRs: %w", err)
		}
		c.ExcludeCIDRs = append(c.ExcludeCIDRs, pfx.Masked())
	}
	return c, nil
}

// Option configures a Backend.
type Option func(*Backend)

// WithHandle replaces the IPVS netlink handle (tests: FakeHandle). The probe
// is then considered passed unless WithProbe is given too.
func WithHandle(h Handle) Option {
	return func(b *Backend) {
		b.raw = h
		if b.probe == nil {
			b.probe = func() error { return nil }
		}
	}
}

// WithLinks replaces rtnetlink and /proc/sys (tests: FakeLinks).
func WithLinks(l Links) Option { return func(b *Backend) { b.rawLinks = l } }

// WithRules replaces the iptables/ipset companion (tests: FakeRules).
func WithRules(r Rules) Option { return func(b *Backend) { b.rules = r } }

// WithCompanion runs the companion rules over ipt and ipset instead of the
// host's (tests: iptables.Fake with FakeIPSet.Has as its SetExists, and
// FakeIPSet).
func WithCompanion(ipt iptables.Kernel, ipset IPSet) Option {
	return func(b *Backend) { b.rules = newCompanionRules(b.settings, ipt, ipset) }
}

// WithProbe replaces the IPVS availability probe.
func WithProbe(p Probe) Option { return func(b *Backend) { b.probe = p } }

// WithClock replaces time.Now (graceful termination deadlines).
func WithClock(now func() time.Time) Option { return func(b *Backend) { b.now = now } }

// WithNodeAddrs replaces the lookup of the node's addresses used for NodePort
// virtual servers when the snapshot has no NodePortIPs for a family.
func WithNodeAddrs(fn func(model.Family) ([]netip.Addr, error)) Option {
	return func(b *Backend) { b.nodeAddrs = fn }
}
