package soak

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// figures are one node's results.
type figures struct {
	Node, Mode string
	Samples    int
	// Window is the second half of the run, over which the slopes are fitted.
	Window, WindowFrom                time.Duration
	RSSFirst, RSSLast, RSSMin, RSSMax float64
	RSS, LiveHeap, Goroutines         Fit
	GoroutinesFirst, GoroutinesLast   float64
	GoroutinesMin, GoroutinesMax      float64
	LiveHeapFirst, LiveHeapLast       float64
	// AfterColdSync and AfterSoak are the agent after a full sync, before and
	// after the soak.
	AfterColdSync, AfterSoak             Sample
	FullSyncs, PartialSyncs, FailedSyncs float64
	PendingMax                           float64
	CPUSeconds                           float64
	Requests, FailedRequests             int
}

func compute(n *node) figures {
	ss := n.samples
	first, last := ss[0], ss[len(ss)-1]
	f := figures{Node: n.Name, Mode: string(n.mode), Samples: len(ss),
		RSSFirst: first.RSSMiB, RSSLast: last.RSSMiB, RSSMin: first.RSSMiB, RSSMax: first.RSSMiB,
		LiveHeapFirst: first.LiveHeapMiB, LiveHeapLast: last.LiveHeapMiB,
		GoroutinesFirst: first.Goroutines, GoroutinesLast: last.Goroutines, GoroutinesMin: first.Goroutines, GoroutinesMax: first.Goroutines,
		AfterColdSync: n.afterColdSync, AfterSoak: n.afterSoak,
		FullSyncs: last.FullSyncs - first.FullSyncs, PartialSyncs: last.PartialSyncs - first.PartialSyncs,
		CPUSeconds: last.CPUSeconds - first.CPUSeconds, Requests: last.Requests, FailedRequests: last.FailedRequests}
	var rss, live, gr []Point
	for _, s := range ss {
		t := s.At.Seconds()
		rss = append(rss, Point{t, s.RSSMiB})
		live = append(live, Point{t, s.LiveHeapMiB})
		gr = append(gr, Point{t, s.Goroutines})
		f.RSSMin, f.RSSMax = min(f.RSSMin, s.RSSMiB), max(f.RSSMax, s.RSSMiB)
		f.GoroutinesMin, f.GoroutinesMax = min(f.GoroutinesMin, s.Goroutines), max(f.GoroutinesMax, s.Goroutines)
		f.PendingMax = max(f.PendingMax, s.Pending)
		f.FailedSyncs = max(f.FailedSyncs, s.FailedSyncs)
	}
	half := SecondHalf(rss)
	f.WindowFrom = time.Duration(half[0].T * float64(time.Second))
	f.Window = last.At - f.WindowFrom
	f.RSS, f.LiveHeap, f.Goroutines = LeastSquares(half), LeastSquares(SecondHalf(live)), LeastSquares(SecondHalf(gr))
	return f
}

// report logs the figures, writes them to s.Out if set, and asserts them.
func report(t *testing.T, s settings, nodes []*node, changes int, churnTime time.Duration) {
	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format+"\n", args...) }
	w("soak: %d loaded Services (2 endpoints each), %d transient, 3 stable; %v of churn, %d changes (%.2f/s); a sample every %v",
		s.Services, TransientPool, churnTime.Round(time.Second), changes, float64(changes)/churnTime.Seconds(), s.Interval)
	var all []figures
	for _, n := range nodes {
		f := compute(n)
		all = append(all, f)
		w("%s (%s): %d samples; slopes: least squares over the second half (%v from %v)",
			f.Node, f.Mode, f.Samples, f.Window.Round(time.Second), f.WindowFrom.Round(time.Second))
		w("  RSS          %.1f → %.1f MiB (min %.1f, max %.1f); slope %+.1f ± %.1f MiB/h (bound %.0f)",
			f.RSSFirst, f.RSSLast, f.RSSMin, f.RSSMax, f.RSS.PerHour(), f.RSS.StdErrPerHour(), RSSSlopeBound(f.Window))
		w("  live heap    %.1f → %.1f MiB; slope %+.1f ± %.1f MiB/h",
			f.LiveHeapFirst, f.LiveHeapLast, f.LiveHeap.PerHour(), f.LiveHeap.StdErrPerHour())
		w("  after a full sync, cold → after the soak: live heap %.1f → %.1f MiB (%+.1f, bound %+.1f); heap in use %.1f → %.1f MiB; RSS %.1f → %.1f MiB; goroutines %.0f → %.0f",
			f.AfterColdSync.LiveHeapMiB, f.AfterSoak.LiveHeapMiB, f.LiveHeapGrowth(), LiveHeapGrowthBound(changes),
			f.AfterColdSync.HeapMiB, f.AfterSoak.HeapMiB, f.AfterColdSync.RSSMiB, f.AfterSoak.RSSMiB,
			f.AfterColdSync.Goroutines, f.AfterSoak.Goroutines)
		w("  goroutines   %.0f → %.0f (min %.0f, max %.0f); slope %+.1f ± %.1f /h (bound %.0f)",
			f.GoroutinesFirst, f.GoroutinesLast, f.GoroutinesMin, f.GoroutinesMax,
			f.Goroutines.PerHour(), f.Goroutines.StdErrPerHour(), GoroutineSlopeBound(f.Window))
		w("  syncs        %.0f full, %.0f partial, %.0f failed; Services with changes pending at most %.0f",
			f.FullSyncs, f.PartialSyncs, f.FailedSyncs, f.PendingMax)
		w("  CPU          %.1f s (%.1f%% of one core)", f.CPUSeconds, 100*f.CPUSeconds/churnTime.Seconds())
		w("  requests     %d, %d failed", f.Requests, f.FailedRequests)
	}
	t.Log("\n" + sb.String())
	if s.Out != "" {
		writeOut(t, s.Out, sb.String(), nodes)
	}
	for _, f := range all {
		assertFigures(t, f, changes, churnTime)
	}
}

// LiveHeapGrowth is the live heap after the soak's last full sync less that
// after the cold sync (MiB).
func (f figures) LiveHeapGrowth() float64 {
	return f.AfterSoak.LiveHeapMiB - f.AfterColdSync.LiveHeapMiB
}

func assertFigures(t *testing.T, f figures, changes int, churnTime time.Duration) {
	if f.FailedSyncs != 0 || f.AfterSoak.FailedSyncs != 0 {
		t.Errorf("%s (%s): %.0f syncs failed", f.Node, f.Mode, max(f.FailedSyncs, f.AfterSoak.FailedSyncs))
	}
	if f.FailedRequests != 0 || f.Requests == 0 {
		t.Errorf("%s (%s): %d of %d requests failed", f.Node, f.Mode, f.FailedRequests, f.Requests)
	}
	if f.PartialSyncs == 0 {
		t.Errorf("%s (%s): no sync during the churn", f.Node, f.Mode)
	}
	// A sync is full once the last full one is syncPeriod (30 s) old, also
	// while changes keep coming (the soak's first finding).
	if churnTime > 2*agentSyncPeriod && f.FullSyncs == 0 {
		t.Errorf("%s (%s): no full sync in %v of churn (syncPeriod %v)", f.Node, f.Mode, churnTime.Round(time.Second), agentSyncPeriod)
	}
	if b := RSSSlopeBound(f.Window); f.RSS.PerHour() > b {
		t.Errorf("%s (%s): RSS grows %.1f MiB/h over the second half (bound %.0f)", f.Node, f.Mode, f.RSS.PerHour(), b)
	}
	if b := LiveHeapGrowthBound(changes); f.LiveHeapGrowth() > b {
		t.Errorf("%s (%s): the live heap after a full sync grew %.1f MiB during the soak (bound %.1f)", f.Node, f.Mode,
			f.LiveHeapGrowth(), b)
	}
	if b := GoroutineSlopeBound(f.Window); f.Goroutines.PerHour() > b {
		t.Errorf("%s (%s): goroutines grow %.1f/h over the second half (bound %.0f)", f.Node, f.Mode, f.Goroutines.PerHour(), b)
	}
}

// writeOut writes the summary and every sample (CSV) into dir.
func writeOut(t *testing.T, dir, summary string, nodes []*node) {
	var csv strings.Builder
	csv.WriteString("node,mode,seconds,rss_mib,heap_inuse_mib,live_heap_mib,goroutines,full_syncs,partial_syncs,failed_syncs,pending,cpu_seconds,requests,failed_requests\n")
	for _, n := range nodes {
		for _, s := range n.samples {
			fmt.Fprintf(&csv, "%s,%s,%.1f,%.2f,%.2f,%.2f,%.0f,%.0f,%.0f,%.0f,%.0f,%.2f,%d,%d\n", n.Name, n.mode, s.At.Seconds(),
				s.RSSMiB, s.HeapMiB, s.LiveHeapMiB, s.Goroutines, s.FullSyncs, s.PartialSyncs, s.FailedSyncs, s.Pending, s.CPUSeconds,
				s.Requests, s.FailedRequests)
		}
	}
	for name, data := range map[string]string{"soak-summary.txt": summary, "soak-samples.csv": csv.String()} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Errorf("writing %s: %v", name, err)
		}
	}
}
