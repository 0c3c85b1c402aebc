// Package kubenode runs a real Kubernetes node inside a network namespace:
// kubelet, containerd (with runc and Debian's CNI plugins) and the pods they
// run, for the local cluster (hack/cluster).
//
// What a node owns, and how it is contained (this machine's own network,
// mounts, sysctls and cgroups stay as they are):
//
//	network    the node's namespace (netns.LAN.AddNode); pods get namespaces of
//	           their own from containerd, bridged on cni0 inside the node's
//	mounts     a mount namespace of the node's own (private propagation, held by
//	           a "holder" process): /var/lib, /var/log and /run are the node's
//	           directories under the run directory; files with kubelet's wanted
//	           values cover the host-global sysctls kubelet would write
//	host name  a UTS namespace named after the node (hostNetwork pods see it)
//	cgroups    kubelet's cgroupRoot /kpo-run-<pid>/<node>, created in every
//	           hierarchy and removed, with whatever runs in it, at Stop
//	processes  holder, containerd, kubelet: the run's ledger and parent-death
//	           signal (hack/procs); the containers' shims, which containerd
//	           detaches: killed by their command line (it names the node's
//	           socket, inside the run directory); the containers: by cgroup
package kubenode

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/hack/procs"
)

// Config describes one node.
type Config struct {
	Name  string
	Index int
	NS    *netns.NS
	// Dir is the node's directory (inside the run directory).
	Dir string
	// CgroupRoot is kubelet's cgroupRoot (under procs.CgroupRoot of the run).
	CgroupRoot string
	// Kubeconfig is kubelet's (its node client certificate); CACert verifies clients of kubelet's API.
	Kubeconfig, CACert string
	// Kubelet, Containerd, Ctr are the binaries; the shim is next to containerd.
	Kubelet, Containerd, Ctr string
	// Runc and CNIBin are Debian's (hack/install-deps.sh).
	Runc, CNIBin string
	// SandboxImage is the pause image's reference (imported with the others).
	SandboxImage string
	// Images are imported before kubelet starts.
	Images []Image
	Labels map[string]string
	Ledger *procs.Ledger
}

// Image is an image to import: an OCI layout as a tar archive, its name, and
// its name by digest (repository@sha256:<index digest>), which is what a
// registry pull records and what kubelet then reports as the image's ID
// (the operator pins the agents to it).
type Image struct {
	Archive, Ref, Digest string
}

// Node is a running node.
type Node struct {
	cfg                         Config
	holder, containerd, kubelet *procs.Proc
}

// Start sets the node up, starts containerd, imports the images and starts
// kubelet (which registers the Node). On error, Stop cleans up.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	n := &Node{cfg: cfg}
	if err := n.writeFiles(); err != nil {
		return n, err
	}
	if err := procs.CreateCgroup(cfg.CgroupRoot); err != nil {
		return n, err
	}
	var err error
	holder := cfg.NS.Command("unshare", "--mount", "--uts", "--propagation", "private", "--", "sh", "-c", n.holderScript())
	if n.holder, err = procs.Start(cfg.Ledger, cfg.Name+"/holder", holder, n.path("holder.log")); err != nil {
		return n, err
	}
	if err := n.wait(ctx, 30*time.Second, "mount namespace", func() error {
		if _, err := os.Stat(n.path("holder.ready")); err != nil {
			return fmt.Errorf("not set up (log: %s)", n.path("holder.log"))
		}
		return nil
	}, n.holder); err != nil {
		return n, err
	}

	env := []string{"PATH=" + filepath.Dir(cfg.Containerd) + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if n.containerd, err = procs.Start(cfg.Ledger, cfg.Name+"/containerd", n.inNode(env, cfg.Containerd, "--config", n.path("containerd.toml")),
		n.path("containerd.log")); err != nil {
		return n, err
	}
	if err := n.wait(ctx, time.Minute, "containerd", func() error {
		_, err := n.Ctr(ctx, "version")
		return err
	}, n.containerd); err != nil {
		return n, err
	}
	for _, img := range cfg.Images {
		if _, err := n.Ctr(ctx, "-n", "k8s.io", "images", "import", "--platform", "linux/"+runtime.GOARCH, img.Archive); err != nil {
			return n, fmt.Errorf("%s: importing %s: %w", cfg.Name, img.Archive, err)
		}
		if _, err := n.Ctr(ctx, "-n", "k8s.io", "images", "tag", "--force", img.Ref, img.Digest); err != nil {
			return n, fmt.Errorf("%s: naming %s by digest: %w", cfg.Name, img.Ref, err)
		}
	}

	var labels []string
	for k, v := range cfg.Labels {
		labels = append(labels, k+"="+v)
	}
	args := []string{
		"--config=" + n.path("kubelet.yaml"),
		"--kubeconfig=" + cfg.Kubeconfig,
		"--hostname-override=" + cfg.Name,
		"--node-ip=" + netns.NodeAddr4(cfg.Index) + "," + netns.NodeAddr6(cfg.Index),
		"--node-labels=" + strings.Join(labels, ","),
		"--v=1",
	}
	if n.kubelet, err = procs.Start(cfg.Ledger, cfg.Name+"/kubelet", n.inNode(env, cfg.Kubelet, args...), n.path("kubelet.log")); err != nil {
		return n, err
	}
	return n, nil
}

// inNode prepares a command that runs in the node's namespaces (network,
// mount, UTS: the holder's).
func (n *Node) inNode(env []string, bin string, args ...string) *exec.Cmd {
	cmd := exec.Command("nsenter", append([]string{"--target", fmt.Sprint(n.holder.Pid()), "--mount", "--uts", "--net", "--", bin}, args...)...)
	cmd.Env = env
	return cmd
}

// writeFiles writes the node's directories and configuration.
func (n *Node) writeFiles() error {
	for _, d := range []string{"var-lib", "var-log", "run", "cni", "sysctl", "usr-lib/upper", "usr-lib/work"} {
		if err := os.MkdirAll(n.path(d), 0o755); err != nil {
			return err
		}
	}
	cni, err := n.cniConfig()
	if err != nil {
		return err
	}
	files := map[string]string{
		"containerd.toml":           n.containerdConfig(),
		"kubelet.yaml":              n.kubeletConfig(),
		"cni/10-kpo-local.conflist": cni,
		// Pods with dnsPolicy Default get this; the local cluster runs no DNS.
		"resolv.conf": "nameserver 127.0.0.1\n",
	}
	for key, v := range hostSysctls {
		files[filepath.Join("sysctl", sysctlFile(key))] = v + "\n"
	}
	for name, content := range files {
		if err := os.WriteFile(n.path(name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) path(elem ...string) string {
	return filepath.Join(append([]string{n.cfg.Dir}, elem...)...)
}

// Socket is containerd's socket (reachable from the host: it is in the run directory).
func (n *Node) Socket() string { return n.path("containerd.sock") }

// KubeletLog is kubelet's log file.
func (n *Node) KubeletLog() string { return n.path("kubelet.log") }

// Ctr runs ctr against the node's containerd and returns its standard
// output (its standard error, where it warns about cgroup v1, goes into the error).
func (n *Node) Ctr(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.cfg.Ctr, append([]string{"--address", n.Socket()}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// wait polls cond every 100 ms until it holds, proc exits, or timeout passes.
func (n *Node) wait(ctx context.Context, timeout time.Duration, what string, cond func() error, proc *procs.Proc) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if proc.Exited() {
			return fmt.Errorf("%s: %s exited: %v", n.cfg.Name, what, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %s not ready after %v: %v", n.cfg.Name, what, timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop stops kubelet, kills the pods (their cgroups) and the shims, stops
// containerd and the holder (with it the mount namespace goes), and removes
// the node's cgroups. It may be called again.
func (n *Node) Stop() error {
	if n.kubelet != nil {
		n.kubelet.Stop(5 * time.Second)
	}
	err := procs.RemoveCgroup(n.cfg.CgroupRoot, 10*time.Second)
	procs.KillMentioning(n.cfg.Dir)
	for _, p := range []*procs.Proc{n.containerd, n.holder} {
		if p != nil {
			p.Stop(5 * time.Second)
		}
	}
	return err
}
