// Package fuzzcorpus reads a fuzz target's committed corpus
// (testdata/fuzz/<FuzzName>/*, the files `go test -fuzz` writes), so that
// tests can replay the same inputs elsewhere: the backends' corpora against
// the real kernel in a network namespace.
package fuzzcorpus

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Entry is one corpus file of a target with a single []byte argument.
type Entry struct {
	Name string
	Data []byte
}

const header = "go test fuzz v1"

// Read returns the entries of dir (for example "testdata/fuzz/FuzzSync"),
// sorted by name. Only single []byte values are supported: what the
// backends' targets take.
func Read(dir string) ([]Entry, error) {
	files, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, f := range files {
		if f.IsDir() {
			continue
		}
		text, err := os.ReadFile(filepath.Join(dir, f.Name()))
		if err != nil {
			return nil, err
		}
		data, err := parse(string(text))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name(), err)
		}
		out = append(out, Entry{Name: f.Name(), Data: data})
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// parse reads `go test fuzz v1` followed by one `[]byte("…")` line (the
// value quoted as with %q, which strconv.Unquote reverses).
func parse(text string) ([]byte, error) {
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if len(lines) != 2 || strings.TrimSpace(lines[0]) != header {
		return nil, fmt.Errorf("want %q and one []byte value", header)
	}
	v := strings.TrimSpace(lines[1])
	inner, ok := strings.CutPrefix(v, "[]byte(")
	if !ok || !strings.HasSuffix(inner, ")") {
		return nil, fmt.Errorf("value %q is not a []byte", v)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(inner, ")"))
	if err != nil {
		return nil, fmt.Errorf("value %q: %w", v, err)
	}
	return []byte(s), nil
}
