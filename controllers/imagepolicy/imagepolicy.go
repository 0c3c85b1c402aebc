// Package imagepolicy decides which images the operator may run as the node
// agent: a privileged, host-network root pod on every selected node. Whoever
// may create a ProxyConfiguration names spec.agent.image; without this policy
// that would be anyone's code as root on every node.
//
// The operator's own agent image (the default) is always allowed, pinned by
// digest when the operator knows the digest. The allow-list
// (--agent-image-allow) adds entries of four forms, matched on the fully
// qualified reference (docker.io/library/... for Docker Hub names):
//
//	sha256:<hex>               any repository, by this digest only
//	registry.example/kpo@sha256:<hex>, registry.example/kpo:v1   this exact reference
//	registry.example/kpo       this repository, any tag or digest
//	registry.example/team/     every repository under this path (ends in "/")
//
// An image named by tag never matches a digest entry: what a tag points to is
// only known when a node pulls it.
package imagepolicy

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// Flag is the operator flag that extends the policy; messages name it.
const Flag = "--agent-image-allow"

// Policy is the set of images allowed to run as the node agent.
type Policy struct {
	defaultImage string
	rules        []rule
}

type rule struct {
	entry string
	match func(reference.Named) bool
}

// New builds the policy. defaultImage is the operator's agent image; pinned,
// when not empty, is the same image by digest (see Pinned), which then is
// the default. allow are the allow-list entries.
func New(defaultImage, pinned string, allow []string) (*Policy, error) {
	p := &Policy{defaultImage: defaultImage}
	for _, own := range []string{defaultImage, pinned} {
		if own == "" {
			continue
		}
		named, err := reference.ParseNormalizedNamed(own)
		if err != nil {
			return nil, fmt.Errorf("agent image %q: %w", own, err)
		}
		p.rules = append(p.rules, exact(own, named))
		if own == pinned {
			p.defaultImage = pinned
		}
	}
	for _, entry := range allow {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		r, err := parseRule(entry)
		if err != nil {
			return nil, fmt.Errorf("%s entry %q: %w", Flag, entry, err)
		}
		p.rules = append(p.rules, r)
	}
	return p, nil
}

func parseRule(entry string) (rule, error) {
	if strings.HasPrefix(entry, digest.Canonical.String()+":") {
		d, err := digest.Parse(entry)
		if err != nil {
			return rule{}, err
		}
		return rule{entry, func(n reference.Named) bool {
			c, ok := n.(reference.Canonical)
			return ok && c.Digest() == d
		}}, nil
	}
	if prefix, ok := strings.CutSuffix(entry, "/"); ok {
		// Parsed to refuse what is no repository path; compared as written,
		// on a "/" boundary, so registry.example/team/ never allows
		// registry.example/team-b/x.
		if _, err := reference.ParseNamed(prefix + "/x"); err != nil {
			return rule{}, fmt.Errorf("a prefix must be a fully qualified repository path ending in \"/\": %w", err)
		}
		return rule{entry, func(n reference.Named) bool { return strings.HasPrefix(n.Name(), entry) }}, nil
	}
	named, err := reference.ParseNormalizedNamed(entry)
	if err != nil {
		return rule{}, err
	}
	if reference.IsNameOnly(named) {
		return rule{entry, func(n reference.Named) bool { return n.Name() == named.Name() }}, nil
	}
	return exact(entry, named), nil
}

// exact matches the same repository and digest, or, for a reference by tag
// only, the same repository and tag. A candidate that carries a digest runs
// that digest whatever its tag says, so only digests are compared then.
func exact(entry string, want reference.Named) rule {
	return rule{entry, func(n reference.Named) bool {
		if n.Name() != want.Name() {
			return false
		}
		if wc, ok := want.(reference.Canonical); ok {
			c, ok := n.(reference.Canonical)
			return ok && c.Digest() == wc.Digest()
		}
		if _, ok := n.(reference.Canonical); ok {
			return false
		}
		return tagOf(n) == tagOf(want)
	}}
}

func tagOf(n reference.Named) string {
	if t, ok := reference.TagNameOnly(n).(reference.Tagged); ok {
		return t.Tag()
	}
	return ""
}

// Default is the image rendered when a ProxyConfiguration names none.
func (p *Policy) Default() string { return p.defaultImage }

// Entries are the policy's entries, the operator's own image first.
func (p *Policy) Entries() []string {
	out := make([]string, 0, len(p.rules))
	for _, r := range p.rules {
		out = append(out, r.entry)
	}
	return out
}

// Check returns nil if image may run as the node agent, and a
// *NotAllowedError otherwise.
func (p *Policy) Check(image string) error {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return &NotAllowedError{Image: image, Allowed: p.Entries(), Cause: err}
	}
	for _, r := range p.rules {
		if r.match(named) {
			return nil
		}
	}
	return &NotAllowedError{Image: image, Allowed: p.Entries()}
}

// NotAllowedError refuses an agent image.
type NotAllowedError struct {
	Image   string
	Allowed []string
	// Cause is set when the image is no valid reference.
	Cause error
}

func (e *NotAllowedError) Error() string {
	why := "is not allowed"
	if e.Cause != nil {
		why = fmt.Sprintf("is no valid image reference (%v)", e.Cause)
	}
	return fmt.Sprintf("spec.agent.image %q %s by the operator's agent image policy, which allows %s "+
		"(the operator's own image, and %s entries); nothing is rendered for this spec",
		e.Image, why, strings.Join(e.Allowed, ", "), Flag)
}

// Reason is the condition reason of the refusal.
func (e *NotAllowedError) Reason() string { return kpov1.ReasonImageNotAllowed }

// Pinned returns image by the digest in imageID (a container status's
// imageID, such as docker.io/library/kpo@sha256:..., possibly behind a
// "scheme://"), when imageID names the same repository by digest. An image
// ID that is only a local image's config digest pins nothing.
func Pinned(image, imageID string) (string, bool) {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return "", false
	}
	if _, id, ok := strings.Cut(imageID, "://"); ok {
		imageID = id
	}
	ran, err := reference.ParseNormalizedNamed(imageID)
	if err != nil {
		return "", false
	}
	c, ok := ran.(reference.Canonical)
	if !ok || ran.Name() != named.Name() {
		return "", false
	}
	pinned, err := reference.WithDigest(reference.TrimNamed(named), c.Digest())
	if err != nil {
		return "", false
	}
	return reference.FamiliarString(pinned), true
}
