package iptables

import (
	"bytes"
	"fmt"
	"os/exec"
	"regexp"

	"kpo.dev/kpo/nodeagent/model"
)

// Variant selects the iptables flavour. Legacy (x_tables) and nft (nf_tables)
// are separate rule sets in the kernel; both apply to every packet, so rules
// must go where the host's other rules (kubelet's, the CNI plugin's) are, or
// their order against them is lost.
type Variant string

const (
	// VariantAuto uses the flavour the host uses, detected on first use in the
	// caller's network namespace (DetectVariant).
	VariantAuto Variant = ""
	// VariantNFT runs iptables-nft (the nf_tables compatibility layer).
	VariantNFT Variant = "nft"
	// VariantLegacy runs iptables-legacy (x_tables blobs).
	VariantLegacy Variant = "legacy"
)

// kubeletChains are the chains kubelet (1.17 and later) keeps in the mangle
// table of the flavour the node uses: KUBE-IPTABLES-HINT exists for exactly
// this purpose, KUBE-KUBELET-CANARY is its monitor's.
var kubeletChains = regexp.MustCompile(`(?m)^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY)\s`)

// DetectVariant says which flavour the host uses, the way kube-proxy's image
// decides (kubernetes-sigs/iptables-wrappers, pkg/xtables/detect.go, which
// the image's iptables wrapper runs before kube-proxy's first iptables
// command): kubelet's chains in iptables-nft's mangle table (IPv4, then
// IPv6) mean nft; in iptables-legacy's tables, legacy; neither, nft. Legacy
// is read without "-t mangle", which would create the table. A flavour whose
// tools are missing cannot be the host's; with neither, VariantAuto is
// returned and the plain "iptables" commands run.
func DetectVariant() Variant {
	nft, legacy := installed(VariantNFT), installed(VariantLegacy)
	switch {
	case !nft && !legacy:
		return VariantAuto
	case !legacy:
		return VariantNFT
	case !nft:
		return VariantLegacy
	}
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		if hasKubeletChains(VariantNFT, f, "-t", "mangle") {
			return VariantNFT
		}
	}
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		if hasKubeletChains(VariantLegacy, f) {
			return VariantLegacy
		}
	}
	return VariantNFT
}

// installed reports whether a flavour's tools are on PATH.
func installed(v Variant) bool {
	_, restore := v.binaries(model.IPv4)
	_, err := exec.LookPath(restore)
	return err == nil
}

// hasKubeletChains runs the flavour's iptables-save; errors (a missing
// table, say) mean no.
func hasKubeletChains(v Variant, f model.Family, args ...string) bool {
	cmd, _ := v.binaries(f)
	var out bytes.Buffer
	c := exec.Command(cmd+"-save", args...)
	c.Stdout = &out
	return c.Run() == nil && kubeletChains.Match(out.Bytes())
}

// binaries returns the iptables and iptables-restore commands of a family:
// "iptables-nft", "iptables-legacy", or "iptables" for VariantAuto.
func (v Variant) binaries(f model.Family) (cmd, restore string) {
	base := "iptables"
	if f == model.IPv6 {
		base = "ip6tables"
	}
	if v != VariantAuto {
		base += "-" + string(v)
	}
	return base, base + "-restore"
}

// String names the flavour for logs and errors.
func (v Variant) String() string {
	if v == VariantAuto {
		return "iptables"
	}
	return "iptables-" + string(v)
}

// resolve is the flavour to run: v itself, or the detected one for VariantAuto.
func (v Variant) resolve() Variant {
	if v != VariantAuto {
		return v
	}
	return DetectVariant()
}

// errNoIPTables says that no flavour's tools are installed.
var errNoIPTables = fmt.Errorf("neither iptables-nft, iptables-legacy nor iptables found on PATH")
