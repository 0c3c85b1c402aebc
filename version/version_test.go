package version_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kpo.dev/kpo/version"
)

// TestStampedBinaries builds both binaries with the stamp make uses and runs
// --version: each says the stamped version and commit (an unstamped build
// says dev).
func TestStampedBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds both binaries")
	}
	dir := t.TempDir()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	for _, bin := range []string{"kpo-agent", "kpo-operator"} {
		out := filepath.Join(dir, bin)
		build := exec.Command("go", "build", "-ldflags", version.LDFlags("v9.8.7-test", "abc123"), "-o", out, "./cmd/"+bin)
		build.Dir = root
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v: %s", bin, err, b)
		}
		got, err := exec.Command(out, "--version").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --version: %v: %s", bin, err, got)
		}
		if !strings.HasPrefix(string(got), bin+" v9.8.7-test (commit abc123, ") {
			t.Errorf("%s --version = %q", bin, got)
		}
	}
}

func TestUnstamped(t *testing.T) {
	if version.Get() != "dev" {
		t.Errorf("an unstamped build says %q, want dev", version.Get())
	}
	if s := version.String("x"); !strings.HasPrefix(s, "x dev (commit ") {
		t.Errorf("String = %q", s)
	}
}
