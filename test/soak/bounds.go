package soak

import "time"

// What the soak asserts about growth, and why these numbers.
//
// A leak is growth with the work done. At the default 5 changes per second
// (18,000 an hour) the leaks to catch are:
//
//   - RSSLeak, 16 MiB/h: about 1 KiB kept per change, the size of one
//     EndpointSlice object or of a few map entries per Service touched;
//   - GoroutineLeak, 60/h: one goroutine a minute (one per sync would be
//     3,600 an hour, one per change 18,000);
//   - LiveHeapPerChange, 1 KiB: the same leak, measured on the live heap.
//
// A slope over a short window is the leak plus noise. A settled agent's RSS
// does not stay put: it moves within a band as the Go heap grows to its next
// collection and the scavenger returns pages (at 5,000 Services, 5.0 to 7.2
// MiB wide over the 27 settled minutes of 30-minute runs); its goroutines
// move within a few (55–59) as watches are renewed and /metrics is served. The
// steepest least-squares slope a band of width R can give over a window w is
// 1.5·R/w (the values at the bottom of the band for the first half of the
// window and at the top for the second; TestStepSlope), so a bound is
//
//	leak + 1.5 · band / window
//
// with bands of 8 MiB and 6 goroutines. The second half of a 30-minute run
// (15 minutes) gives 64 MiB/h and 96/h; of the 5-minute CI run, 304 MiB/h and
// 276/h. The CI run's slopes catch only gross leaks (a goroutine per sync;
// some 17 KiB per change), which is what the live-heap check is for: the live
// heap right after a full sync (which runs a GC and returns free memory to the
// OS) is not noisy, so its growth from the cold sync to the end of the soak is
// held to LiveHeapPerChange per change, plus LiveHeapAllowance for the
// Services the soak adds (50 transient, 3 stable, a canary) and the
// measurement.
const (
	RSSLeak           = 16.0 // MiB/h
	RSSBand           = 8.0  // MiB
	GoroutineLeak     = 60.0 // per hour
	GoroutineBand     = 6.0
	LiveHeapPerChange = 1.0 / 1024 // MiB
	LiveHeapAllowance = 2.0        // MiB
)

// RSSSlopeBound is the bound on the RSS slope (MiB/h) over window.
func RSSSlopeBound(window time.Duration) float64 { return RSSLeak + 1.5*RSSBand/window.Hours() }

// GoroutineSlopeBound is the bound on the goroutine slope (per hour) over window.
func GoroutineSlopeBound(window time.Duration) float64 {
	return GoroutineLeak + 1.5*GoroutineBand/window.Hours()
}

// LiveHeapGrowthBound is the bound on the live heap's growth (MiB) from the
// cold sync to the end of a soak of changes changes.
func LiveHeapGrowthBound(changes int) float64 {
	return LiveHeapAllowance + float64(changes)*LiveHeapPerChange
}
