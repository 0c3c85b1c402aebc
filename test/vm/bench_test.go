package vm

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseBench(t *testing.T) {
	// As the inside binary prints it under -test.v, with a log line and a
	// kernel message in between, and the console's CRs already trimmed by Run.
	out := `KPO-VM: running tests, uptime 4.1s
goos: linux
BenchmarkSync
BenchmarkSync/1000x2
    bench_test.go:30: something
BenchmarkSync/1000x2-2         	       1	3412000000 ns/op	      4003 cold-netlink-ops	         3.370 cold-s	        94.25 partial-ms	         4.000 partial-netlink-ops
[   50.1] random kernel line
BenchmarkSync/10000x2-2        	       1	32010000000 ns/op	     40003 cold-netlink-ops	        32.01 cold-s	       294.0 partial-ms	         4.000 partial-netlink-ops
BenchmarkSync/99x2-2        	       1	1 ns/op	     3 cold-netlink-ops
PASS
KPO-VM-RESULT: PASS`
	got := ParseBench(out)
	want := []BenchFigures{
		{Services: 1000, Endpoints: 2, ColdSyncS: 3.37, ColdNetlinkOps: 4003, PartialSyncMS: 94.25, PartialNetlinkOps: 4},
		{Services: 10000, Endpoints: 2, ColdSyncS: 32.01, ColdNetlinkOps: 40003, PartialSyncMS: 294, PartialNetlinkOps: 4},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if got := ParseBench("no figures\n"); len(got) != 0 {
		t.Fatalf("got %+v from no figures", got)
	}
}

func TestBenchArgs(t *testing.T) {
	got := BenchArgs([]string{"1000x2", "10000x2"}, 4*time.Minute)
	want := "-test.timeout=4m0s -test.run=XXX -test.bench=BenchmarkSync/^(1000x2|10000x2)$ -test.benchtime=1x"
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if strings.ContainsAny(got, `*?["'`) {
		t.Fatalf("%s: /init's shell would glob or quote it", got)
	}
	if got := BenchArgs(nil, time.Minute); !strings.Contains(got, "-test.bench=. ") {
		t.Fatalf("all sizes: %s", got)
	}
}
