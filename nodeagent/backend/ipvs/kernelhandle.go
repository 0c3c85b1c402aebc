package ipvs

// NewKernelHandle opens the real IPVS netlink Handle in the calling thread's
// network namespace, for tests that hold FakeHandle to the kernel
// (test/vm/inside, TestIPVSFakeParity). Only on a kernel with IPVS: the
// handle does not notice its absence (see Probe).
func NewKernelHandle() (Handle, error) { return newKernelHandle() }
