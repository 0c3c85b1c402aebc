package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

func (c *cli) statusCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the configurations, every node's agent, its mode, and which nodes lag behind",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if ctx == nil {
				ctx = background()
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			st, err := collectStatus(ctx, cl, time.Now())
			if err != nil {
				return err
			}
			return c.printStatus(st, output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json or yaml (default: text for people)")
	return cmd
}

// Status is kubectl kpo status' screen.
type Status struct {
	Configurations []ConfigStatus `json:"configurations"`
	Nodes          []NodeStatus   `json:"nodes"`
	// Lagging names the nodes that do not run their configuration's current
	// generation, are not synced, or have not synced for two sync periods.
	Lagging []string `json:"lagging"`
}

// ConfigStatus is one ProxyConfiguration.
type ConfigStatus struct {
	Name       string `json:"name"`
	Mode       string `json:"mode"`
	Generation int64  `json:"generation"`
	Desired    int32  `json:"desiredNodes"`
	Updated    int32  `json:"updatedNodes"`
	Ready      int32  `json:"readyNodes"`
	Available  string `json:"available"`
}

// NodeStatus is one node's agent.
type NodeStatus struct {
	Node          string `json:"node"`
	Configuration string `json:"configuration"`
	Generation    int64  `json:"generation"`
	RequestedMode string `json:"requestedMode"`
	ActiveMode    string `json:"activeMode"`
	Synced        string `json:"synced"`
	Healthy       string `json:"healthy"`
	LastSync      string `json:"lastSync"`
	Services      int32  `json:"services"`
	Endpoints     int32  `json:"endpoints"`
	Rejected      int32  `json:"rejected"`
	// ProgrammedModel is the model the node's last report says its kernel
	// holds (status.programmedModel; nil when it names none).
	ProgrammedModel *kpov1.ProgrammedModel `json:"programmedModel,omitempty"`
	// Lag says why the node lags ("" when it does not).
	Lag string `json:"lag,omitempty"`
}

func collectStatus(ctx context.Context, cl client.Client, now time.Time) (*Status, error) {
	var pcs kpov1.ProxyConfigurationList
	var pns kpov1.ProxyNodeStatusList
	if err := cl.List(ctx, &pcs); err != nil {
		return nil, fmt.Errorf("listing ProxyConfigurations: %w", err)
	}
	if err := cl.List(ctx, &pns); err != nil {
		return nil, fmt.Errorf("listing ProxyNodeStatuses: %w", err)
	}
	st := &Status{Configurations: []ConfigStatus{}, Nodes: []NodeStatus{}, Lagging: []string{}}
	byName := map[string]*kpov1.ProxyConfiguration{}
	for i := range pcs.Items {
		pc := &pcs.Items[i]
		byName[pc.Name] = pc
		avail := "Unknown"
		if c := meta(pc.Status.Conditions, "Available"); c != nil {
			avail = string(c.Status)
		}
		st.Configurations = append(st.Configurations, ConfigStatus{Name: pc.Name, Mode: string(pc.Spec.Mode), Generation: pc.Generation,
			Desired: pc.Status.DesiredNodes, Updated: pc.Status.UpdatedNodes, Ready: pc.Status.ReadyNodes, Available: avail})
	}
	for i := range pns.Items {
		n := nodeStatus(&pns.Items[i], byName[pns.Items[i].Status.Configuration], now)
		st.Nodes = append(st.Nodes, n)
		if n.Lag != "" {
			st.Lagging = append(st.Lagging, n.Node)
		}
	}
	slices.SortFunc(st.Nodes, func(a, b NodeStatus) int { return strings.Compare(a.Node, b.Node) })
	slices.Sort(st.Lagging)
	return st, nil
}

func nodeStatus(p *kpov1.ProxyNodeStatus, pc *kpov1.ProxyConfiguration, now time.Time) NodeStatus {
	r := &p.Status
	n := NodeStatus{Node: p.Name, Configuration: r.Configuration, Generation: r.ConfigurationGeneration,
		RequestedMode: string(r.RequestedMode), ActiveMode: string(r.ActiveMode), Synced: condition(r.Conditions, kpov1.NodeConditionSynced),
		Healthy: condition(r.Conditions, kpov1.NodeConditionHealthy), LastSync: "never",
		Services: r.Services, Endpoints: r.Endpoints, Rejected: r.RejectedObjectCount, ProgrammedModel: r.ProgrammedModel.DeepCopy()}
	if r.LastSyncTime != nil {
		n.LastSync = now.Sub(r.LastSyncTime.Time).Round(time.Second).String() + " ago"
	}
	var lag []string
	switch {
	case pc == nil:
		lag = append(lag, "configuration gone")
	case r.ConfigurationGeneration != pc.Generation:
		lag = append(lag, fmt.Sprintf("generation %d of %d", r.ConfigurationGeneration, pc.Generation))
	}
	if n.Synced != string(metav1.ConditionTrue) {
		lag = append(lag, "not synced")
	}
	if r.ActiveMode != r.RequestedMode {
		lag = append(lag, "mode "+orNone(string(r.ActiveMode)))
	}
	if pc != nil && r.LastSyncTime != nil {
		if period, err := pc.Spec.SyncPeriodDuration(); err == nil && period > 0 && now.Sub(r.LastSyncTime.Time) > 2*period {
			lag = append(lag, "no sync for "+now.Sub(r.LastSyncTime.Time).Round(time.Second).String())
		}
	}
	n.Lag = strings.Join(lag, ", ")
	return n
}

func condition(cs []metav1.Condition, typ string) string {
	if c := meta(cs, typ); c != nil {
		return string(c.Status)
	}
	return "Unknown"
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func (c *cli) printStatus(st *Status, format string) error {
	switch format {
	case "json":
		b, err := json.MarshalIndent(st, "", "  ")
		if err != nil {
			return err
		}
		printf(c.out, "%s\n", b)
		return nil
	case "yaml":
		b, err := yaml.Marshal(st)
		if err != nil {
			return err
		}
		printf(c.out, "%s", b)
		return nil
	case "":
	default:
		return fmt.Errorf("--output %q: want json or yaml", format)
	}
	tw := tabwriter.NewWriter(c.out, 0, 0, 2, ' ', 0)
	printf(tw, "CONFIGURATION\tMODE\tGENERATION\tDESIRED\tUP-TO-DATE\tREADY\tAVAILABLE\n")
	for _, pc := range st.Configurations {
		printf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\n", pc.Name, pc.Mode, pc.Generation, pc.Desired, pc.Updated, pc.Ready, pc.Available)
	}
	printf(tw, "\nNODE\tCONFIGURATION\tGEN\tMODE\tSYNCED\tHEALTHY\tLAST SYNC\tSERVICES\tENDPOINTS\tREJECTED\tMODEL\tLAG\n")
	for _, n := range st.Nodes {
		mode := orNone(n.ActiveMode)
		if n.ActiveMode != n.RequestedMode {
			mode += " (wants " + n.RequestedMode + ")"
		}
		lag := n.Lag
		if lag != "" && c.color {
			lag = "\x1b[33m" + lag + "\x1b[0m"
		}
		model := "-"
		if n.ProgrammedModel != nil {
			// The first 8 digits: enough to compare with kubectl kpo explain's.
			model = n.ProgrammedModel.Services[:min(8, len(n.ProgrammedModel.Services))]
		}
		printf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", n.Node, n.Configuration, n.Generation, mode, n.Synced, n.Healthy,
			n.LastSync, n.Services, n.Endpoints, n.Rejected, model, orDashStr(lag))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Lagging) == 0 {
		printf(c.out, "\nno node lags behind\n")
	} else {
		printf(c.out, "\n%d lagging: %s\n", len(st.Lagging), strings.Join(st.Lagging, ", "))
	}
	return nil
}

func orDashStr(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
