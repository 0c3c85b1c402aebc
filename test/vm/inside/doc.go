// Package inside holds the IPVS backend's real-kernel tests. They are built
// only with the build tag vmtest and run only inside the VM of test/vm: they
// need IPVS, which this project's machines lack. This file keeps the package
// non-empty for go vet and go build without the tag.
package inside
