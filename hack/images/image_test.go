package images

import (
	"archive/tar"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
)

// builtImages is where `make images` writes; the tests check what it built.
func builtImages(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(apiserver.RepoRoot(), "bin", "images")
	if _, err := os.Stat(filepath.Join(dir, Kpo.Name, "index.json")); err != nil {
		t.Skipf("no images in %s: run `make images` (make test does)", dir)
	}
	return dir
}

// platformImage reads one architecture's image out of an image's layout.
func platformImage(t *testing.T, dir string, s Spec, arch string) v1.Image {
	t.Helper()
	top, err := layout.ImageIndexFromPath(LayoutDir(dir, s))
	if err != nil {
		t.Fatal(err)
	}
	im, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations["io.containerd.image.name"] != s.FullRef() {
		t.Fatalf("%s: index.json should name one multi-arch index %s: %+v", s.Name, s.FullRef(), im.Manifests)
	}
	idx, err := top.ImageIndex(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range m.Manifests {
		if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == arch {
			img, err := idx.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Architecture != arch || cfg.OS != "linux" {
				t.Fatalf("%s %s: the config says %s/%s", s.Name, arch, cfg.OS, cfg.Architecture)
			}
			return img
		}
	}
	t.Fatalf("%s: no linux/%s image in %+v", s.Name, arch, m.Manifests)
	return nil
}

// unpack writes an image's flattened file system into dir.
func unpack(t *testing.T, img v1.Image, dir string) {
	t.Helper()
	rc := mutate.Extract(img)
	defer func() { _ = rc.Close() }()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(dir, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(target, os.FileMode(h.Mode)&os.ModePerm)
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, target)
		case tar.TypeReg:
			var f *os.File
			if f, err = os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&os.ModePerm); err == nil {
				_, err = io.Copy(f, tr)
				err = errors.Join(err, f.Close())
			}
		default:
			err = fmt.Errorf("unexpected type %c", h.Typeflag)
		}
		if err != nil {
			t.Fatalf("unpacking %s: %v", h.Name, err)
		}
	}
}

// TestAgentUserlandRunsFromTheImage unpacks the amd64 kpo image and runs
// the userland the agent execs from that root (chroot), in a network
// namespace of its own: both iptables flavours and both families (a chain,
// and a restore with the tcp match and DNAT, as the agent writes them), nft
// (a nat table, from a script on stdin), ipset, conntrack, modprobe, ipvsadm
// and the two binaries. A missing binary, library or extension fails it.
func TestAgentUserlandRunsFromTheImage(t *testing.T) {
	netns.Skip(t)
	dir := builtImages(t)
	root := t.TempDir()
	unpack(t, platformImage(t, dir, Kpo, "amd64"), root)
	ns := netns.New(t, "image")
	run := func(stdin, name string, args ...string) string {
		t.Helper()
		cmd := ns.Command("chroot", append([]string{root, name}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s (from the image): %v: %s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, flavour := range []string{"nft", "legacy"} {
			bin := fam + "-" + flavour
			dst := "10.244.1.2:80"
			if fam == "ip6tables" {
				dst = "[fd10:244:0:1::2]:80"
			}
			run("", bin, "-t", "nat", "-N", "KPO-IMAGE-TEST")
			run("*nat\n:KPO-IMAGE-SVC - [0:0]\n-A KPO-IMAGE-SVC -p tcp -m tcp --dport 80 -j DNAT --to-destination "+dst+"\nCOMMIT\n",
				bin+"-restore", "--noflush")
			out := run("", bin+"-save", "-t", "nat")
			if !strings.Contains(out, ":KPO-IMAGE-TEST") || !strings.Contains(out, "--to-destination "+dst) {
				t.Errorf("%s-save does not show what was written:\n%s", bin, out)
			}
		}
	}
	if out := run("", "iptables", "-V"); !strings.Contains(out, "nf_tables") {
		t.Errorf("the plain iptables should be the nf_tables flavour (Debian's default): %s", out)
	}
	run("table ip kpo {\n chain services {\n  type nat hook prerouting priority -100;\n  ip daddr 10.96.0.10 tcp dport 80 dnat to 10.244.1.2:8080\n }\n}\n", "nft", "-f", "-")
	if out := run("", "nft", "list", "table", "ip", "kpo"); !strings.Contains(out, "dnat to 10.244.1.2:8080") {
		t.Errorf("nft list does not show the rule:\n%s", out)
	}
	run("", "ipset", "create", "KPO-IMAGE-TEST", "hash:ip,port")
	if out := run("", "ipset", "list", "-n"); !strings.Contains(out, "KPO-IMAGE-TEST") {
		t.Errorf("ipset list: %s", out)
	}
	run("", "conntrack", "-L")
	run("", "modprobe", "-V")
	// ipvsadm starts (its libraries load) and reaches the kernel, which here may lack IPVS.
	cmd := ns.Command("chroot", root, "ipvsadm", "-L", "-n")
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin"}
	if out, err := cmd.CombinedOutput(); err != nil {
		if ok, _ := netns.KernelHasIPVS(); ok || !strings.Contains(string(out), "Can't initialize ipvs") {
			t.Errorf("ipvsadm -L -n from the image: %v: %s", err, out)
		}
	}
	for _, bin := range []string{"/kpo-agent", "/kpo-operator"} {
		cmd := ns.Command("chroot", root, bin, "-h")
		out, _ := cmd.CombinedOutput() // -h exits 0 or 2 by flag package version; the usage text is what counts
		if !strings.Contains(string(out), "Usage") {
			t.Errorf("%s -h from the image: %s", bin, out)
		}
	}
}

// TestImagesHoldTheirArchitecture checks every ELF file of every image, for
// both architectures (arm64 cannot run here): it is built for the image's
// machine, its interpreter is in the image, and each library it needs is in
// the image's library directories.
func TestImagesHoldTheirArchitecture(t *testing.T) {
	dir := builtImages(t)
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	triplets := map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
	for _, s := range All {
		for _, arch := range Arches {
			t.Run(s.Name+"/"+arch, func(t *testing.T) {
				root := t.TempDir()
				unpack(t, platformImage(t, dir, s, arch), root)
				libDirs := []string{"usr/lib/" + triplets[arch], "usr/lib", "usr/lib/" + triplets[arch] + "/xtables"}
				checked := 0
				err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
					if err != nil || !d.Type().IsRegular() {
						return err
					}
					f, err := elf.Open(p)
					if err != nil {
						return nil // not an ELF file
					}
					defer func() { _ = f.Close() }()
					rel, _ := filepath.Rel(root, p)
					checked++
					if f.Machine != machines[arch] {
						t.Errorf("%s is built for %v, want %v", rel, f.Machine, machines[arch])
					}
					for _, prog := range f.Progs {
						if prog.Type == elf.PT_INTERP {
							interp, _ := io.ReadAll(prog.Open())
							if !exists(root, strings.TrimRight(string(interp), "\x00")) {
								t.Errorf("%s: interpreter %s is not in the image", rel, interp)
							}
						}
					}
					libs, _ := f.ImportedLibraries()
					for _, lib := range libs {
						found := exists(root, path.Join("/", path.Dir(filepath.ToSlash(rel)), lib)) // $ORIGIN
						for _, d := range libDirs {
							found = found || exists(root, path.Join("/", d, lib))
						}
						if !found {
							t.Errorf("%s needs %s, which is not in the image", rel, lib)
						}
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				if checked == 0 {
					t.Fatal("no ELF file in the image")
				}
			})
		}
	}
}

// exists resolves name inside root (following the image's own links).
func exists(root, name string) bool {
	for range 16 {
		p := filepath.Join(root, name)
		st, err := os.Lstat(p)
		if err != nil {
			// A parent may be a link (lib -> usr/lib): resolve the parents too.
			dir, base := path.Split(name)
			if dir == "/" || dir == "" {
				return false
			}
			d := strings.TrimSuffix(dir, "/")
			if st, err := os.Lstat(filepath.Join(root, d)); err == nil && st.Mode()&os.ModeSymlink != 0 {
				target, _ := os.Readlink(filepath.Join(root, d))
				if !path.IsAbs(target) {
					target = path.Join(path.Dir(d), target)
				}
				name = path.Join(target, base)
				continue
			}
			return false
		}
		if st.Mode()&os.ModeSymlink == 0 {
			return true
		}
		target, _ := os.Readlink(p)
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(name), target)
		}
		name = target
	}
	return false
}

// TestBuildIsReproducible: the layers of the same tree are the same bytes
// (sorted entries, fixed owner and time), whatever order files were added in.
func TestBuildIsReproducible(t *testing.T) {
	a, b := newTree(), newTree()
	a.file("usr/sbin/x", 0o755, []byte("x"))
	a.symlink("sbin", "usr/sbin")
	a.file("/lib/y.so", 0o644, []byte("y"))
	b.file("lib/y.so", 0o644, []byte("y"))
	b.symlink("sbin", "usr/sbin")
	b.file("usr/sbin/x", 0o755, []byte("x"))
	ta, err := a.tar()
	if err != nil {
		t.Fatal(err)
	}
	tb, err := b.tar()
	if err != nil {
		t.Fatal(err)
	}
	if string(ta) != string(tb) {
		t.Fatal("the same tree gave different layers")
	}
	// /lib is merged into /usr/lib (bookworm's merged /usr).
	if _, ok := a.entries["usr/lib/y.so"]; !ok {
		t.Fatalf("lib/y.so should land in usr/lib: %v", a.entries)
	}
}

// TestImageIsStamped: the kpo image's labels name its version and revision,
// and both binaries in it print the same with --version (make images stamps
// them from VERSION and the git commit).
func TestImageIsStamped(t *testing.T) {
	dir := builtImages(t)
	img := platformImage(t, dir, Kpo, "amd64")
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	ver, rev := cfg.Config.Labels["org.opencontainers.image.version"], cfg.Config.Labels["org.opencontainers.image.revision"]
	if ver == "" || rev == "" {
		t.Fatalf("labels %v: want org.opencontainers.image.version and .revision (make images stamps them)", cfg.Config.Labels)
	}
	root := t.TempDir()
	unpack(t, img, root)
	for _, bin := range []string{"kpo-agent", "kpo-operator"} {
		out, err := exec.Command(filepath.Join(root, bin), "--version").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --version: %v: %s", bin, err, out)
		}
		if want := fmt.Sprintf("%s %s (commit %s, ", bin, ver, rev); !strings.HasPrefix(string(out), want) {
			t.Errorf("%s --version = %q, want it to start with %q (the image's labels)", bin, out, want)
		}
	}
}
