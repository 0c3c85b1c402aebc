package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers/render"
	"kpo.dev/kpo/nodeagent/explain"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/nodeports"
)

type explainOptions struct {
	port, from, fromIP, to, node, family, output string
}

func (c *cli) explainCommand() *cobra.Command {
	o := &explainOptions{}
	cmd := &cobra.Command{
		Use:   "explain svc/NAME (--from pod/NAME | --from node/NAME | --from-ip ADDR) [--to clusterip|nodeport|external[:IP]|lb[:IP]]",
		Short: "Say what each node concerned does with traffic to a Service, and why",
		Long: `explain runs the node agents' own model code on the objects it reads (the Service, its
EndpointSlices, the node's labels and addresses, the node's ProxyConfiguration) and says, per node
concerned, which endpoints may receive the traffic, whether the source is masqueraded, or whether
it is dropped or refused, naming the field, policy, hint, condition or setting that decided it.

Nodes concerned: a pod's or node's own node; for --from-ip every node (the network decides where
the traffic enters), or --node; for --to nodeport every node's primary address, or --node.`,
		Example: `  kubectl kpo explain svc/web --from pod/client-7d9f
  kubectl kpo explain svc/web -n shop --from-ip 198.51.100.200 --to nodeport --node node-2
  kubectl kpo explain svc/web --from node/node-1 --to lb -o yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.explain(cmd.Context(), args[0], o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.port, "port", "", "the Service port (name or number); needed when the Service has several")
	f.StringVar(&o.from, "from", "", "the sender: pod/NAME (in -n) or node/NAME")
	f.StringVar(&o.fromIP, "from-ip", "", "the sender's address, for a client outside the cluster")
	f.StringVar(&o.to, "to", "clusterip", "the address used: clusterip, nodeport, external[:IP] or lb[:IP]")
	f.StringVar(&o.node, "node", "", "only this node (the NodePort's node, or where outside traffic enters)")
	f.StringVar(&o.family, "family", "", "IPv4 or IPv6 (default: the family of the sender or of the Service's first ClusterIP)")
	f.StringVarP(&o.output, "output", "o", "", "output format: json or yaml (default: text for people)")
	return cmd
}

// target is one node and address to explain.
type target struct {
	node string
	addr netip.Addr
}

func (c *cli) explain(ctx context.Context, ref string, o *explainOptions) error {
	if ctx == nil {
		ctx = background()
	}
	if o.output != "" && o.output != "json" && o.output != "yaml" {
		return fmt.Errorf("--output %q: want json or yaml", o.output)
	}
	name, ok := strings.CutPrefix(ref, "svc/")
	if !ok {
		name, _ = strings.CutPrefix(ref, "service/")
	}
	ns, err := c.namespace()
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	objs, err := explain.Load(ctx, cl)
	if err != nil {
		return err
	}
	svc := findService(objs, ns, name)
	if svc == nil {
		return fmt.Errorf("service %s/%s not found", ns, name)
	}
	w, err := loadWorld(ctx, cl, objs)
	if err != nil {
		return err
	}
	src, family, err := w.source(ctx, cl, ns, svc, o)
	if err != nil {
		return err
	}
	kind, targets, err := w.targets(svc, family, src, o)
	if err != nil {
		return err
	}
	var out []explain.Explanation
	for _, tg := range targets {
		m, programmed, warnings, err := w.model(tg.node)
		if err != nil {
			return err
		}
		// --port names the Service port; the query's port follows from it.
		e, err := m.ExplainService(ns, name, o.port, explain.ToClusterIP, explain.Query{Target: kind, Addr: tg.addr, Source: src})
		if err != nil {
			return err
		}
		e.Programmed = &programmed
		e.Warnings = append(e.Warnings, warnings...)
		out = append(out, e)
	}
	return c.print(out, o.output)
}

func (c *cli) print(out []explain.Explanation, format string) error {
	switch format {
	case "json":
		b, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			return err
		}
		printf(c.out, "%s\n", b)
	case "yaml":
		b, err := yaml.Marshal(out)
		if err != nil {
			return err
		}
		printf(c.out, "%s", b)
	default:
		for i := range out {
			if i > 0 {
				printf(c.out, "\n")
			}
			printf(c.out, "%s", explain.Text(&out[i], c.color))
		}
	}
	return nil
}

func findService(objs *explain.Objects, ns, name string) *corev1.Service {
	for _, s := range objs.Services {
		if s.Namespace == ns && s.Name == name {
			return s
		}
	}
	return nil
}

// world is what the cluster says about its nodes and their agents.
type world struct {
	objs     *explain.Objects
	nodes    map[string]*corev1.Node
	statuses map[string]*kpov1.ProxyNodeStatus
	configs  map[string]*kpov1.ProxyConfiguration
	models   map[string]*explain.NodeModel
	hashes   map[string]explain.ModelHash
}

func loadWorld(ctx context.Context, cl client.Client, objs *explain.Objects) (*world, error) {
	w := &world{objs: objs, nodes: map[string]*corev1.Node{}, statuses: map[string]*kpov1.ProxyNodeStatus{},
		configs: map[string]*kpov1.ProxyConfiguration{}, models: map[string]*explain.NodeModel{},
		hashes: map[string]explain.ModelHash{}}
	var nodes corev1.NodeList
	var pns kpov1.ProxyNodeStatusList
	var pcs kpov1.ProxyConfigurationList
	if err := cl.List(ctx, &nodes); err != nil {
		return nil, fmt.Errorf("listing Nodes: %w", err)
	}
	if err := cl.List(ctx, &pns); err != nil {
		return nil, fmt.Errorf("listing ProxyNodeStatuses: %w", err)
	}
	if err := cl.List(ctx, &pcs); err != nil {
		return nil, fmt.Errorf("listing ProxyConfigurations: %w", err)
	}
	for i := range nodes.Items {
		w.nodes[nodes.Items[i].Name] = &nodes.Items[i]
	}
	for i := range pns.Items {
		w.statuses[pns.Items[i].Name] = &pns.Items[i]
	}
	for i := range pcs.Items {
		w.configs[pcs.Items[i].Name] = &pcs.Items[i]
	}
	return w, nil
}

// agentNodes are the nodes with an agent's report, sorted.
func (w *world) agentNodes() []string {
	var out []string
	for n := range w.statuses {
		if w.nodes[n] != nil {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// model builds a node's model with its agent's configuration, compares it
// with the model the node reports it programmed, and says what may make the
// node's rules differ from it.
func (w *world) model(name string) (*explain.NodeModel, explain.Programmed, []string, error) {
	node := w.nodes[name]
	if node == nil {
		return nil, explain.Programmed{}, nil, fmt.Errorf("node %s not found", name)
	}
	st := w.statuses[name]
	if st == nil {
		return nil, explain.Programmed{}, nil, fmt.Errorf("node %s has no ProxyNodeStatus: no kpo agent runs there", name)
	}
	pc := w.configs[st.Status.Configuration]
	if pc == nil {
		return nil, explain.Programmed{}, nil, fmt.Errorf("node %s runs configuration %q, which does not exist (any more)", name, st.Status.Configuration)
	}
	cfg := render.AgentConfiguration(pc)
	// As the agent resolves its configuration file (kpov1.Resolve): an agent
	// refuses what fails, so there is no model to explain.
	mode, err := kpov1.Resolve(cfg.Mode, &cfg.ProxySettings, nil)
	if err != nil {
		return nil, explain.Programmed{}, nil, fmt.Errorf("configuration %s: %w", pc.Name, err)
	}
	cfg.Mode = mode
	m := w.models[name]
	if m == nil {
		m = explain.BuildNode(w.objs, explain.NodeFacts{Node: node, Config: cfg, ActiveMode: st.Status.ActiveMode})
		w.models[name] = m
		w.hashes[name] = explain.Hash(m.Snapshot)
	}
	p := explain.CheckProgrammed(&st.Status, w.hashes[name])
	return m, p, freshness(st, pc, p), nil
}

// source resolves --from / --from-ip and the family explained.
func (w *world) source(ctx context.Context, cl client.Client, ns string, svc *corev1.Service, o *explainOptions) (explain.Source, model.Family, error) {
	family, err := familyFlag(o.family)
	if err != nil {
		return explain.Source{}, 0, err
	}
	if family == 0 {
		if ip, ok := strings.CutPrefix(strings.TrimPrefix(strings.TrimPrefix(o.to, "external"), "lb"), ":"); ok {
			if a, err := netip.ParseAddr(ip); err == nil {
				family = model.FamilyOf(a)
			}
		}
	}
	if family == 0 && len(svc.Spec.ClusterIPs) > 0 {
		if a, err := netip.ParseAddr(svc.Spec.ClusterIPs[0]); err == nil {
			family = model.FamilyOf(a)
		}
	}
	switch {
	case o.fromIP != "" && o.from != "":
		return explain.Source{}, 0, fmt.Errorf("--from and --from-ip exclude each other")
	case o.fromIP != "":
		ip, err := netip.ParseAddr(o.fromIP)
		if err != nil {
			return explain.Source{}, 0, fmt.Errorf("--from-ip: %w", err)
		}
		return explain.Source{Kind: explain.FromExternal, IP: ip.Unmap()}, model.FamilyOf(ip), nil
	case strings.HasPrefix(o.from, "node/"):
		name := strings.TrimPrefix(o.from, "node/")
		n := w.nodes[name]
		if n == nil {
			return explain.Source{}, 0, fmt.Errorf("node %s not found", name)
		}
		ip, ok := nodeports.PrimaryIPs(n)[family]
		if !ok {
			return explain.Source{}, 0, fmt.Errorf("node %s has no %s address", name, family)
		}
		return explain.Source{Kind: explain.FromNode, Name: name, IP: ip, Node: name}, family, nil
	case strings.HasPrefix(o.from, "pod/"):
		return podSource(ctx, cl, ns, strings.TrimPrefix(o.from, "pod/"), family)
	}
	return explain.Source{}, 0, fmt.Errorf("say who sends: --from pod/NAME, --from node/NAME or --from-ip ADDR")
}

func podSource(ctx context.Context, cl client.Client, ns, name string, family model.Family) (explain.Source, model.Family, error) {
	pod := &corev1.Pod{}
	if err := cl.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, pod); err != nil {
		return explain.Source{}, 0, err
	}
	node := pod.Spec.NodeName
	for _, pip := range pod.Status.PodIPs {
		ip, err := netip.ParseAddr(pip.IP)
		if err != nil || model.FamilyOf(ip) != family {
			continue
		}
		if pod.Spec.HostNetwork {
			return explain.Source{Kind: explain.FromNode, Name: node, IP: ip, Node: node}, family, nil
		}
		return explain.Source{Kind: explain.FromPod, Name: ns + "/" + name, IP: ip, Node: node}, family, nil
	}
	return explain.Source{}, 0, fmt.Errorf("pod %s/%s has no %s address (yet)", ns, name, family)
}

func familyFlag(s string) (model.Family, error) {
	switch strings.ToLower(s) {
	case "":
		return 0, nil
	case "ipv4", "4":
		return model.IPv4, nil
	case "ipv6", "6":
		return model.IPv6, nil
	}
	return 0, fmt.Errorf("--family %q: want IPv4 or IPv6", s)
}
