package nftables

import (
	"context"
	"os"
	"testing"

	"sigs.k8s.io/knftables"

	"kpo.dev/kpo/nodeagent/model"
)

// TestDumpTx writes a 10k full and a partial transaction to files (debugging aid).
func TestDumpTx(t *testing.T) {
	if os.Getenv("KPO_DUMP_TX") == "" {
		t.Skip("set KPO_DUMP_TX=dir")
	}
	dir := os.Getenv("KPO_DUMP_TX")
	k := NewFakeKernel()
	b, _ := New(testSettings, []model.Family{model.IPv4}, WithKernel(k))
	s := bigSnapshot(10000, 2)
	var full string
	b.kernel = &capture{FakeKernel: k, out: &full}
	mustSync(t, b, s, true)
	if err := os.WriteFile(dir+"/full.nft", []byte(full), 0o644); err != nil {
		t.Fatal(err)
	}
	orig := s.Services[key("default", "svc5000", model.IPv4)]
	alt := *orig
	alt.ClusterEndpoints = []model.Endpoint{orig.ClusterEndpoints[0], ep("10.250.0.1", 8080, false)}
	alt.ExternalEndpoints = alt.ClusterEndpoints
	mustSync(t, b, withSnap(s, &alt), false)
	if err := os.WriteFile(dir+"/partial.nft", []byte(full), 0o644); err != nil {
		t.Fatal(err)
	}
}

type capture struct {
	*FakeKernel
	out *string
}

func (c *capture) Run(ctx context.Context, tx *knftables.Transaction) error {
	*c.out = tx.String()
	return nil
}
