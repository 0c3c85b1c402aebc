// Package images builds kpo's container images without a container engine:
// Go binaries built for each architecture (static, CGO off), the agent's
// userland unpacked from Debian's packages (resolved and fetched by apt-get
// in a private configuration, so arm64 packages come to an amd64 host
// without touching its apt or dpkg state), assembled into layers with
// go-containerregistry and written as OCI image layouts, one multi-arch
// index per image. Layers are deterministic (sorted entries, root-owned,
// dated 1970), so the same sources and package versions give the same
// digests.
//
// The images:
//
//	kpo        what config/default deploys (the Dockerfile's image): /kpo-operator
//	           (the entrypoint; the image's user is 65532, non-root) and /kpo-agent,
//	           plus the userland the agent runs: iptables (nft and legacy), nft,
//	           ipset, conntrack
//	kpo-echo   the local cluster's demo app (hack/echoserver)
//	kpo-pause  the local nodes' sandbox image (hack/pause)
package images

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Tag is the tag of every image built here.
const Tag = "dev"

// Arches are the architectures built (all linux).
var Arches = []string{"amd64", "arm64"}

// Binary is a Go main package built into an image.
type Binary struct {
	Package string // relative to the repository, e.g. ./cmd/kpo-agent
	Path    string // in the image, e.g. /kpo-agent
}

// Spec says what an image holds.
type Spec struct {
	// Name is the repository name: images are named Name:Tag
	// (docker.io/library/Name:Tag once normalised, as kubelet does).
	Name     string
	Binaries []Binary
	// Debs are Debian packages unpacked (with their dependencies, without
	// recommends) into the image's first layer.
	Debs       []string
	Entrypoint []string
	User       string
	// Links are symbolic links made after the packages are unpacked: what
	// the packages' maintainer scripts would set up (update-alternatives).
	Links map[string]string
	// Dirs are empty directories the image needs (e.g. /run for the xtables lock).
	Dirs []string
}

// Ref is the image's reference as pods name it.
func (s Spec) Ref() string { return s.Name + ":" + Tag }

// FullRef is Ref normalised as containerd stores it.
func (s Spec) FullRef() string { return "docker.io/library/" + s.Ref() }

// AgentUserland are the Debian packages the agent runs: iptables-restore /
// -save in both flavours (iptables mode; the ipvs mode's companion chains),
// nft (nftables mode), ipset (ipvs mode); conntrack and ipvsadm (operators
// debugging a node expect them next to the agent), kmod (iptables-legacy
// runs modprobe for a table module the host has not loaded; the agent's
// DaemonSet mounts /lib/modules for it, docs/security.md), netbase
// (/etc/protocols, which iptables and nft read to print protocol names). The
// Dockerfile installs the same list.
var AgentUserland = []string{"iptables", "nftables", "ipset", "conntrack", "ipvsadm", "kmod", "netbase"}

// iptablesAlternatives are the links Debian's iptables postinst makes with
// update-alternatives: the plain names are the nf_tables flavour (Debian's
// default since buster).
var iptablesAlternatives = map[string]string{
	"/usr/sbin/iptables":          "iptables-nft",
	"/usr/sbin/iptables-save":     "iptables-nft-save",
	"/usr/sbin/iptables-restore":  "iptables-nft-restore",
	"/usr/sbin/ip6tables":         "ip6tables-nft",
	"/usr/sbin/ip6tables-save":    "ip6tables-nft-save",
	"/usr/sbin/ip6tables-restore": "ip6tables-nft-restore",
}

// Kpo is the image config/default deploys: the operator (entrypoint,
// non-root) and the agent (its DaemonSet runs it as root), as the Dockerfile
// builds it.
var Kpo = Spec{
	Name: "kpo",
	Binaries: []Binary{
		{Package: "./cmd/kpo-operator", Path: "/kpo-operator"},
		{Package: "./cmd/kpo-agent", Path: "/kpo-agent"},
	},
	Debs:       AgentUserland,
	Entrypoint: []string{"/kpo-operator"},
	User:       "65532:65532",
	Links:      iptablesAlternatives,
	Dirs:       []string{"/run", "/tmp", "/var/lib"},
}

// Echo is the demo app.
var Echo = Spec{
	Name:       "kpo-echo",
	Binaries:   []Binary{{Package: "./hack/echoserver", Path: "/echo"}},
	Entrypoint: []string{"/echo"},
	User:       "65532:65532",
}

// Pause is the local nodes' sandbox image: it holds each pod's namespaces.
var Pause = Spec{
	Name:       "kpo-pause",
	Binaries:   []Binary{{Package: "./hack/pause", Path: "/pause"}},
	Entrypoint: []string{"/pause"},
	User:       "65535:65535",
}

// All are the images `make images` builds.
var All = []Spec{Kpo, Echo, Pause}

// LayoutDir is where an image's OCI layout is written under out.
func LayoutDir(out string, s Spec) string { return filepath.Join(out, s.Name) }

// Result is one built image.
type Result struct {
	Spec Spec
	// Digest is the multi-arch index's digest; Manifests the per-arch manifests' digests.
	Digest    string
	Manifests map[string]string
	// Packages are the Debian packages per architecture.
	Packages map[string][]Package
}

// Summary is a one-line description (make images prints it; bin/images/digests.txt holds it).
func (r Result) Summary() string {
	var arches []string
	for _, a := range Arches {
		if d, ok := r.Manifests[a]; ok {
			arches = append(arches, fmt.Sprintf("linux/%s@%s", a, d))
		}
	}
	return fmt.Sprintf("%s@%s %s", r.Spec.Ref(), r.Digest, strings.Join(arches, " "))
}
