package kubenode

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// containerID strips the runtime prefix of a pod status's container ID.
func containerID(id string) (string, error) {
	rest, ok := strings.CutPrefix(id, "containerd://")
	if !ok || rest == "" {
		return "", fmt.Errorf("container ID %q is not containerd's", id)
	}
	return rest, nil
}

// ContainerPID is the host PID of a running container's first process,
// from the container ID a pod's status reports (containerd://<id>).
func (n *Node) ContainerPID(ctx context.Context, id string) (int, error) {
	cid, err := containerID(id)
	if err != nil {
		return 0, err
	}
	out, err := n.Ctr(ctx, "-n", "k8s.io", "tasks", "ls")
	if err != nil {
		return 0, fmt.Errorf("ctr tasks ls: %w: %s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == cid && f[2] == "RUNNING" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no running task %s on %s", cid, n.cfg.Name)
}

// PodNetNSPath is the file of the network namespace a container runs in,
// as the host sees it: containerd mounts pods' namespaces under the node's
// private /run/netns, reached through the holder's root.
func (n *Node) PodNetNSPath(ctx context.Context, id string) (string, error) {
	cid, err := containerID(id)
	if err != nil {
		return "", err
	}
	out, err := n.Ctr(ctx, "-n", "k8s.io", "containers", "info", cid)
	if err != nil {
		return "", fmt.Errorf("ctr containers info: %w: %s", err, out)
	}
	var info struct {
		Spec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string }
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		return "", fmt.Errorf("ctr containers info %s: %w", cid, err)
	}
	for _, ns := range info.Spec.Linux.Namespaces {
		if ns.Type == "network" && ns.Path != "" {
			return fmt.Sprintf("/proc/%d/root%s", n.holder.Pid(), ns.Path), nil
		}
	}
	return "", fmt.Errorf("container %s has no network namespace path (a hostNetwork pod?)", cid)
}
