package testnet

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Memory reads a process's resident set size and its peak (VmRSS, VmHWM) in MiB.
func Memory(pid int) (rssMiB, peakMiB float64, err error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rssMiB = kb / 1024
		case "VmHWM:":
			peakMiB = kb / 1024
		}
	}
	return rssMiB, peakMiB, nil
}
