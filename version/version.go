// Package version holds kpo's version, stamped into both binaries at build
// time (make build, make images, make release, the Dockerfile):
//
//	go build -ldflags "-X kpo.dev/kpo/version.Version=v0.1.0 -X kpo.dev/kpo/version.Commit=<sha>"
//
// An unstamped build (go build, go test) says "dev" and takes the commit from
// the module's VCS information when Go recorded it.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is the release, such as v0.1.0; "dev" when not stamped.
var Version = "dev"

// Commit is the source revision; empty when neither stamped nor recorded by Go.
var Commit = ""

// Get is Version (the string agents report as agentVersion and User-Agents carry).
func Get() string { return Version }

// Revision is Commit, or the revision Go recorded in the binary (go build in a
// git checkout), or "unknown".
func Revision() string {
	if Commit != "" {
		return Commit
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// String is what --version prints: the program, the version, the commit, Go and the platform.
func String(program string) string {
	return fmt.Sprintf("%s %s (commit %s, %s, %s/%s)", program, Version, Revision(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// LDFlags are the -ldflags that stamp version and commit (make and hack/images use them).
func LDFlags(version, commit string) string {
	return fmt.Sprintf("-X kpo.dev/kpo/version.Version=%s -X kpo.dev/kpo/version.Commit=%s", version, commit)
}
