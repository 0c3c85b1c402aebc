package kubenode

import (
	"encoding/json"
	"fmt"
	"strings"

	"kpo.dev/kpo/hack/netns"
)

// hostSysctls are the host-global kernel settings kubelet sets (kubelet's
// setupKernelTunables, pkg/kubelet/cm/container_manager_linux.go) with the
// values it wants: files holding them are bind-mounted over /proc/sys in the
// node's mount namespace, so kubelet finds them set and the machine's own
// values stay as they are.
var hostSysctls = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// containerdConfig is containerd 2's configuration (version 3) for a node:
// state and sockets in the node's private /run, images and snapshots in its
// private /var/lib, the CRI with runc (cgroupfs, as kubelet's driver), the
// local sandbox image, and CNI from Debian's plugins with the node's own
// configuration directory.
func (n *Node) containerdConfig() string {
	return fmt.Sprintf(`version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = %q

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = %q

  [plugins.'io.containerd.cri.v1.runtime']
    # This machine's root lacks CAP_SYS_RESOURCE: runc cannot lower a
    # process's oom_score_adj below its parent's. Restricting it to the
    # parent's bound (what rootless setups do) lets sandboxes start.
    restrict_oom_score_adj = true
    enable_selinux = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = %q
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [%q]
      conf_dir = %q
      max_conf_num = 1

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
`, n.Socket(), n.cfg.SandboxImage, n.cfg.Runc, n.cfg.CNIBin, n.path("cni"))
}

// cniConfig is the pod network of node i: a bridge (cni0) holding the
// node's pod gateways, host-local addresses from the node's pod ranges in
// both families (the address plan's 10.244.i.0/24 and fd10:244:0:i::/64);
// the other nodes' ranges are routed by the LAN (netns.LAN.RoutePods).
func (n *Node) cniConfig() (string, error) {
	gw4, gw6 := netns.PodGateways(n.cfg.Index)
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "kpo-local",
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      "cni0",
			"isGateway":   true,
			"hairpinMode": true,
			"ipam": map[string]any{
				"type": "host-local",
				"ranges": [][]map[string]string{
					{{"subnet": netns.PodCIDR4(n.cfg.Index), "gateway": gw4}},
					{{"subnet": netns.PodCIDR6(n.cfg.Index), "gateway": gw6}},
				},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}, {"dst": "::/0"}},
				"dataDir": "/var/lib/cni/networks",
			},
		}},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	return string(b), err
}

// kubeletConfig is the KubeletConfiguration of the node.
func (n *Node) kubeletConfig() string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%s
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
# The machine's cgroups are v1 (hybrid): kubelet 1.37 still runs there when told.
failCgroupV1: false
cgroupDriver: cgroupfs
# Every pod cgroup under the run's private root, removed at teardown.
cgroupRoot: %s
cgroupsPerQOS: true
failSwapOn: false
# Images come from make images, imported at start: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
  nodefs.inodesFree: "1%%"
resolvConf: %s
clusterDomain: cluster.local
protectKernelDefaults: false
serializeImagePulls: false
nodeStatusUpdateFrequency: 10s
nodeStatusReportFrequency: 1m
syncFrequency: 10s
fileCheckFrequency: 20s
`, n.Socket(), netns.NodeAddr4(n.cfg.Index), n.cfg.CACert, n.cfg.CgroupRoot, n.path("resolv.conf"))
}

// holderScript sets up the node's mount namespace and then holds it: the
// private /var/lib, /var/log and /run (kubelet, libcni and containerd write
// fixed paths there whatever their root directories say), /usr/lib as an
// overlay, the host-global sysctls kubelet would write, and the node's host name.
func (n *Node) holderScript() string {
	var b strings.Builder
	b.WriteString("set -e\n")
	fmt.Fprintf(&b, "hostname %s\n", n.cfg.Name)
	for _, d := range privateDirs {
		fmt.Fprintf(&b, "mount --bind %s %s\n", n.path(d.local), d.host)
	}
	// /usr/lib (and /lib, a link to it) stays the host's to read, but what is
	// written there goes to the node's directory: kubelet creates hostPath
	// directories that are missing (the agent's /lib/modules, on a host
	// without loadable modules).
	fmt.Fprintf(&b, "mount -t overlay overlay -o lowerdir=/usr/lib,upperdir=%s,workdir=%s /usr/lib\n",
		n.path("usr-lib", "upper"), n.path("usr-lib", "work"))
	for key := range hostSysctls {
		fmt.Fprintf(&b, "if [ -e /proc/sys/%[2]s ]; then mount --bind %[1]s /proc/sys/%[2]s; fi\n", n.path("sysctl", sysctlFile(key)), key)
	}
	fmt.Fprintf(&b, "touch %s\nexec sleep infinity\n", n.path("holder.ready"))
	return b.String()
}

func sysctlFile(key string) string { return strings.ReplaceAll(key, "/", "_") }

// privateDirs are the node's own directories mounted over the host's.
var privateDirs = []struct{ local, host string }{
	{"var-lib", "/var/lib"},
	{"var-log", "/var/log"},
	{"run", "/run"},
}
