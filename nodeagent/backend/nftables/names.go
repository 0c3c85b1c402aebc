package nftables

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"

	"kpo.dev/kpo/nodeagent/model"
)

// maxNameLen caps chain and set names. The kernel allows 255 bytes, but names
// are for humans reading `nft list table ip kpo`: the hash prefix keeps them
// unique, the rest only has to be recognisable.
const maxNameLen = 96

// hash8 is a short, stable hash of s (lower-case base32, which nft accepts in
// identifiers).
func hash8(s string) string {
	sum := sha256.Sum256([]byte(s))
	return strings.ToLower(base32.StdEncoding.EncodeToString(sum[:5]))
}

// sanitize maps s onto the characters nft accepts in an unquoted identifier
// after the first one: letters, digits, '/', '-', '_' and '.'. IPv6 colons
// become dots, brackets go.
func sanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '/', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		case r == ':':
			b.WriteByte('.')
		case r == '[' || r == ']':
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

func truncate(s string) string {
	if len(s) > maxNameLen {
		return s[:maxNameLen]
	}
	return s
}

// portLabel is the port's name, or its protocol for an unnamed port.
func portLabel(k model.ServicePortKey) string {
	if k.Port != "" {
		return k.Port
	}
	return strings.ToLower(string(k.Protocol))
}

// svcBase is "<hash>-<ns>-<name>-<port>": the hash covers the whole key (the
// readable part can be truncated or ambiguous, e.g. dashes in names).
func svcBase(k model.ServicePortKey) string {
	return hash8(k.String()) + "-" + sanitize(k.Namespace+"-"+k.Name+"-"+portLabel(k))
}

func serviceChainName(k model.ServicePortKey) string  { return truncate("svc-" + svcBase(k)) }
func externalChainName(k model.ServicePortKey) string { return truncate("ext-" + svcBase(k)) }
func firewallChainName(k model.ServicePortKey) string { return truncate("fw-" + svcBase(k)) }

// clusterPolicyChainName is the short-circuit choice of a service with both
// traffic policies Local (kube-proxy's cluster policy chain), when it differs
// from the service chain.
func clusterPolicyChainName(k model.ServicePortKey) string { return truncate("cpc-" + svcBase(k)) }

// endpointChainName is per service port and endpoint (kube-proxy's
// "endpoint-HASH-ns/name/port__ip/port").
func endpointChainName(k model.ServicePortKey, ep model.Endpoint) string {
	return truncate("ep-" + hash8(k.String()+"|"+ep.String()) + "-" + sanitize(k.Namespace+"-"+k.Name+"-"+portLabel(k)+"__"+ep.String()))
}

// affinitySetName also hashes the timeout: a set's timeout cannot be changed
// by `add set`, so a new timeout means a new set.
func affinitySetName(k model.ServicePortKey, ep model.Endpoint, timeoutSec int64) string {
	return truncate("aff-" + hash8(k.String()+"|"+ep.String()+"|"+itoa(timeoutSec)) + "-" + sanitize(k.Namespace+"-"+k.Name+"-"+portLabel(k)+"__"+ep.String()))
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
