package ipvs

import (
	"errors"
	"syscall"
	"testing"
)

// TestFakeHandleKernelRules pins the kernel behaviours the backend relies on.
func TestFakeHandleKernelRules(t *testing.T) {
	vs := Service{VSKey: tcpKey("10.96.0.10:80"), Scheduler: "rr"}
	d := Destination{Addr: ap("10.244.1.5:8080"), Weight: 1}
	tests := []struct {
		name string
		do   func(h *FakeHandle) error
		want error
	}{
		{"duplicate service", func(h *FakeHandle) error { _ = h.NewService(vs); return h.NewService(vs) }, syscall.EEXIST},
		{"unknown scheduler", func(h *FakeHandle) error { return h.NewService(Service{VSKey: vs.VSKey, Scheduler: "nope"}) }, syscall.ENOENT},
		{"delete missing service", func(h *FakeHandle) error { return h.DelService(vs.VSKey) }, syscall.ESRCH},
		{"update missing service", func(h *FakeHandle) error { return h.UpdateService(vs) }, syscall.ESRCH},
		{"destination needs its service", func(h *FakeHandle) error { return h.NewDestination(vs.VSKey, d) }, syscall.ESRCH},
		{"duplicate destination", func(h *FakeHandle) error {
			_ = h.NewService(vs)
			_ = h.NewDestination(vs.VSKey, d)
			return h.NewDestination(vs.VSKey, d)
		}, syscall.EEXIST},
		{"delete missing destination", func(h *FakeHandle) error { _ = h.NewService(vs); return h.DelDestination(vs.VSKey, d.Addr) }, syscall.ENOENT},
		{"mixed families", func(h *FakeHandle) error {
			_ = h.NewService(vs)
			return h.NewDestination(vs.VSKey, Destination{Addr: ap("[fd10:244:0:1::5]:80"), Weight: 1})
		}, syscall.EINVAL},
		{"service deletion takes destinations", func(h *FakeHandle) error {
			_ = h.NewService(vs)
			_ = h.NewDestination(vs.VSKey, d)
			_ = h.DelService(vs.VSKey)
			_ = h.NewService(vs)
			ds, _ := h.GetDestinations(vs.VSKey)
			if len(ds) != 0 {
				return errors.New("destinations survived")
			}
			return nil
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do(NewFakeHandle())
			if (tt.want == nil && err != nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestFakeLinksKernelRules(t *testing.T) {
	l := NewFakeLinks()
	if err := l.AddAddr(dummyName, addr("10.96.0.10")); !errors.Is(err, syscall.ENODEV) {
		t.Errorf("address on a missing link: %v", err)
	}
	_ = l.EnsureDummy(dummyName)
	_ = l.AddAddr(dummyName, addr("10.96.0.10"))
	if err := l.AddAddr(dummyName, addr("10.96.0.10")); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("duplicate address: %v", err)
	}
	if err := l.DelAddr(dummyName, addr("10.96.0.11")); !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Errorf("missing address: %v", err)
	}
	if err := l.DeleteDummy("nope"); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("missing link: %v", err)
	}
}
