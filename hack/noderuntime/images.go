package noderuntime

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Image is what the runtime runs for a container image: a directory standing
// in for the image's file system (a command "/kpo-agent" runs Dir/kpo-agent)
// and the image's entrypoint, used when the container sets no command.
type Image struct {
	Dir        string
	Entrypoint []string
}

// Images maps an image's repository name, without registry and tag
// ("registry.example/kpo:v0.1.0" → "kpo"), to local binaries.
type Images map[string]Image

// lookup finds the image for a container's image reference.
func (im Images) lookup(ref string) (Image, error) {
	name := ref
	if i := strings.LastIndex(name, "@"); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndex(name, "/"); i >= 0 {
		name = name[i+1:]
	}
	if i := strings.LastIndex(name, ":"); i >= 0 {
		name = name[:i]
	}
	img, ok := im[name]
	if !ok {
		known := make([]string, 0, len(im))
		for k := range im {
			known = append(known, k)
		}
		slices.Sort(known)
		return Image{}, fmt.Errorf("no local binaries for image %q (this node runtime knows: %s)", ref, strings.Join(known, ", "))
	}
	return img, nil
}

// executable resolves a command's first word inside the image: absolute paths
// are taken relative to the image directory, bare names are looked up there.
func (img Image) executable(name string) (string, error) {
	p := filepath.Join(img.Dir, filepath.Clean("/"+name))
	st, err := os.Stat(p)
	if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("executable %q not found in the image (looked for %s)", name, p)
	}
	return p, nil
}
