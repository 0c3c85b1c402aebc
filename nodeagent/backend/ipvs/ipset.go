package ipvs

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
)

// IPSet is what the companion rules need of ipset(8), in the calling
// thread's network namespace. FakeIPSet refuses what ipset refuses
// (TestIPSetFakeParity).
type IPSet interface {
	// Restore runs an "ipset restore" script: its commands in order, up to
	// the first that fails (ipset restore is not atomic: the earlier ones
	// stay applied, which is why the companion rules build a set under a
	// temporary name and swap it in).
	Restore(script string) error
	// Names lists the sets; an error means ipset cannot run here (no
	// binary, no ip_set support), so none of kpo's can exist.
	Names() ([]string, error)
	// Members lists a set's elements as "ipset save" writes them.
	Members(name string) ([]string, error)
}

// execIPSet runs the ipset binary.
type execIPSet struct{}

func (execIPSet) Restore(script string) error {
	if script == "" {
		return nil
	}
	cmd := exec.Command("ipset", "restore")
	cmd.Stdin = strings.NewReader(script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ipset restore: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func (execIPSet) Names() ([]string, error) {
	out, err := exec.Command("ipset", "list", "-n").Output()
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(out)), nil
}

func (execIPSet) Members(name string) ([]string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("ipset", "save", name)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("ipset save %s: %v: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	var out []string
	for _, line := range strings.Split(stdout.String(), "\n") {
		if e, ok := strings.CutPrefix(line, "add "+name+" "); ok {
			out = append(out, strings.TrimSpace(e))
		}
	}
	return out, nil
}
