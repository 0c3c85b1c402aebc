package fuzzcorpus

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	want := []byte("a\x00\xff\"\n")
	files := map[string]string{
		"b": "go test fuzz v1\n[]byte(\"a\\x00\\xff\\\"\\n\")\n",
		"a": "go test fuzz v1\n[]byte(\"\")\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Read(dir)
	if err != nil || len(got) != 2 || got[0].Name != "a" || len(got[0].Data) != 0 || string(got[1].Data) != string(want) {
		t.Fatalf("Read: %+v, %v", got, err)
	}
	for _, bad := range []string{"go test fuzz v2\n[]byte(\"\")\n", "go test fuzz v1\nint(3)\n", "go test fuzz v1\n[]byte(\"x\")\n[]byte(\"y\")\n"} {
		if err := os.WriteFile(filepath.Join(dir, "c"), []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Read(dir); err == nil {
			t.Errorf("Read accepted %q", bad)
		}
	}
}
