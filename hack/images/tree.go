package images

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"
	"time"
)

// epoch is every file's modification time in the images (and the images'
// creation time): the same inputs give the same layers, byte for byte.
var epoch = time.Unix(0, 0).UTC()

// tree is a layer's file system, written as a tar stream with its entries
// sorted, parents before children, owned by root and dated epoch.
type tree struct {
	entries map[string]*tar.Header
	data    map[string][]byte
}

func newTree() *tree { return &tree{entries: map[string]*tar.Header{}, data: map[string][]byte{}} }

// usrMerged maps the top-level directories Debian bookworm merges into /usr
// (its default for new systems): packages still ship files under /lib or
// /sbin, which land under /usr, and the top-level names become links.
var usrMerged = []string{"bin", "sbin", "lib", "lib64"}

// skipped are package paths an image does not need (documentation, manual
// pages, translations): smaller layers, nothing the agent runs.
var skipped = []string{"usr/share/doc/", "usr/share/man/", "usr/share/locale/", "usr/share/info/", "usr/share/lintian/", "usr/share/bug/"}

// skippedDirs are directories skipped wherever they are: glibc's iconv
// converters for legacy character sets (8 MB; nothing in the image converts
// text).
var skippedDirs = []string{"/gconv/"}

func clean(name string) string {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	for _, d := range usrMerged {
		if name == d || strings.HasPrefix(name, d+"/") {
			return "usr/" + name
		}
	}
	return name
}

func (t *tree) dir(name string, mode int64) {
	name = clean(name)
	if name == "" || name == "." {
		return
	}
	t.dir(path.Dir(name), 0o755)
	if _, ok := t.entries[name]; !ok {
		t.entries[name] = &tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}
	}
}

func (t *tree) file(name string, mode int64, data []byte) {
	name = clean(name)
	t.dir(path.Dir(name), 0o755)
	t.entries[name] = &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}
	t.data[name] = data
}

func (t *tree) symlink(name, target string) {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	t.dir(path.Dir(name), 0o755)
	t.entries[name] = &tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}
}

// addDeb unpacks a Debian package's files (no maintainer scripts run).
func (t *tree) addDeb(ctx context.Context, debFile string) error {
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", debFile)
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w", debFile, err)
	}
	tr := tar.NewReader(bytes.NewReader(out))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", debFile, err)
		}
		name := clean(h.Name)
		if name == "" || skip(name) {
			continue
		}
		mode := h.Mode & 0o7777
		switch h.Typeflag {
		case tar.TypeDir:
			t.dir(name, mode)
		case tar.TypeReg:
			data, err := io.ReadAll(tr)
			if err != nil {
				return err
			}
			t.file(name, mode, data)
		case tar.TypeSymlink:
			t.symlink(name, h.Linkname)
		case tar.TypeLink:
			// A hard link inside one package: a copy of its target.
			target := clean(h.Linkname)
			data, ok := t.data[target]
			if !ok {
				return fmt.Errorf("%s: hard link %s to %s, which is not unpacked", debFile, name, target)
			}
			t.file(name, t.entries[target].Mode, data)
		default:
			return fmt.Errorf("%s: %s has unsupported type %c", debFile, name, h.Typeflag)
		}
	}
}

func skip(name string) bool {
	for _, p := range skipped {
		if strings.HasPrefix(name+"/", p) {
			return true
		}
	}
	for _, d := range skippedDirs {
		if strings.Contains("/"+name+"/", d) {
			return true
		}
	}
	return false
}

// addFile copies a file of the host (a built binary).
func (t *tree) addFile(name, src string, mode int64) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	t.file(name, mode, data)
	return nil
}

// tar writes the tree as an uncompressed tar stream.
func (t *tree) tar() ([]byte, error) {
	names := make([]string, 0, len(t.entries))
	for n := range t.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		h := *t.entries[n]
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "root", "root"
		h.ModTime, h.AccessTime, h.ChangeTime = epoch, time.Time{}, time.Time{}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return nil, err
		}
		if d := t.data[n]; d != nil {
			if _, err := tw.Write(d); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
