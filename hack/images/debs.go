package images

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// aptRoot is a private apt configuration for one architecture: its own
// package lists, cache and an empty dpkg status, with the host's Debian
// sources. Nothing of the host's apt or dpkg state is read or changed, so
// arm64 packages can be resolved on an amd64 host without
// `dpkg --add-architecture`.
type aptRoot struct {
	dir  string
	arch string
}

// debianSourceFiles are the host's apt source files that name Debian's own
// archive (signed by the Debian archive keyring); third-party sources are left out.
func debianSourceFiles() ([]string, error) {
	var files []string
	candidates, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	candidates = append([]string{"/etc/apt/sources.list"}, candidates...)
	for _, f := range candidates {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if bytes.Contains(data, []byte("debian-archive-keyring")) && (strings.HasSuffix(f, ".list") || strings.HasSuffix(f, ".sources")) {
			files = append(files, f)
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no apt source signed by the Debian archive keyring under /etc/apt: the agent's userland comes from Debian's packages")
	}
	return files, nil
}

func newAptRoot(dir, arch string) (*aptRoot, error) {
	r := &aptRoot{dir: dir, arch: arch}
	for _, d := range []string{"lists/partial", "archives/partial", "sources.list.d", "preferences.d"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	sources, err := debianSourceFiles()
	if err != nil {
		return nil, err
	}
	for _, f := range sources {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, "sources.list.d", filepath.Base(f)), data, 0o644); err != nil {
			return nil, err
		}
	}
	for _, empty := range []string{"status", "sources.list", "preferences"} {
		if err := os.WriteFile(filepath.Join(dir, empty), nil, 0o644); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func (r *aptRoot) options() []string {
	return []string{
		"-o", "APT::Architecture=" + r.arch,
		"-o", "APT::Architectures::=" + r.arch,
		"-o", "Dir::State=" + r.dir,
		"-o", "Dir::State::Lists=" + filepath.Join(r.dir, "lists"),
		"-o", "Dir::State::status=" + filepath.Join(r.dir, "status"),
		"-o", "Dir::Cache=" + r.dir,
		"-o", "Dir::Cache::Archives=" + filepath.Join(r.dir, "archives"),
		"-o", "Dir::Etc::SourceList=" + filepath.Join(r.dir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=" + filepath.Join(r.dir, "sources.list.d"),
		"-o", "Dir::Etc::Preferences=" + filepath.Join(r.dir, "preferences"),
		"-o", "Dir::Etc::PreferencesParts=" + filepath.Join(r.dir, "preferences.d"),
		"-o", "Debug::NoLocking=1",
		"-o", "APT::Install-Recommends=false",
		"-o", "APT::Sandbox::User=root",
	}
}

func (r *aptRoot) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "apt-get", append(r.options(), args...)...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("apt-get %s (%s): %w: %s", strings.Join(args, " "), r.arch, err, out)
	}
	return string(out), nil
}

// Package is one Debian package in an image.
type Package struct {
	Name, Version, Arch string
	file                string
}

// fetch downloads packages and everything they depend on (no recommends)
// into the root's cache and returns them. The package lists are fetched
// once (the first build) and then kept, so later builds resolve the same
// versions and produce the same digests; refresh fetches them again.
func (r *aptRoot) fetch(ctx context.Context, packages []string, refresh bool) ([]Package, error) {
	lists, _ := filepath.Glob(filepath.Join(r.dir, "lists", "*Packages*"))
	if refresh || len(lists) == 0 {
		if _, err := r.run(ctx, "update"); err != nil {
			return nil, err
		}
	}
	// An empty status file: apt resolves the whole dependency closure. The
	// simulation lists every package ("Inst name (version suite [arch])"),
	// fetched before or not.
	out, err := r.run(ctx, append([]string{"install", "--download-only", "-y", "--simulate"}, packages...)...)
	if err != nil {
		return nil, err
	}
	inst := regexp.MustCompile(`^Inst (\S+) \((\S+) .*\[(\S+)\]\)`)
	var pkgs []Package
	for _, line := range strings.Split(out, "\n") {
		if m := inst.FindStringSubmatch(line); m != nil {
			file := fmt.Sprintf("%s_%s_%s.deb", m[1], strings.ReplaceAll(m[2], ":", "%3a"), m[3])
			pkgs = append(pkgs, Package{Name: m[1], Version: m[2], Arch: m[3], file: filepath.Join(r.dir, "archives", file)})
		}
	}
	if len(pkgs) == 0 {
		return nil, fmt.Errorf("apt-get resolved no packages for %v (%s): %s", packages, r.arch, out)
	}
	if _, err := r.run(ctx, append([]string{"install", "--download-only", "-y"}, packages...)...); err != nil {
		return nil, err
	}
	for _, p := range pkgs {
		if _, err := os.Stat(p.file); err != nil {
			return nil, fmt.Errorf("%s %s (%s) was not downloaded: %w", p.Name, p.Version, p.Arch, err)
		}
	}
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].Name < pkgs[j].Name })
	return slices.CompactFunc(pkgs, func(a, b Package) bool { return a.Name == b.Name }), nil
}
