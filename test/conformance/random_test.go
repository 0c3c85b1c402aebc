package conformance

import (
	"fmt"
	"os"
	"strconv"
	"testing"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// TestConformanceRandom compares the proxies on generated Services, in batches:
// $KPO_CONFORMANCE_RANDOM cases per mode (default 16: the bounded slice of
// `make test`; `make conformance` runs 1,000), seeds from $KPO_CONFORMANCE_SEED.
// A differing case is printed as YAML with its seed and shrunk.
func TestConformanceRandom(t *testing.T) {
	count := envInt("KPO_CONFORMANCE_RANDOM", 16)
	base := int64(envInt("KPO_CONFORMANCE_SEED", 1))
	batch := envInt("KPO_CONFORMANCE_BATCH", 25)
	if count <= 0 {
		t.Skip("KPO_CONFORMANCE_RANDOM=0")
	}
	s := newSuite(t)
	for _, mode := range modes() {
		t.Run(string(mode), func(t *testing.T) {
			total := &Result{Settings: defaultSettings(mode), cases: map[string]*Case{}}
			total.Settings.Name = fmt.Sprintf("random, seeds %d–%d", base, base+int64(count)-1)
			for from := 0; from < count; from += batch {
				res := s.Run(t, defaultSettings(mode), s.World.randomCases(base+int64(from), min(batch, count-from)))
				total.merge(res)
				for _, c := range res.differingCases() {
					if !s.differsAlone(t, defaultSettings(mode), c) {
						continue
					}
					t.Logf("case %s (seed %d) differs; shrinking", c.Name, c.Seed)
					min := s.shrink(t, defaultSettings(mode), c)
					t.Logf("minimal case for seed %d:\n%s", c.Seed, min.YAML())
				}
			}
			record(t, total)
		})
	}
}
