package main

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

func kubernetesScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := kpov1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}
