package v1alpha1

import (
	"fmt"
	"math"
	"net/netip"
	"regexp"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Bounds of the settings. The CRD's markers repeat them as literals (markers
// cannot name constants); TestValidateMatchesTheCRD in controllers checks that
// the API server and Validate agree.
const (
	// MinSyncPeriodFloor is the shortest syncPeriod: a full resync more often
	// than once a second only burns CPU, and a zero one would never wait.
	MinSyncPeriodFloor = time.Second
	// MaxSyncPeriod bounds syncPeriod and minSyncPeriod, so that what the agent
	// derives from them (2 × syncPeriod for health, retry backoffs) cannot
	// overflow a time.Duration.
	MaxSyncPeriod = 24 * time.Hour
	// MaxKernelTimeout bounds the conntrack and IPVS timeouts: the kernel keeps
	// them as jiffies in an int and refuses more than INT_MAX/HZ seconds (24.8
	// days at HZ=1000, the highest common HZ).
	MaxKernelTimeout = 576 * time.Hour
	// KubeletDropBit is the packet-mark bit of kubelet's KUBE-MARK-DROP
	// (--iptables-drop-bit, 0x8000): a masquerade bit there would drop or
	// masquerade the wrong packets.
	KubeletDropBit = 15
)

// durationPattern is Duration's OpenAPI pattern: no sign, no µ.
var durationPattern = regexp.MustCompile(`^(0|([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+)$`)

// schedulers are IPVSScheduler's enum values.
var schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh", "fo", "ovf", "twos"}

// Resolve is the one place a configuration's defaults are decided and
// checked: the mode's (iptables when unset, the CRD's default), every
// setting's (Default: the CRD's OpenAPI defaults, which the API server
// applies to a stored ProxyConfiguration, and kube-proxy's where the CRD
// leaves a nested object open, as the IPVS scheduler), then the CRD's rules
// (ValidateSettings). The operator's render and the agent's configuration
// file both go through it; TestCRDDefaultsMatchResolve (controllers) checks
// that the API server's defaults are the same. Error paths start at path.
func Resolve(mode Mode, s *ProxySettings, path *field.Path) (Mode, error) {
	if mode == "" {
		mode = ModeIPTables
	}
	s.Default()
	return mode, ValidateSettings(mode, s, path).ToAggregate()
}

// Validate checks an agent configuration with the rules the CRD gives the API
// server, so that a file rendered by hand, by an older operator or from a CR
// stored before a rule existed is refused with a clear error instead of making
// the agent spin, overflow or crash-loop. Call it after Default.
func (c *AgentConfiguration) Validate() error {
	return ValidateSettings(c.Mode, &c.ProxySettings, nil).ToAggregate()
}

// ValidateSettings checks a mode and its settings (defaults filled in: see
// Default). Error paths start at path (nil: the agent file's top level; the
// operator passes "spec").
func ValidateSettings(mode Mode, s *ProxySettings, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if !slices.Contains(AllModes, mode) {
		errs = append(errs, field.NotSupported(path.Child("mode"), mode, AllModes))
	}
	errs = append(errs, validateCIDRs(path.Child("clusterCIDRs"), s.ClusterCIDRs, 16, false)...)
	npa := make([]CIDR, len(s.NodePortAddresses))
	for i, a := range s.NodePortAddresses {
		npa[i] = CIDR(a)
	}
	errs = append(errs, validateCIDRs(path.Child("nodePortAddresses"), npa, 16, true)...)
	errs = append(errs, validateDetectLocal(path, s)...)

	sync, syncErrs := durationIn(path.Child("syncPeriod"), s.SyncPeriod, MinSyncPeriodFloor, MaxSyncPeriod,
		"must be between 1s and 24h")
	minSync, minErrs := durationIn(path.Child("minSyncPeriod"), s.MinSyncPeriod, 0, MaxSyncPeriod, "must be at most 24h")
	errs = append(append(errs, syncErrs...), minErrs...)
	if len(syncErrs) == 0 && len(minErrs) == 0 && s.SyncPeriod != "" && minSync > sync {
		errs = append(errs, field.Invalid(path.Child("minSyncPeriod"), s.MinSyncPeriod, "must not be longer than spec.syncPeriod"))
	}

	errs = append(errs, validatePort(path.Child("healthzPort"), s.HealthzPort)...)
	errs = append(errs, validatePort(path.Child("metricsPort"), s.MetricsPort)...)
	if s.MetricsBindAddress != "" {
		// CEL's isIP refuses IPv4-mapped IPv6 addresses and zones too.
		if a, err := netip.ParseAddr(s.MetricsBindAddress); err != nil || a.Is4In6() || a.Zone() != "" {
			errs = append(errs, field.Invalid(path.Child("metricsBindAddress"), s.MetricsBindAddress,
				"spec.metricsBindAddress must be an IP address such as 127.0.0.1 or 0.0.0.0"))
		}
	}
	if s.HealthzPort == s.MetricsPort {
		errs = append(errs, field.Invalid(path.Child("metricsPort"), s.MetricsPort, "spec.healthzPort and spec.metricsPort must differ"))
	}

	errs = append(errs, validateConntrack(path.Child("conntrack"), &s.Conntrack)...)
	errs = append(errs, validateMasqueradeBit(path.Child("iptables", "masqueradeBit"), s.IPTables.MasqueradeBit)...)
	errs = append(errs, validateMasqueradeBit(path.Child("nftables", "masqueradeBit"), s.NFTables.MasqueradeBit)...)
	if s.IPVS != nil {
		errs = append(errs, validateIPVS(path.Child("ipvs"), mode, s.IPVS)...)
	}
	return errs
}

func validateConntrack(path *field.Path, c *ConntrackSettings) field.ErrorList {
	var errs field.ErrorList
	if c.MaxPerCore != nil {
		errs = append(errs, validateRange(path.Child("maxPerCore"), *c.MaxPerCore, 0, math.MaxInt32)...)
	}
	if c.Min != nil {
		errs = append(errs, validateRange(path.Child("min"), *c.Min, 0, math.MaxInt32)...)
	}
	for _, t := range []struct {
		name string
		d    Duration
	}{
		{"tcpEstablishedTimeout", c.TCPEstablishedTimeout}, {"tcpCloseWaitTimeout", c.TCPCloseWaitTimeout},
		{"udpTimeout", c.UDPTimeout}, {"udpStreamTimeout", c.UDPStreamTimeout},
	} {
		errs = append(errs, validateKernelTimeout(path.Child(t.name), t.d)...)
	}
	return errs
}

func validateIPVS(path *field.Path, mode Mode, s *IPVSSettings) field.ErrorList {
	var errs field.ErrorList
	if mode != ModeIPVS {
		errs = append(errs, field.Invalid(path, "object", "spec.ipvs may only be set when spec.mode is ipvs"))
	}
	if s.Scheduler != "" && !slices.Contains(schedulers, string(s.Scheduler)) {
		errs = append(errs, field.NotSupported(path.Child("scheduler"), s.Scheduler, schedulers))
	}
	for _, t := range []struct {
		name string
		d    Duration
	}{{"tcpTimeout", s.TCPTimeout}, {"tcpFinTimeout", s.TCPFinTimeout}, {"udpTimeout", s.UDPTimeout}} {
		errs = append(errs, validateKernelTimeout(path.Child(t.name), t.d)...)
	}
	return append(errs, validateCIDRs(path.Child("excludeCIDRs"), s.ExcludeCIDRs, 64, false)...)
}

// validateKernelTimeout: a whole number of seconds up to MaxKernelTimeout
// (the kernel counts these timeouts in seconds; a fraction would be cut off).
func validateKernelTimeout(path *field.Path, d Duration) field.ErrorList {
	v, errs := durationIn(path, d, 0, MaxKernelTimeout,
		"must be at most 576h (24 days; the kernel refuses much more)")
	if len(errs) == 0 && v%time.Second != 0 {
		errs = append(errs, field.Invalid(path, d, "must be a whole number of seconds (the kernel counts in seconds)"))
	}
	return errs
}

// durationIn parses d and checks lo <= d <= hi. An empty d is valid: it is a
// setting left out, which Default fills in or which means "keep the kernel's".
func durationIn(path *field.Path, d Duration, lo, hi time.Duration, msg string) (time.Duration, field.ErrorList) {
	if d == "" {
		return 0, nil
	}
	if len(d) > 32 {
		return 0, field.ErrorList{field.TooLong(path, d, 32)}
	}
	if !durationPattern.MatchString(string(d)) {
		return 0, field.ErrorList{field.Invalid(path, d, "should match '"+durationPattern.String()+"'")}
	}
	v, err := time.ParseDuration(string(d))
	if err != nil || v < lo || v > hi {
		// A parse error here is an overflow: the pattern matched.
		return 0, field.ErrorList{field.Invalid(path, d, msg)}
	}
	return v, nil
}

// validatePort, validateMasqueradeBit and validateConntrack word their
// errors as the API server words an OpenAPI minimum or maximum.
func validatePort(path *field.Path, p int32) field.ErrorList {
	return validateRange(path, p, 1, 65535)
}

func validateRange(path *field.Path, v, lo, hi int32) field.ErrorList {
	switch {
	case v < lo:
		return field.ErrorList{field.Invalid(path, v, fmt.Sprintf("should be greater than or equal to %d", lo))}
	case v > hi:
		return field.ErrorList{field.Invalid(path, v, fmt.Sprintf("should be less than or equal to %d", hi))}
	}
	return nil
}

func validateMasqueradeBit(path *field.Path, bit *int32) field.ErrorList {
	switch {
	case bit == nil:
		return nil
	case *bit < 0 || *bit > 31:
		return validateRange(path, *bit, 0, 31)
	case *bit == KubeletDropBit:
		return field.ErrorList{field.Invalid(path, *bit,
			fmt.Sprintf("must not be %d: kubelet's KUBE-MARK-DROP uses that bit (0x8000)", KubeletDropBit))}
	}
	return nil
}

// validateCIDRs checks a list as the CRD does: at most max items, no
// duplicates (listType=set), each a CIDR as CEL's isCIDR reads it (or
// "primary" when allowed).
func validateCIDRs(path *field.Path, list []CIDR, maxItems int, primaryOK bool) field.ErrorList {
	var errs field.ErrorList
	if len(list) > maxItems {
		errs = append(errs, field.TooMany(path, len(list), maxItems))
	}
	seen := sets.New[CIDR]()
	for i, c := range list {
		if seen.Has(c) {
			errs = append(errs, field.Duplicate(path.Index(i), c))
		}
		seen.Insert(c)
		if primaryOK && (c == "primary" || c == "localhost" || c == "all") {
			continue
		}
		if p, err := netip.ParsePrefix(string(c)); err != nil || p.Addr().Is4In6() || len(c) > 64 {
			msg := "must be a valid CIDR such as 10.244.0.0/16 or fd10:244::/48"
			if primaryOK {
				msg = "must be a valid CIDR or one of primary, localhost, all"
			}
			errs = append(errs, field.Invalid(path.Index(i), c, msg))
		}
	}
	return errs
}

// interfaceName is what the CRD's pattern allows in an interface name.
var interfaceName = regexp.MustCompile(`^[a-zA-Z0-9_.-]*$`)

// validateDetectLocal: the interface-based modes need their interface name
// (the CRD's CEL rules say the same).
func validateDetectLocal(path *field.Path, s *ProxySettings) field.ErrorList {
	var errs field.ErrorList
	for _, f := range []struct{ name, value string }{
		{"bridgeInterface", s.DetectLocal.BridgeInterface}, {"interfaceNamePrefix", s.DetectLocal.InterfaceNamePrefix},
	} {
		if len(f.value) > 15 || !interfaceName.MatchString(f.value) {
			errs = append(errs, field.Invalid(path.Child("detectLocal", f.name), f.value,
				"should match '^[a-zA-Z0-9_.-]*$' (an interface name of at most 15 characters)"))
		}
	}
	switch s.DetectLocalMode {
	case "", DetectLocalClusterCIDR, DetectLocalNodeCIDR:
	case DetectLocalBridgeInterface:
		if s.DetectLocal.BridgeInterface == "" {
			errs = append(errs, field.Required(path.Child("detectLocal", "bridgeInterface"),
				"spec.detectLocal.bridgeInterface is required when spec.detectLocalMode is BridgeInterface"))
		}
	case DetectLocalInterfaceNamePrefix:
		if s.DetectLocal.InterfaceNamePrefix == "" {
			errs = append(errs, field.Required(path.Child("detectLocal", "interfaceNamePrefix"),
				"spec.detectLocal.interfaceNamePrefix is required when spec.detectLocalMode is InterfaceNamePrefix"))
		}
	default:
		errs = append(errs, field.NotSupported(path.Child("detectLocalMode"), s.DetectLocalMode,
			[]DetectLocalMode{DetectLocalClusterCIDR, DetectLocalNodeCIDR, DetectLocalBridgeInterface, DetectLocalInterfaceNamePrefix}))
	}
	return errs
}
