package vm

import (
	"strings"
	"testing"
	"time"
)

// The inside test's figure lines survive the console (kernel noise around
// them, the CR already trimmed by Run) and land in the report as ratios.
func TestCompareReport(t *testing.T) {
	up := CompareFigures{Impl: "kube-proxy", Services: 1000, Endpoints: 2, ColdSyncS: 8, FirstSyncS: 4, ColdCPUS: 6,
		PartialSyncS: 0.5, PartialType: "full", PartialLatencyS: 0.6, RSSMiB: 80, PeakRSSMiB: 90, VirtualServers: 1001}
	kp := CompareFigures{Impl: "kpo", Services: 1000, Endpoints: 2, ColdSyncS: 4, FirstSyncS: 2, ColdCPUS: 2,
		PartialSyncS: 0.05, PartialType: "partial", PartialLatencyS: 0.1, RSSMiB: 40, PeakRSSMiB: 50, VirtualServers: 1000}
	console := "[   12.3] e1000: eth0 link up\n" + up.Line() + "\n--- PASS: TestCompareIPVS/kube-proxy\n" + kp.Line() + "\n"
	var got []CompareFigures
	for _, line := range strings.Split(console, "\n") {
		f, ok, err := ParseCompareLine(line)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			got = append(got, f)
		}
	}
	if len(got) != 2 || got[0] != up || got[1] != kp {
		t.Fatalf("parsed %+v", got)
	}
	if _, _, err := ParseCompareLine(CompareMarker + "{broken"); err == nil {
		t.Error("a broken line parsed")
	}
	// A 10k size with kube-proxy capped and no kpo figures: the 1k pair only
	// gets ratios, the unpaired size is left out.
	lone := up
	lone.Services, lone.Capped = 10000, true
	md := compareMarkdown(append(got, lone), "cmd", "6.1.0-57-amd64", 3*time.Minute)
	for _, want := range []string{
		"| 1k × 2 | cold sync (s) | 8.00 | 4.00 | 2.0× |",
		"| 1k × 2 | CPU to cold sync (s) | 6.00 | 2.00 | 3.0× |",
		"| 1k × 2 | sync after one endpoint change (ms) | 500.0 | 50.0 | 10.0× |",
		"| 1k × 2 | that sync's kind | full | partial | |",
		"| 1k × 2 | IPVS virtual servers (at the cap, if capped) | 1001 | 1000 | |",
		"6.1.0-57-amd64", "```sh\ncmd\n```", "**TCG emulation**",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "10k") {
		t.Errorf("unpaired size reported:\n%s", md)
	}
	// Paired with kpo, the capped kube-proxy gets a lower bound and dashes.
	kp10 := kp
	kp10.Services, kp10.ColdSyncS = 10000, 30
	lone.CapS = 300
	md = compareMarkdown([]CompareFigures{lone, kp10}, "cmd", "", time.Minute)
	for _, want := range []string{
		"| 10k × 2 | cold sync (s) | > 300 (capped) | 30.00 | > 10.0× |",
		"| 10k × 2 | sync after one endpoint change (ms) | — | 50.0 | — |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("capped report lacks %q:\n%s", want, md)
		}
	}
	if got := CompareArgs("9m0s"); got != "-test.timeout=9m0s -test.run=^TestCompareIPVS$" || strings.ContainsAny(got, `*?["'`) {
		t.Errorf("args %q (/init splits them with the shell)", got)
	}
}

func TestCompareSizes(t *testing.T) {
	got, err := compareSizes("")
	if err != nil || len(got) != 2 || got[0] != [2]int{1000, 2} || got[1] != [2]int{10000, 2} {
		t.Fatalf("default: %v, %v", got, err)
	}
	for _, bad := range []string{"1000", "0x2", "10000x2,1000x2"} {
		if _, err := compareSizes(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
