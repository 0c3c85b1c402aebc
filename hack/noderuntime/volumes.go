package noderuntime

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// volumeSet is a pod's volumes materialised on the host: each volume name maps
// to a directory (or, for a hostPath file, a file) that containers bind-mount.
type volumeSet struct {
	paths map[string]string
	// tokenExpiry is the earliest expiry of a projected service-account token:
	// the volumes are written again before it.
	tokenExpiry time.Time
}

// writeVolumes (re)writes every volume of pod under dir. Files are written to a
// temporary name and renamed, so a process never reads half a file.
func (r *Runtime) writeVolumes(ctx context.Context, pod *corev1.Pod, dir string, uid, gid *int64) (*volumeSet, error) {
	vs := &volumeSet{paths: map[string]string{}}
	for _, v := range pod.Spec.Volumes {
		p := filepath.Join(dir, v.Name)
		var files map[string][]byte
		var err error
		switch {
		case v.HostPath != nil:
			p, err = r.hostPath(v.HostPath)
		case v.EmptyDir != nil:
			err = os.MkdirAll(p, 0o777)
		case v.ConfigMap != nil:
			files, err = r.configMapFiles(ctx, pod.Namespace, v.ConfigMap.Name, v.ConfigMap.Items, ptr.Deref(v.ConfigMap.Optional, false))
		case v.Secret != nil:
			files, err = r.secretFiles(ctx, pod.Namespace, v.Secret.SecretName, v.Secret.Items, ptr.Deref(v.Secret.Optional, false))
		case v.DownwardAPI != nil:
			files, err = downwardFiles(pod, v.DownwardAPI.Items)
		case v.Projected != nil:
			files, err = r.projectedFiles(ctx, pod, v.Projected, vs)
		default:
			err = fmt.Errorf("volume %q: only configMap, secret, projected, downwardAPI, emptyDir and hostPath volumes are supported", v.Name)
		}
		if err != nil {
			return nil, err
		}
		if files != nil {
			if err := writeFiles(p, files, uid, gid); err != nil {
				return nil, fmt.Errorf("volume %q: %w", v.Name, err)
			}
		}
		vs.paths[v.Name] = p
	}
	return vs, nil
}

// hostPath checks or creates a hostPath volume's path per its type. A path it
// creates is recorded in the run's ledger, so that teardown removes it again
// if it is still empty (the nodes share this machine's file system).
//
// Paths under /run are the node's own (under its directory): /run is each
// machine's own tmpfs, and the simulated nodes share this machine's, so that
// a lock there (the agents' /run/kpo/agent.lock, /run/xtables.lock) would
// otherwise be one lock for every node.
func (r *Runtime) hostPath(h *corev1.HostPathVolumeSource) (string, error) {
	path := h.Path
	if clean := filepath.Clean(path); clean == "/run" || strings.HasPrefix(clean, "/run/") {
		path = filepath.Join(r.cfg.Dir, "host", clean)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return "", err
		}
	}
	st, err := os.Stat(path)
	t := ptr.Deref(h.Type, corev1.HostPathUnset)
	switch {
	case t == corev1.HostPathDirectoryOrCreate && os.IsNotExist(err):
		if err := os.MkdirAll(path, 0o755); err != nil {
			return "", err
		}
		r.cfg.Ledger.RecordCreatedPath(path)
	case t == corev1.HostPathFileOrCreate && os.IsNotExist(err):
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			return "", err
		}
		r.cfg.Ledger.RecordCreatedPath(path)
	case t == corev1.HostPathDirectory && (err != nil || !st.IsDir()):
		return "", fmt.Errorf("hostPath %s: not a directory", h.Path)
	case t == corev1.HostPathFile && (err != nil || st.IsDir()):
		return "", fmt.Errorf("hostPath %s: not a file", h.Path)
	case t == corev1.HostPathSocket || t == corev1.HostPathCharDev || t == corev1.HostPathBlockDev:
		return "", fmt.Errorf("hostPath %s: type %s is not supported", h.Path, t)
	}
	return path, nil
}

func (r *Runtime) configMapFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, optional bool) (map[string][]byte, error) {
	cm, err := r.cfg.Kube.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && optional {
		return map[string][]byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("configMap %s/%s: %w", ns, name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return pickItems(data, items, fmt.Sprintf("configMap %s/%s", ns, name))
}

func (r *Runtime) secretFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, optional bool) (map[string][]byte, error) {
	s, err := r.cfg.Kube.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && optional {
		return map[string][]byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", ns, name, err)
	}
	return pickItems(s.Data, items, fmt.Sprintf("secret %s/%s", ns, name))
}

// pickItems maps keys to file paths: all keys by name, or only the listed items.
func pickItems(data map[string][]byte, items []corev1.KeyToPath, what string) (map[string][]byte, error) {
	if len(items) == 0 {
		return data, nil
	}
	out := map[string][]byte{}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("%s has no key %q", what, it.Key)
		}
		out[it.Path] = v
	}
	return out, nil
}

func downwardFiles(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, it := range items {
		if it.FieldRef == nil {
			return nil, fmt.Errorf("downwardAPI %q: only fieldRef is supported (no resourceFieldRef: this runtime has no resource limits)", it.Path)
		}
		v, err := fieldValue(pod, it.FieldRef.FieldPath)
		if err != nil {
			return nil, err
		}
		out[it.Path] = []byte(v)
	}
	return out, nil
}

// projectedFiles writes a projected volume, the shape of the kube-api-access
// volume that the ServiceAccount admission plugin adds to every pod: a bound
// service-account token, the cluster CA (kube-root-ca.crt) and the namespace.
func (r *Runtime) projectedFiles(ctx context.Context, pod *corev1.Pod, p *corev1.ProjectedVolumeSource, vs *volumeSet) (map[string][]byte, error) {
	out := map[string][]byte{}
	add := func(files map[string][]byte) {
		for k, v := range files {
			out[k] = v
		}
	}
	for _, src := range p.Sources {
		switch {
		case src.ServiceAccountToken != nil:
			tok, exp, err := r.serviceAccountToken(ctx, pod, src.ServiceAccountToken)
			if err != nil {
				return nil, err
			}
			if vs.tokenExpiry.IsZero() || exp.Before(vs.tokenExpiry) {
				vs.tokenExpiry = exp
			}
			out[src.ServiceAccountToken.Path] = []byte(tok)
		case src.ConfigMap != nil:
			files, err := r.configMapFiles(ctx, pod.Namespace, src.ConfigMap.Name, src.ConfigMap.Items, ptr.Deref(src.ConfigMap.Optional, false))
			if err != nil {
				return nil, err
			}
			add(files)
		case src.Secret != nil:
			files, err := r.secretFiles(ctx, pod.Namespace, src.Secret.Name, src.Secret.Items, ptr.Deref(src.Secret.Optional, false))
			if err != nil {
				return nil, err
			}
			add(files)
		case src.DownwardAPI != nil:
			files, err := downwardFiles(pod, src.DownwardAPI.Items)
			if err != nil {
				return nil, err
			}
			add(files)
		default:
			return nil, fmt.Errorf("projected volume: only serviceAccountToken, configMap, secret and downwardAPI sources are supported")
		}
	}
	return out, nil
}

// serviceAccountToken asks the API server for a token bound to the pod, as
// kubelet does (TokenRequest).
func (r *Runtime) serviceAccountToken(ctx context.Context, pod *corev1.Pod, src *corev1.ServiceAccountTokenProjection) (string, time.Time, error) {
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: ptr.To(ptr.Deref(src.ExpirationSeconds, 3600)),
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	resp, err := r.cfg.Kube.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	return resp.Status.Token, resp.Status.ExpirationTimestamp.Time, nil
}

// writeFiles writes files (relative paths) under dir, owned by the pod's user
// when it runs as one (so that a non-root container can read its token).
func writeFiles(dir string, files map[string][]byte, uid, gid *int64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for rel, data := range files {
		if strings.Contains(rel, "..") {
			return fmt.Errorf("path %q leaves the volume", rel)
		}
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			return err
		}
		if uid != nil {
			if err := os.Chown(tmp, int(*uid), int(ptr.Deref(gid, *uid))); err != nil {
				return err
			}
		}
		if err := os.Rename(tmp, p); err != nil {
			return err
		}
	}
	return nil
}

// fieldValue resolves a downward-API field path of pod.
func fieldValue(pod *corev1.Pod, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP":
		return pod.Status.HostIP, nil
	case "status.podIP":
		return pod.Status.PodIP, nil
	case "status.hostIPs":
		var ips []string
		for _, ip := range pod.Status.HostIPs {
			ips = append(ips, ip.IP)
		}
		return strings.Join(ips, ","), nil
	case "status.podIPs":
		var ips []string
		for _, ip := range pod.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		return strings.Join(ips, ","), nil
	}
	for _, m := range []struct {
		prefix string
		values map[string]string
	}{{"metadata.labels", pod.Labels}, {"metadata.annotations", pod.Annotations}} {
		if rest, ok := strings.CutPrefix(path, m.prefix); ok {
			if rest == "" {
				var lines []string
				for k, v := range m.values {
					lines = append(lines, fmt.Sprintf("%s=%q", k, v))
				}
				return strings.Join(lines, "\n"), nil
			}
			key := strings.TrimSuffix(strings.TrimPrefix(rest, "['"), "']")
			return m.values[key], nil
		}
	}
	return "", fmt.Errorf("fieldRef %q is not supported", path)
}
