package ipvs

import (
	"errors"
	"os"
	"strings"
	"testing"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
)

func TestCheckWithProbe(t *testing.T) {
	tests := []struct {
		name    string
		probe   Probe
		wantErr string
	}{
		{name: "available", probe: func() error { return nil }},
		{name: "no IPVS", probe: func() error { return errors.New("generic netlink family IPVS: no such file") }, wantErr: "IPVS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := New(testSettings, Config{}, nil, WithHandle(NewFakeHandle()), WithProbe(tt.probe), WithLinks(NewFakeLinks()))
			if err != nil {
				t.Fatal(err)
			}
			err = b.Check(t.Context())
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, backend.ErrUnavailable) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Check: %v, want ErrUnavailable mentioning %q", err, tt.wantErr)
			}
		})
	}
}

// TestSyncWithoutIPVS: without a handle, a sync on a kernel without IPVS
// fails with ErrUnavailable instead of trusting moby/ipvs.
func TestSyncWithoutIPVS(t *testing.T) {
	b, err := New(testSettings, Config{}, nil, WithProbe(func() error { return errors.New("no IPVS") }),
		WithLinks(NewFakeLinks()), WithRules(&FakeRules{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := backendtest.Sync(t.Context(), b, snapOf(), true); !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("Sync: %v", err)
	}
}

// TestCheckRealKernel runs the real probe. On a kernel without IPVS (this
// project's CI machines) it must report ErrUnavailable; where IPVS is there
// (the VM tests) it must pass.
func TestCheckRealKernel(t *testing.T) {
	b, err := New(testSettings, Config{}, []model.Family{model.IPv4})
	if err != nil {
		t.Fatal(err)
	}
	err = b.Check(t.Context())
	if _, statErr := os.Stat("/proc/net/ip_vs"); statErr == nil {
		t.Logf("this kernel has IPVS; Check: %v", err)
		return
	}
	if !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("Check on a kernel without IPVS: %v, want ErrUnavailable", err)
	}
	t.Logf("Check: %v", err)
}
