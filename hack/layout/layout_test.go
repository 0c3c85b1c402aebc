// Package layout holds a test of the repository's layout: hack/ holds the
// tools and the local cluster, test/ the test harnesses, and imports go one
// way, from test/ to hack/, never back (docs/design.md).
package layout

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestHackDoesNotImportTest(t *testing.T) {
	const testTree = "kpo.dev/kpo/test/"
	checked := 0
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); strings.HasPrefix(p, testTree) {
				t.Errorf("%s imports %s: hack/ must not import test/ (move what both need into hack/)", path, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 20 {
		t.Fatalf("only %d Go files under hack/: the walk did not find the tree", checked)
	}
}
