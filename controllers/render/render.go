// Package render turns a ProxyConfiguration into the objects that run its node
// agents: ServiceAccount, ConfigMap and DaemonSet in the operator's namespace,
// and the one ClusterRoleBinding that grants every configuration's agents the
// fixed kpo-agent ClusterRole (config/rbac/agent_role.yaml). The operator
// writes no ClusterRole: it holds only 'bind' on kpo-agent (docs/security.md).
//
// Everything here is a pure function of its inputs (no client, no clock), so the
// output is table- and golden-tested, and the controller only has to apply it.
// Objects are server-side-apply configurations: they name only the fields kpo
// owns, so that defaults filled in by the API server never look like drift.
package render

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"
	"k8s.io/klog/v2"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers/imagepolicy"
)

// Labels and annotations kpo puts on what it renders.
const (
	LabelName          = "app.kubernetes.io/name"
	LabelInstance      = "app.kubernetes.io/instance"
	LabelManagedBy     = "app.kubernetes.io/managed-by"
	LabelConfiguration = "proxy.kpo.dev/configuration"
	// AnnotationConfigHash on the pod template changes whenever the agent configuration
	// does, so that a spec edit rolls the agents.
	AnnotationConfigHash = "proxy.kpo.dev/config-hash"

	AgentAppName = "kpo-agent"
	ManagedBy    = "kpo-operator"

	// AgentContainerName is the agent's container in the DaemonSet's pods.
	AgentContainerName = "agent"
	// AgentConfigDir is where the agent's ConfigMap is mounted.
	AgentConfigDir = "/etc/kpo"

	// AgentClusterRoleName is the agents' ClusterRole, shipped in config/rbac.
	AgentClusterRoleName = "kpo-agent"
	// AgentBindingName is the one ClusterRoleBinding of that role to the
	// agents' ServiceAccounts; the operator may write only this binding.
	AgentBindingName = "kpo-agent"
	// AgentServiceAccountPrefix starts every agent ServiceAccount's name (AgentName):
	// the node-status admission policy (config/policy) keys on it.
	AgentServiceAccountPrefix = "kpo-agent-"
)

// Options are the operator-level inputs of rendering.
type Options struct {
	// Namespace receives the namespaced objects (the operator's namespace).
	Namespace string
	// DefaultAgentImage is used when the spec names no image.
	DefaultAgentImage string
	// ExcludedNodes are selected nodes that an older ProxyConfiguration holds; the
	// DaemonSet must not schedule there.
	ExcludedNodes []string
	// APIServerHost and APIServerPort, when set, are the API server's real
	// address, given to the agents as KUBERNETES_SERVICE_HOST/PORT. Without them
	// the agents reach the API server through the kubernetes Service's ClusterIP,
	// which only works while another proxy (kube-proxy) still serves it: kpo
	// itself cannot program that ClusterIP before it has talked to the API server.
	APIServerHost string
	APIServerPort string
	// ImagePolicy, when set, refuses agent images outside it (an
	// *imagepolicy.NotAllowedError): nothing is rendered then.
	ImagePolicy *imagepolicy.Policy
}

// Objects is everything one ProxyConfiguration renders to.
type Objects struct {
	ServiceAccount *corev1ac.ServiceAccountApplyConfiguration
	ConfigMap      *corev1ac.ConfigMapApplyConfiguration
	DaemonSet      *appsv1ac.DaemonSetApplyConfiguration
	// ConfigHash is the hash of the agent configuration, as on the pod template.
	ConfigHash string
}

// AgentName is the name of every object rendered for a ProxyConfiguration.
func AgentName(pc *kpov1.ProxyConfiguration) string {
	return AgentServiceAccountPrefix + pc.Name
}

// SelectorLabels select the agent pods of one ProxyConfiguration. They are the
// DaemonSet's selector, which cannot change after creation.
func SelectorLabels(pc *kpov1.ProxyConfiguration) map[string]string {
	return map[string]string{
		LabelName:          AgentAppName,
		LabelConfiguration: pc.Name,
	}
}

func commonLabels(pc *kpov1.ProxyConfiguration) map[string]string {
	l := SelectorLabels(pc)
	l[LabelInstance] = pc.Name
	l[LabelManagedBy] = ManagedBy
	return l
}

// AgentConfiguration is the agent's configuration for a ProxyConfiguration.
func AgentConfiguration(pc *kpov1.ProxyConfiguration) *kpov1.AgentConfiguration {
	return &kpov1.AgentConfiguration{
		ConfigurationName:       pc.Name,
		ConfigurationGeneration: pc.Generation,
		Mode:                    pc.Spec.Mode,
		ProxySettings:           *pc.Spec.ProxySettings.DeepCopy(),
	}
}

// Render renders every object of a ProxyConfiguration.
func Render(pc *kpov1.ProxyConfiguration, opts Options) (*Objects, error) {
	if opts.Namespace == "" {
		return nil, fmt.Errorf("render: no namespace")
	}
	// The agent refuses a configuration file that fails these rules: refuse it
	// here, before anything rolls (the CR then says Degraded, ApplyFailed, with
	// the fields). The API server applies the same rules, unless the CRD
	// installed is older than the operator.
	if _, err := kpov1.Resolve(pc.Spec.Mode, pc.Spec.ProxySettings.DeepCopy(), field.NewPath("spec")); err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	image := pc.Spec.Agent.Image
	if image == "" {
		image = opts.DefaultAgentImage
	}
	if image == "" {
		return nil, fmt.Errorf("spec.agent.image is empty and the operator has no default agent image")
	}
	if opts.ImagePolicy != nil {
		if err := opts.ImagePolicy.Check(image); err != nil {
			return nil, err
		}
	}
	data, err := kpov1.MarshalAgentConfiguration(AgentConfiguration(pc))
	if err != nil {
		return nil, fmt.Errorf("rendering agent configuration: %w", err)
	}
	sum := sha256.Sum256(data)
	hash := hex.EncodeToString(sum[:8])

	owner := ownerReference(pc)
	name := AgentName(pc)
	labels := commonLabels(pc)

	objs := &Objects{ConfigHash: hash}
	// No token unless a pod asks for one: only the agent pods do (below).
	objs.ServiceAccount = corev1ac.ServiceAccount(name, opts.Namespace).
		WithLabels(labels).WithOwnerReferences(owner).
		WithAutomountServiceAccountToken(false)
	objs.ConfigMap = corev1ac.ConfigMap(name, opts.Namespace).
		WithLabels(labels).WithOwnerReferences(owner).
		WithData(map[string]string{kpov1.AgentConfigKey: string(data)})
	objs.DaemonSet = daemonSet(pc, opts, image, hash, owner)
	return objs, nil
}

func ownerReference(pc *kpov1.ProxyConfiguration) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(kpov1.GroupVersion.String()).
		WithKind("ProxyConfiguration").
		WithName(pc.Name).
		WithUID(pc.UID).
		WithController(true).
		WithBlockOwnerDeletion(true)
}

// AgentBinding binds the agents' ClusterRole to the ServiceAccount of every
// configuration in configs (those being deleted included: their agents still
// report CleanedUp). It is owned by each live one, none as controller, so that
// the garbage collector removes it with the last one. One being deleted is no
// owner (or a foreground deletion's garbage collector and the operator would
// take turns removing and adding it), unless none is live: then every one is,
// so that the binding goes with them. The operator's RBAC allows it this one
// binding, by name, and 'bind' on that one role.
func AgentBinding(namespace string, configs []*kpov1.ProxyConfiguration) *rbacv1ac.ClusterRoleBindingApplyConfiguration {
	sorted := slices.SortedFunc(slices.Values(configs), func(a, b *kpov1.ProxyConfiguration) int {
		return strings.Compare(a.Name, b.Name)
	})
	crb := rbacv1ac.ClusterRoleBinding(AgentBindingName).
		WithLabels(map[string]string{LabelName: AgentAppName, LabelManagedBy: ManagedBy}).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup("rbac.authorization.k8s.io").WithKind("ClusterRole").WithName(AgentClusterRoleName))
	anyLive := slices.ContainsFunc(sorted, func(pc *kpov1.ProxyConfiguration) bool { return pc.DeletionTimestamp == nil })
	for _, pc := range sorted {
		if pc.DeletionTimestamp == nil || !anyLive {
			crb.WithOwnerReferences(metav1ac.OwnerReference().
				WithAPIVersion(kpov1.GroupVersion.String()).WithKind("ProxyConfiguration").
				WithName(pc.Name).WithUID(pc.UID))
		}
		crb.WithSubjects(rbacv1ac.Subject().WithKind("ServiceAccount").WithName(AgentName(pc)).WithNamespace(namespace))
	}
	return crb
}

func daemonSet(pc *kpov1.ProxyConfiguration, opts Options, image, hash string,
	owner *metav1ac.OwnerReferenceApplyConfiguration) *appsv1ac.DaemonSetApplyConfiguration {
	name := AgentName(pc)
	spec := &pc.Spec

	nodeSelector := map[string]string{corev1.LabelOSStable: "linux"}
	for k, v := range spec.NodeSelector {
		nodeSelector[k] = v
	}

	maxUnavailable := intstr.FromInt32(1)
	if spec.Agent.UpdateStrategy.MaxUnavailable != nil {
		maxUnavailable = *spec.Agent.UpdateStrategy.MaxUnavailable
	}

	pod := corev1ac.PodSpec().
		WithServiceAccountName(name).
		// The agent talks to the API server; its ServiceAccount mounts no token by default.
		WithAutomountServiceAccountToken(true).
		// The agent programs the node's own network namespace.
		WithHostNetwork(true).
		WithDNSPolicy(corev1.DNSClusterFirstWithHostNet).
		WithNodeSelector(nodeSelector).
		WithTerminationGracePeriodSeconds(30).
		WithContainers(agentContainer(pc, image, opts)).
		WithVolumes(
			corev1ac.Volume().WithName("config").
				WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(name)),
			// iptables-restore and the iptables binaries serialise on this lock with
			// every other writer of the node's iptables (kubelet, CNI plugins).
			corev1ac.Volume().WithName("xtables-lock").
				WithHostPath(corev1ac.HostPathVolumeSource().WithPath("/run/xtables.lock").WithType(corev1.HostPathFileOrCreate)),
			// The node's agent lock (kpo-agent --lock-file): agents of any
			// configuration on one node take turns, never interleaving syncs.
			corev1ac.Volume().WithName("agent-lock").
				WithHostPath(corev1ac.HostPathVolumeSource().WithPath("/run/kpo").WithType(corev1.HostPathDirectoryOrCreate)),
			// modprobe of ip_vs and nf_conntrack modules reads the host's modules.
			corev1ac.Volume().WithName("lib-modules").
				WithHostPath(corev1ac.HostPathVolumeSource().WithPath("/lib/modules").WithType(corev1.HostPathDirectoryOrCreate)),
		)
	if spec.Agent.PriorityClassName != "" {
		pod.WithPriorityClassName(spec.Agent.PriorityClassName)
	}
	for i := range spec.Tolerations {
		pod.WithTolerations(toleration(&spec.Tolerations[i]))
	}
	if len(opts.ExcludedNodes) > 0 {
		excluded := slices.Sorted(slices.Values(opts.ExcludedNodes))
		notHeld := corev1ac.NodeSelectorRequirement().
			WithKey("metadata.name").
			WithOperator(corev1.NodeSelectorOpNotIn).
			WithValues(excluded...)
		pod.WithAffinity(corev1ac.Affinity().WithNodeAffinity(corev1ac.NodeAffinity().
			WithRequiredDuringSchedulingIgnoredDuringExecution(corev1ac.NodeSelector().
				WithNodeSelectorTerms(corev1ac.NodeSelectorTerm().WithMatchFields(notHeld)))))
	}

	return appsv1ac.DaemonSet(name, opts.Namespace).
		WithLabels(commonLabels(pc)).
		WithOwnerReferences(owner).
		WithSpec(appsv1ac.DaemonSetSpec().
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(SelectorLabels(pc))).
			WithUpdateStrategy(appsv1ac.DaemonSetUpdateStrategy().
				WithType(appsv1.RollingUpdateDaemonSetStrategyType).
				WithRollingUpdate(appsv1ac.RollingUpdateDaemonSet().WithMaxUnavailable(maxUnavailable))).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(commonLabels(pc)).
				WithAnnotations(map[string]string{AnnotationConfigHash: hash}).
				WithSpec(pod)))
}

func agentContainer(pc *kpov1.ProxyConfiguration, image string, opts Options) *corev1ac.ContainerApplyConfiguration {
	spec := &pc.Spec
	healthz := spec.HealthzPort
	if healthz == 0 {
		healthz = 10256
	}
	probe := func(path string, failures int32) *corev1ac.ProbeApplyConfiguration {
		return corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath(path).WithPort(intstr.FromInt32(healthz))).
			WithPeriodSeconds(10).WithTimeoutSeconds(5).WithFailureThreshold(failures)
	}
	c := corev1ac.Container().
		WithName(AgentContainerName).
		WithImage(image).
		WithCommand("/kpo-agent").
		WithArgs(
			"--config="+AgentConfigDir+"/"+kpov1.AgentConfigKey,
			fmt.Sprintf("--v=%d", spec.Agent.LogLevel),
		).
		WithEnv(corev1ac.EnvVar().WithName("NODE_NAME").
			WithValueFrom(corev1ac.EnvVarSource().WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath("spec.nodeName")))).
		// No ports: with hostNetwork a containerPort is a hostPort, and the
		// scheduler keeps a second pod claiming it off the node; the successor
		// of a deleted configuration must start next to the old agent, which
		// hands it the node (the host lock keeps them apart). kube-proxy's
		// DaemonSet declares none either.
		// Privileged, like kube-proxy: besides NET_ADMIN (netfilter, IPVS and
		// conntrack over netlink), NET_RAW and SYS_MODULE (loading ip_vs), the agent
		// writes sysctls (conntrack limits, route_localnet, IPVS strict ARP), and
		// container runtimes mount /proc/sys read-only in unprivileged containers.
		// The image's USER is non-root (for the operator): the agent asks for
		// root explicitly. Its root filesystem stays read-only: it writes only
		// the kernel's /proc/sys and /sys, and the xtables lock (a host file).
		// docs/security.md lists why each privilege is needed.
		WithSecurityContext(corev1ac.SecurityContext().
			WithPrivileged(true).
			WithRunAsUser(0).WithRunAsGroup(0).WithRunAsNonRoot(false).
			WithReadOnlyRootFilesystem(true)).
		// Readiness is the agent's /readyz: 503 until its first successful sync.
		// A rolling update replaces maxUnavailable agents and waits for them to
		// turn ready, so a configuration that cannot sync stops at the first
		// node(s), whose ProxyNodeStatus says why (and the CR's Degraded), instead
		// of reaching every node. (/healthz, as kube-proxy's, is 200 before the
		// first sync.) The startup probe polls every second until then, so the pod
		// turns ready about a second after its rules are in place rather than at
		// the next 10 s probe; after 300 s without a sync the kubelet restarts it.
		WithStartupProbe(probe(kpov1.AgentReadyPath, 300).WithPeriodSeconds(1).WithTimeoutSeconds(1)).
		WithLivenessProbe(probe("/livez", 6)).
		WithReadinessProbe(probe(kpov1.AgentReadyPath, 3)).
		WithVolumeMounts(
			corev1ac.VolumeMount().WithName("config").WithMountPath(AgentConfigDir).WithReadOnly(true),
			corev1ac.VolumeMount().WithName("xtables-lock").WithMountPath("/run/xtables.lock"),
			corev1ac.VolumeMount().WithName("agent-lock").WithMountPath("/run/kpo"),
			corev1ac.VolumeMount().WithName("lib-modules").WithMountPath("/lib/modules").WithReadOnly(true),
		)
	if opts.APIServerHost != "" {
		c.WithEnv(
			corev1ac.EnvVar().WithName("KUBERNETES_SERVICE_HOST").WithValue(opts.APIServerHost),
			corev1ac.EnvVar().WithName("KUBERNETES_SERVICE_PORT").WithValue(opts.APIServerPort),
		)
	}
	if spec.Agent.ImagePullPolicy != "" {
		c.WithImagePullPolicy(spec.Agent.ImagePullPolicy)
	}
	if r := resources(&spec.Agent.Resources); r != nil {
		c.WithResources(r)
	}
	return c
}

func resources(r *corev1.ResourceRequirements) *corev1ac.ResourceRequirementsApplyConfiguration {
	if len(r.Limits) == 0 && len(r.Requests) == 0 {
		return nil
	}
	ac := corev1ac.ResourceRequirements()
	if len(r.Limits) > 0 {
		ac.WithLimits(r.Limits)
	}
	if len(r.Requests) > 0 {
		ac.WithRequests(r.Requests)
	}
	return ac
}

func toleration(t *corev1.Toleration) *corev1ac.TolerationApplyConfiguration {
	ac := corev1ac.Toleration()
	if t.Key != "" {
		ac.WithKey(t.Key)
	}
	if t.Operator != "" {
		ac.WithOperator(t.Operator)
	}
	if t.Value != "" {
		ac.WithValue(t.Value)
	}
	if t.Effect != "" {
		ac.WithEffect(t.Effect)
	}
	if t.TolerationSeconds != nil {
		ac.WithTolerationSeconds(*t.TolerationSeconds)
	}
	return ac
}

// Selects reports whether a ProxyConfiguration's agents would run on a node: the
// node matches the node selector and the tolerations cover its NoSchedule and
// NoExecute taints (what the DaemonSet controller checks).
func Selects(pc *kpov1.ProxyConfiguration, node *corev1.Node) bool {
	if node.DeletionTimestamp != nil {
		return false
	}
	if os, ok := node.Labels[corev1.LabelOSStable]; ok && os != "linux" {
		return false
	}
	for k, v := range pc.Spec.NodeSelector {
		if node.Labels[k] != v {
			return false
		}
	}
	for i := range node.Spec.Taints {
		taint := &node.Spec.Taints[i]
		if taint.Effect == corev1.TaintEffectPreferNoSchedule {
			continue
		}
		if !slices.ContainsFunc(pc.Spec.Tolerations, func(t corev1.Toleration) bool { return t.ToleratesTaint(klog.Background(), taint, false) }) {
			return false
		}
	}
	return true
}

// Older orders ProxyConfigurations for node ownership: the older one keeps a node
// both select; names break ties so that every operator replica agrees.
func Older(a, b *kpov1.ProxyConfiguration) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Name < b.Name
}
