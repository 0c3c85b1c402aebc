package imagepolicy

import (
	"errors"
	"strings"
	"testing"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

const (
	digestA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	digestB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func TestCheck(t *testing.T) {
	p, err := New("registry.example/kpo:v0.1.0", "", []string{
		digestB,
		"registry.example/pinned@" + digestA,
		"registry.example/tagged:v2",
		"registry.example/any",
		"registry.example/team/",
		"mirror", // Docker Hub's library/mirror
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		image string
		allow bool
	}{
		// The operator's own image, however it is spelled.
		{"registry.example/kpo:v0.1.0", true},
		{"registry.example/kpo:v0.1.1", false},
		{"registry.example/kpo", false}, // :latest
		// A tag with a digest runs the digest: the own image's tag does not vouch for it.
		{"registry.example/kpo:v0.1.0@" + digestA, false},
		// Digest entries.
		{"elsewhere.example/x@" + digestB, true},
		{"elsewhere.example/x:tag@" + digestB, true},
		{"elsewhere.example/x@" + digestA, false},
		// Exact entries.
		{"registry.example/pinned@" + digestA, true},
		{"registry.example/pinned:v1@" + digestA, true},
		{"registry.example/pinned@" + digestB, true}, // by the digest entry
		{"registry.example/pinned:v1", false},
		{"registry.example/tagged:v2", true},
		{"registry.example/tagged:v3", false},
		{"registry.example/tagged@" + digestA, false},
		// Repository entries: any tag or digest, no other repository.
		{"registry.example/any:whatever", true},
		{"registry.example/any@" + digestA, true},
		{"registry.example/anyone:v1", false},
		{"registry.example/any/sub:v1", false},
		// Prefix entries, on a "/" boundary.
		{"registry.example/team/agent:v1", true},
		{"registry.example/team/deep/agent@" + digestA, true},
		{"registry.example/team-b/agent:v1", false},
		{"registry.example/teamagent:v1", false},
		// Docker Hub names are normalised on both sides.
		{"mirror:1", true},
		{"docker.io/library/mirror:1", true},
		{"docker.io/someone/mirror:1", false},
		// Not a reference at all.
		{"Registry.Example/UPPER:v1", false},
		{"", false},
	} {
		err := p.Check(tc.image)
		if (err == nil) != tc.allow {
			t.Errorf("Check(%q) = %v, want allowed=%v", tc.image, err, tc.allow)
		}
		var refused *NotAllowedError
		if err != nil && !errors.As(err, &refused) {
			t.Errorf("Check(%q) returned %T, want *NotAllowedError", tc.image, err)
		}
	}
}

func TestRefusalNamesThePolicy(t *testing.T) {
	p, err := New("kpo:dev", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	err = p.Check("attacker.example/root-shell:latest")
	var refused *NotAllowedError
	if !errors.As(err, &refused) {
		t.Fatalf("got %v", err)
	}
	if refused.Reason() != kpov1.ReasonImageNotAllowed {
		t.Errorf("reason %q", refused.Reason())
	}
	for _, want := range []string{"attacker.example/root-shell:latest", "agent image policy", Flag, "kpo:dev", "nothing is rendered"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not name %q", err, want)
		}
	}
}

func TestPinnedDefault(t *testing.T) {
	pinned, ok := Pinned("registry.example/kpo:v0.1.0", "registry.example/kpo@"+digestA)
	if !ok || pinned != "registry.example/kpo@"+digestA {
		t.Fatalf("Pinned = %q, %v", pinned, ok)
	}
	p, err := New("registry.example/kpo:v0.1.0", pinned, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Default() != pinned {
		t.Errorf("default %q, want the pinned %q", p.Default(), pinned)
	}
	for _, img := range []string{pinned, "registry.example/kpo:v0.1.0"} {
		if err := p.Check(img); err != nil {
			t.Errorf("%s: %v", img, err)
		}
	}
	if err := p.Check("registry.example/kpo@" + digestB); err == nil {
		t.Error("another digest of the own repository is allowed")
	}
}

func TestPinned(t *testing.T) {
	for _, tc := range []struct {
		image, imageID, want string
	}{
		{"kpo:dev", "docker.io/library/kpo@" + digestA, "kpo@" + digestA},
		{"kpo:dev", "docker-pullable://kpo@" + digestA, "kpo@" + digestA},
		{"registry.example:5000/kpo:dev", "registry.example:5000/kpo@" + digestA, "registry.example:5000/kpo@" + digestA},
		// A local image's config digest, another repository, no digest at all: nothing to pin.
		{"kpo:dev", digestA, ""},
		{"kpo:dev", "docker.io/library/other@" + digestA, ""},
		{"kpo:dev", "kpo-noderuntime://kpo", ""},
		{"kpo:dev", "", ""},
	} {
		got, ok := Pinned(tc.image, tc.imageID)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("Pinned(%q, %q) = %q, %v; want %q", tc.image, tc.imageID, got, ok, tc.want)
		}
	}
}

func TestBadEntriesAreRefused(t *testing.T) {
	for _, entry := range []string{"sha256:short", "registry.example/UPPER", "registry.example/Team/", "kpo:bad tag"} {
		if _, err := New("kpo:dev", "", []string{entry}); err == nil || !strings.Contains(err.Error(), Flag) {
			t.Errorf("entry %q: error %v, want a refusal naming %s", entry, err, Flag)
		}
	}
}
