//go:build vmtest

package inside

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	mobyipvs "github.com/moby/ipvs"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
	"kpo.dev/kpo/test/vm"
)

// The agent tests run kpo-agent processes inside the VM (test/testnet's
// network, built in the VM's kernel) against the real API server that
// test/vm's host side started: qemu forwards vm.GuestAPIAddr to it, and this
// process relays 127.0.0.1:6443 (the kubeconfig's server, which the API
// server's certificate names) there; testnet relays each node namespace's
// 127.0.0.1:6443 to this one.

var (
	apiOnce sync.Once
	apiEnv  *apiserver.Env
	apiErr  error
)

// vmAPI connects to the host's API server, or skips the test when the host
// provided none.
func vmAPI(t *testing.T) *apiserver.Env {
	t.Helper()
	path := "/" + vm.KubeconfigFile
	if _, err := os.Stat(path); err != nil {
		t.Skipf("no API server from the host (%v): see the host test's log", err)
	}
	apiOnce.Do(func() { apiEnv, apiErr = connectAPI(path) })
	if apiErr != nil {
		t.Fatal(apiErr)
	}
	return apiEnv
}

func connectAPI(kubeconfig string) (*apiserver.Env, error) {
	// controller-runtime's client logs nothing these tests read.
	ctrllog.SetLogger(logr.Discard())
	// The VM's network card on qemu's user network (vm.Options.Forwards).
	for _, args := range [][]string{{"link", "set", "eth0", "up"}, {"addr", "add", vm.GuestIP, "dev", "eth0"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	if _, err := netns.Forward(nil, "127.0.0.1:6443", nil, vm.GuestAPIAddr); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(data)
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: apiserver.Scheme()})
	if err != nil {
		return nil, err
	}
	// TCG is slow: the first request can take a while.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		err := c.List(ctx, &kpov1.ProxyNodeStatusList{})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("API server through %s: %w", vm.GuestAPIAddr, err)
		}
		time.Sleep(500 * time.Millisecond) // polling with the deadline above
	}
	return &apiserver.Env{Config: cfg, Client: c, Kubeconfig: kubeconfig}, nil
}

// agentConfig is the configuration a ProxyConfiguration in mode renders.
func agentConfig(mode kpov1.Mode) *kpov1.AgentConfiguration { return testnet.AgentConfig(mode) }

// settle bounds waits for an agent under TCG (process start, informers, a
// full sync, a status write).
const settle = 90 * time.Second

// waitSyncedAfter waits until the node's status says it synced in mode after
// a time.
func waitSyncedAfter(t *testing.T, api *apiserver.Env, node string, mode kpov1.Mode, after time.Time) {
	t.Helper()
	apiserver.Eventually(t, settle, func() error {
		pns := &kpov1.ProxyNodeStatus{}
		if err := api.Client.Get(context.Background(), types.NamespacedName{Name: node}, pns); err != nil {
			return err
		}
		switch {
		case !meta.IsStatusConditionTrue(pns.Status.Conditions, kpov1.NodeConditionSynced):
			return fmt.Errorf("%s not synced: %+v", node, pns.Status.Conditions)
		// A sync that changes nothing is not written on its own (issue 16):
		// a report written since then that says Synced.
		case pns.Status.LastReportTime == nil || pns.Status.LastReportTime.Time.Before(after.Truncate(time.Second)):
			return fmt.Errorf("%s: no report since %v", node, after)
		case pns.Status.ActiveMode != mode:
			return fmt.Errorf("%s runs %q, want %q", node, pns.Status.ActiveMode, mode)
		}
		return nil
	})
}

// expectServer polls until a dial from ns to addr is answered by want.
func expectServer(t *testing.T, from *netns.NS, network, addr, want string) {
	t.Helper()
	apiserver.Eventually(t, settle, func() error {
		r, err := from.Dial(network, addr, dialTimeout)
		if err != nil {
			return fmt.Errorf("%s %s from %s: %w", network, addr, from.Name, err)
		}
		if r.Server != want {
			return fmt.Errorf("%s %s answered by %s, want %s", network, addr, r.Server, want)
		}
		return nil
	})
}

// modeObjects lists kpo's kernel objects in a node namespace by the mode
// that owns them: nftables tables; iptables chains of both flavours and
// families, KPO-IPVS-* being the ipvs mode's companion; ipsets, kpo-ipvs0 and
// IPVS virtual servers (kpo's are the only ones in these tests).
func modeObjects(ns *netns.NS) (map[kpov1.Mode][]string, error) {
	out := map[kpov1.Mode][]string{}
	tables, err := ns.Run("nft", "list", "tables")
	if err != nil {
		return nil, fmt.Errorf("nft list tables: %v: %s", err, tables)
	}
	for _, line := range strings.Split(tables, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[2] == "kpo" {
			out[kpov1.ModeNFTables] = append(out[kpov1.ModeNFTables], "table "+f[1]+" kpo")
		}
	}
	for _, save := range []string{"iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save"} {
		dump, err := ns.Run(save)
		if err != nil {
			return nil, fmt.Errorf("%s: %v: %s", save, err, dump)
		}
		for _, line := range strings.Split(dump, "\n") {
			name, ok := strings.CutPrefix(line, ":KPO-")
			if !ok {
				continue
			}
			obj := save + " KPO-" + strings.Fields(name)[0]
			if strings.HasPrefix(name, "IPVS-") {
				out[kpov1.ModeIPVS] = append(out[kpov1.ModeIPVS], obj)
			} else {
				out[kpov1.ModeIPTables] = append(out[kpov1.ModeIPTables], obj)
			}
		}
	}
	sets, err := ns.Run("ipset", "list", "-n")
	if err != nil {
		return nil, fmt.Errorf("ipset list: %v: %s", err, sets)
	}
	for _, name := range strings.Fields(sets) {
		if strings.HasPrefix(name, "KPO-") || strings.HasPrefix(name, "KPO6-") {
			out[kpov1.ModeIPVS] = append(out[kpov1.ModeIPVS], "ipset "+name)
		}
	}
	if _, err := ns.NL.LinkByName("kpo-ipvs0"); err == nil {
		out[kpov1.ModeIPVS] = append(out[kpov1.ModeIPVS], "link kpo-ipvs0")
	}
	h, err := mobyipvs.New(ns.Path())
	if err != nil {
		return nil, err
	}
	defer h.Close()
	svcs, err := h.GetServices()
	if err != nil {
		return nil, err
	}
	for _, s := range svcs {
		out[kpov1.ModeIPVS] = append(out[kpov1.ModeIPVS], fmt.Sprintf("virtual server %s:%d", s.Address, s.Port))
	}
	return out, nil
}

// expectOnlyMode polls until the node holds mode's objects and no other
// mode's: the "no leftovers" of a mode switch.
func expectOnlyMode(t *testing.T, node *testnet.Node, mode kpov1.Mode) {
	t.Helper()
	apiserver.Eventually(t, settle, func() error {
		objs, err := modeObjects(node.NS)
		if err != nil {
			return err
		}
		if len(objs[mode]) == 0 {
			return fmt.Errorf("in %s mode, none of its objects", mode)
		}
		for m, o := range objs {
			if m != mode {
				return fmt.Errorf("in %s mode, %s's objects remain: %v", mode, m, o)
			}
		}
		return nil
	})
}
