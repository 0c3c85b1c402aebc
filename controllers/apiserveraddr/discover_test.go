package apiserveraddr

import (
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"
)

func TestPick(t *testing.T) {
	slice := func(ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{Ports: ports, Endpoints: eps}
	}
	https := []discoveryv1.EndpointPort{{Name: ptr.To("https"), Port: ptr.To[int32](6443)}}
	ep := func(ready *bool, addrs ...string) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: addrs, Conditions: discoveryv1.EndpointConditions{Ready: ready}}
	}
	for _, tc := range []struct {
		name       string
		slice      *discoveryv1.EndpointSlice
		host, port string
		fails      bool
	}{
		{"one API server", slice(https, ep(nil, "198.51.100.254")), "198.51.100.254", "6443", false},
		{"the lowest of three, stable", slice(https, ep(nil, "198.51.100.12"), ep(nil, "198.51.100.10"), ep(nil, "198.51.100.11")),
			"198.51.100.10", "6443", false},
		{"not the one that is not ready", slice(https, ep(ptr.To(false), "198.51.100.10"), ep(ptr.To(true), "198.51.100.11")),
			"198.51.100.11", "6443", false},
		{"the https port of several", slice([]discoveryv1.EndpointPort{{Name: ptr.To("other"), Port: ptr.To[int32](1)},
			{Name: ptr.To("https"), Port: ptr.To[int32](443)}}, ep(nil, "2001:db8:1::fe")), "2001:db8:1::fe", "443", false},
		{"no port", slice(nil, ep(nil, "198.51.100.254")), "", "", true},
		{"no ready address", slice(https, ep(ptr.To(false), "198.51.100.254")), "", "", true},
		{"not an address", slice(https, ep(nil, "apiserver.example")), "", "", true},
	} {
		host, port, err := Pick(tc.slice)
		if (err != nil) != tc.fails || host != tc.host || port != tc.port {
			t.Errorf("%s: got %q %q %v", tc.name, host, port, err)
		}
	}
}
