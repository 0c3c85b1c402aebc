// Command kubectl-kpo is kpo's kubectl plugin: `kubectl kpo explain` says
// what each node does with traffic to a Service and why, from the agents'
// own model code (nodeagent/explain); `kubectl kpo status` shows the nodes,
// their modes and which lag behind, in one screen.
package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

func main() {
	if err := newRoot(os.Stdout, os.Stderr).Execute(); err != nil {
		os.Exit(1)
	}
}

// cli holds what every subcommand shares: kubectl's connection flags
// (--kubeconfig, --context, -n, ...) and the output streams.
type cli struct {
	flags    *genericclioptions.ConfigFlags
	out, err io.Writer
	// color: colours in text output (stdout is a terminal).
	color bool
}

func newRoot(out, errOut io.Writer) *cobra.Command {
	c := &cli{flags: genericclioptions.NewConfigFlags(true), out: out, err: errOut, color: isTerminal(out)}
	root := &cobra.Command{
		Use:           "kubectl-kpo",
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl kpo"},
		Short:         "Explain what kpo's node agents do with Service traffic",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	c.flags.AddFlags(root.PersistentFlags())
	root.AddCommand(c.explainCommand(), c.statusCommand())
	return root
}

// client connects as kubectl would.
func (c *cli) client() (client.Client, error) {
	cfg, err := c.flags.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := kpov1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return client.New(cfg, client.Options{Scheme: scheme})
}

// namespace is -n, else the kubeconfig context's namespace.
func (c *cli) namespace() (string, error) {
	ns, _, err := c.flags.ToRawKubeConfigLoader().Namespace()
	return ns, err
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0 && os.Getenv("NO_COLOR") == ""
}

func background() context.Context { return context.Background() }

// printf writes to the command's output; a failed write to stdout is not
// worth an error of its own.
func printf(w io.Writer, format string, args ...any) { _, _ = fmt.Fprintf(w, format, args...) }
