package nftables

import (
	"testing"

	"kpo.dev/kpo/nodeagent/model"
)

// TestFlatShapeCoversTheModel: every service port without affinity renders
// into the shared pick chains, whatever the node and settings: a route shape
// the pick chains did not render would silently cost the port chains of its
// own (renderChains, which renders any shape, and which affinity uses).
func TestFlatShapeCoversTheModel(t *testing.T) {
	nodes := []model.NodeInfo{testNode, {LocalInterface: "veth", LocalInterfacePrefix: true}, {}}
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		for _, node := range nodes {
			for _, masqAll := range []bool{false, true} {
				rc := newRenderCtx(fam, &node, masqAll)
				for _, sp := range variety(fam) {
					if sp.AffinityTimeout > 0 {
						continue
					}
					r := sp.Routes(rc.opts)
					if _, ok := flatShape(rc, &r); !ok {
						t.Errorf("%s (node %+v, masqueradeAll %v): routes the pick chains do not render", sp.Key, node, masqAll)
					}
				}
			}
		}
	}
}
