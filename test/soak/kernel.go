package soak

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"kpo.dev/kpo/hack/netns"
)

// A service port as "10.96.1.1/tcp/80": an IPv4 ClusterIP, protocol, port.
var (
	// nftables: an element of kpo's service-ips (or no-endpoint-services)
	// map, "10.96.1.1 . tcp . 80 : goto ...".
	nftServicePort = regexp.MustCompile(`\b(10\.96\.\d+\.\d+) \. (tcp|udp) \. (\d+)\b`)
	// iptables: a nat rule matching the ClusterIP, "-d 10.96.1.1/32 -p tcp -m tcp --dport 80".
	iptServicePort = regexp.MustCompile(`-d (10\.96\.\d+\.\d+)/32 -p (tcp|udp) -m (?:tcp|udp) --dport (\d+)\b`)
)

// KernelServicePorts is the set of IPv4 ClusterIP service ports the node's
// kernel holds in kpo's rules for mode (nftables or iptables), leaving out
// the API server's own range 10.96.0.0/24 (the default "kubernetes"
// Service, which has no endpoints here).
func KernelServicePorts(ns *netns.NS, mode string) (map[string]bool, error) {
	var dump string
	var re *regexp.Regexp
	var err error
	switch mode {
	case "nftables":
		dump, err = ns.Run("nft", "list", "table", "ip", "kpo")
		re = nftServicePort
	case "iptables":
		dump, err = ns.Run("iptables-save", "-t", "nat")
		re = iptServicePort
	default:
		return nil, fmt.Errorf("mode %q", mode)
	}
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(dump, -1) {
		if !strings.HasPrefix(m[1], "10.96.0.") {
			out[m[1]+"/"+m[2]+"/"+m[3]] = true
		}
	}
	return out, nil
}

// APIServicePorts is the same set as the API server holds it: every port of
// every IPv4 ClusterIP of the Services in namespaces.
func APIServicePorts(ctx context.Context, kube kubernetes.Interface, namespaces ...string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, ns := range namespaces {
		list, err := kube.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		for _, svc := range list.Items {
			for _, ip := range svc.Spec.ClusterIPs {
				if strings.Contains(ip, ":") || ip == "None" {
					continue
				}
				for _, p := range svc.Spec.Ports {
					out[ip+"/"+strings.ToLower(string(p.Protocol))+"/"+strconv.Itoa(int(p.Port))] = true
				}
			}
		}
	}
	return out, nil
}

// Diff says what want has that got lacks and what got has that want lacks,
// at most ten of each; "" when they are equal.
func Diff(want, got map[string]bool) string {
	var missing, extra []string
	for k := range want {
		if !got[k] {
			missing = append(missing, k)
		}
	}
	for k := range got {
		if !want[k] {
			extra = append(extra, k)
		}
	}
	if len(missing) == 0 && len(extra) == 0 {
		return ""
	}
	slices.Sort(missing)
	slices.Sort(extra)
	return fmt.Sprintf("%d missing %v, %d extra %v", len(missing), missing[:min(10, len(missing))],
		len(extra), extra[:min(10, len(extra))])
}
