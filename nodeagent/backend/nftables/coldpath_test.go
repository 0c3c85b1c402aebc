package nftables

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeNFT puts an nft on PATH that logs its arguments and reports version.
func fakeNFT(t *testing.T, version string) (logFile string) {
	t.Helper()
	dir := t.TempDir()
	logFile = filepath.Join(dir, "log")
	script := "#!/bin/sh\necho \"$*\" >> " + logFile + "\n" +
		"if [ \"$1\" = --version ]; then echo '" + version + "'; exit 0; fi\nwhile read -r _; do :; done\n"
	if err := os.WriteFile(filepath.Join(dir, "nft"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	return logFile
}

func nftCalls(t *testing.T, logFile string) []string {
	t.Helper()
	b, err := os.ReadFile(logFile)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// TestNewRunsNoNFT: making the backend runs no nft (knftables.New ran
// `nft --version` and `nft --check` there, on the path of every cold
// start); Check asks the version once, then only checks.
func TestNewRunsNoNFT(t *testing.T) {
	log := fakeNFT(t, "nftables v1.0.6 (Lester Gooch #5)")
	b, err := New(testSettings, nil)
	if err != nil {
		t.Fatal(err)
	}
	if calls := nftCalls(t, log); len(calls) != 0 {
		t.Fatalf("New ran nft: %q", calls)
	}
	for range 2 {
		if err := b.Check(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"--version", "--check -f -", "--check -f -"}
	if calls := nftCalls(t, log); strings.Join(calls, "|") != strings.Join(want, "|") {
		t.Errorf("nft ran %q, want %q", calls, want)
	}
}

// TestCheckRefusesOldNFT: nft before 1.0.1 is refused at Check, as
// knftables.New refused it.
func TestCheckRefusesOldNFT(t *testing.T) {
	for _, v := range []string{"nftables v0.9.8 (E.D.S.)", "nftables v1.0.0 (Fearless Fosdick #2)"} {
		fakeNFT(t, v)
		b, err := New(testSettings, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "v1.0.1 or later") {
			t.Errorf("%s: Check gave %v", v, err)
		}
	}
}
