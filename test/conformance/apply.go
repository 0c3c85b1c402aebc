package conformance

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"kpo.dev/kpo/hack/apiserver"
)

// apply writes the cases' objects and reads the Services back (the API server
// fills in defaults such as healthCheckNodePort). Nothing is left to the
// controllers: the EndpointSlices are written as the case says.
func apply(ctx context.Context, api *apiserver.Env, cases []*Case) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}
	if err := api.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	for _, c := range cases {
		for i, svc := range c.Services {
			created, err := createService(ctx, api, svc)
			if err != nil {
				return fmt.Errorf("case %s: %w", c.Name, err)
			}
			c.Services[i] = created
		}
		for i, s := range c.Slices {
			s = s.DeepCopy()
			if err := api.Client.Create(ctx, s); err != nil {
				return fmt.Errorf("case %s: endpoint slice %s: %w", c.Name, s.Name, err)
			}
			c.Slices[i] = s
		}
	}
	return nil
}

func createService(ctx context.Context, api *apiserver.Env, svc *corev1.Service) (*corev1.Service, error) {
	svc = svc.DeepCopy()
	status := svc.Status
	if err := api.Client.Create(ctx, svc); err != nil {
		return nil, fmt.Errorf("service %s: %w", svc.Name, err)
	}
	if len(status.LoadBalancer.Ingress) > 0 {
		svc.Status = status
		if err := api.Client.Status().Update(ctx, svc); err != nil {
			return nil, fmt.Errorf("service %s status: %w", svc.Name, err)
		}
	}
	return svc, nil
}

// update writes changed objects of a case (after a Step), by name.
func update(ctx context.Context, api *apiserver.Env, c *Case) error {
	for i, svc := range c.Services {
		cur := &corev1.Service{}
		if err := api.Client.Get(ctx, client.ObjectKeyFromObject(svc), cur); err != nil {
			return err
		}
		next := svc.DeepCopy()
		next.ResourceVersion = cur.ResourceVersion
		status := next.Status
		if err := api.Client.Update(ctx, next); err != nil {
			return fmt.Errorf("service %s: %w", svc.Name, err)
		}
		if !equality.Semantic.DeepEqual(status, next.Status) {
			next.Status = status
			if err := api.Client.Status().Update(ctx, next); err != nil {
				return fmt.Errorf("service %s status: %w", svc.Name, err)
			}
		}
		c.Services[i] = next
	}
	for i, s := range c.Slices {
		cur := &discoveryv1.EndpointSlice{}
		next := s.DeepCopy()
		err := api.Client.Get(ctx, client.ObjectKeyFromObject(s), cur)
		switch {
		case apierrors.IsNotFound(err):
			next.ResourceVersion = ""
			err = api.Client.Create(ctx, next)
		case err == nil:
			next.ResourceVersion = cur.ResourceVersion
			err = api.Client.Update(ctx, next)
		}
		if err != nil {
			return fmt.Errorf("endpoint slice %s: %w", s.Name, err)
		}
		c.Slices[i] = next
	}
	return nil
}

// deleteAll removes every case object (between batches).
func deleteAll(ctx context.Context, api *apiserver.Env) error {
	if err := api.Client.DeleteAllOf(ctx, &discoveryv1.EndpointSlice{}, client.InNamespace(Namespace)); err != nil {
		return err
	}
	list := &corev1.ServiceList{}
	if err := api.Client.List(ctx, list, client.InNamespace(Namespace)); err != nil {
		return err
	}
	for i := range list.Items {
		if err := api.Client.Delete(ctx, &list.Items[i]); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return nil
}
