package conformance

import "testing"

// differsAlone runs a case of a generated batch by itself (its own addresses,
// no other case's objects) and says whether it still differs. The shrinker
// only runs simplified versions of a case: a difference that needs another
// case of the batch (an endpoint both list, as seed 257 in batch 251–275)
// then looks like one that every simplification removes.
func (s *Suite) differsAlone(t *testing.T, settings Settings, c *Case) bool {
	t.Helper()
	if len(c.specs) != 1 {
		return true
	}
	build := func() []*Case {
		alone := s.World.Build(&allocator{}, c.Name, c.specs[0])
		alone.Seed = c.Seed
		return []*Case{alone}
	}
	if res := s.Run(t, settings, build); len(res.Diffs) == 0 {
		t.Logf("case %s (seed %d) does not differ alone: the difference needs other cases of its batch "+
			"(bisect the batch: the shrinker cannot show it)", c.Name, c.Seed)
		return false
	}
	return true
}
