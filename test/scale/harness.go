package scale

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
)

// Config sizes a run.
type Config struct {
	Nodes int
	// Special is how many nodes have each outcome other than Healthy from the
	// start (the nodes with the highest indexes, so that the nodes the
	// measurements fail are among the first named).
	Special map[Outcome]int
	// Heartbeat is the agents' report heartbeat (report.DefaultHeartbeat in
	// the figures); Steady the window the steady state is measured over.
	Heartbeat, Steady time.Duration
	// LeaseRenew and LeaseDuration are the kubelets' (10 s and 40 s).
	LeaseRenew    time.Duration
	LeaseDuration int32
	// MaxUnavailable of the mode switch, and the simulated DaemonSet
	// controller's time for one agent pod to be replaced and start its first
	// sync.
	MaxUnavailable intstr.IntOrString
	PodRestart     time.Duration
	// FailureProbes is how many healthy nodes are failed one after the other
	// to time the roll-up.
	FailureProbes int
	Workers       int
	// Baseline is how long the API server's CPU is measured with the Leases
	// alone, before kpo starts (0: not measured).
	Baseline time.Duration
}

// Result holds a run's figures.
type Result struct {
	Nodes                   int     `json:"nodes"`
	SetupSeconds            float64 `json:"setupSeconds"`
	SteadySeconds           float64 `json:"steadySeconds"`
	StatusWritesPerSecond   float64 `json:"statusWritesPerSecond"`
	KpoRequestsPerSecond    float64 `json:"kpoRequestsPerSecond"`
	OperatorRequestsPerSec  float64 `json:"operatorRequestsPerSecond"`
	CRStatusWritesPerSecond float64 `json:"crStatusWritesPerSecond"`
	LeaseUpdatesPerSecond   float64 `json:"leaseUpdatesPerSecond"`
	APIServerCPUPercent     float64 `json:"apiServerCPUPercent"`
	// APIServerCPUBaselinePercent is with the nodes' Leases alone, before kpo.
	APIServerCPUBaselinePercent float64   `json:"apiServerCPUBaselinePercent"`
	OperatorCPUPercent          float64   `json:"operatorCPUPercent"`
	OperatorRSSMiB              float64   `json:"operatorRSSMiB"`
	OperatorHeapMiB             float64   `json:"operatorHeapMiB"`
	FailureToDegraded           []float64 `json:"failureToDegradedSeconds"`
	RecoveryToUnnamed           []float64 `json:"recoveryToUnnamedSeconds"`
	DeadToNotReporting          float64   `json:"deadToNotReportingSeconds"`
	MassFailureWrites           int64     `json:"massFailureWrites"`
	MassFailureSeconds          float64   `json:"massFailureSeconds"`
	StatusBytesSteady           int       `json:"statusBytesSteady"`
	StatusBytesMassFailure      int       `json:"statusBytesMassFailure"`
	MassFailureNamed            int       `json:"massFailureNamed"`
	ModeSwitchSeconds           float64   `json:"modeSwitchSeconds"`
	ModeSwitchBatches           int       `json:"modeSwitchBatches"`
	ModeSwitchDaemonSetPace     float64   `json:"modeSwitchDaemonSetSeconds"`
	ModeSwitchKpoShare          float64   `json:"modeSwitchKpoShareSeconds"`
	ModeSwitchWrites            int64     `json:"modeSwitchWrites"`
	FleetErrors                 int64     `json:"fleetErrors"`
}

// Harness is one run: the API server, the operator, the simulated nodes.
type Harness struct {
	cfg      Config
	env      *apiserver.Env
	client   client.Client
	restCfg  *rest.Config
	op       *operator
	apiPID   int
	fleet    *fleet
	leases   *leaseRenewer
	pcName   string
	logf     func(format string, args ...any)
	Result   Result
	cancel   context.CancelFunc
	ctx      context.Context
	healthyN int
}

const namespace = "kpo-system"

// Start brings up the simulated cluster and waits until the configuration's
// status counts every node as expected.
func Start(ctx context.Context, env *apiserver.Env, dir string, cfg Config, logf func(string, ...any)) (*Harness, error) {
	rc := rest.CopyConfig(env.Config)
	rc.QPS, rc.Burst = -1, 0 // the simulated nodes are many clients
	c, err := client.New(rc, client.Options{Scheme: env.Scheme})
	if err != nil {
		return nil, err
	}
	h := &Harness{cfg: cfg, env: env, client: c, restCfg: rc, pcName: "scale", logf: logf}
	h.ctx, h.cancel = context.WithCancel(ctx)
	h.Result.Nodes = cfg.Nodes
	bin, err := buildOperator(ctx, dir)
	if err != nil {
		return nil, err
	}
	started := time.Now()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil {
		return nil, err
	}
	uids, leases, err := createNodes(ctx, c, cfg.Nodes)
	if err != nil {
		return nil, err
	}
	logf("created %d nodes and leases in %v", cfg.Nodes, time.Since(started).Round(time.Second))
	if h.apiPID, err = findProcess("kube-apiserver", strings.TrimPrefix(strings.TrimPrefix(env.Config.Host, "https://"), "http://")); err != nil {
		logf("API server process not found (%v): no API server CPU figure", err)
	}
	h.fleet = &fleet{workers: cfg.Workers}
	// Until the agents exist, every node renews its Lease.
	h.leases = &leaseRenewer{c: c, leases: leases, period: cfg.LeaseRenew, duration: cfg.LeaseDuration,
		dead: func(int) bool { return false }}
	if err := h.baseline(); err != nil {
		return nil, err
	}
	if h.op, err = startOperator(h.ctx, bin, env.Kubeconfig, namespace); err != nil {
		return nil, err
	}
	pc := &kpov1.ProxyConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: h.pcName},
		Spec:       kpov1.ProxyConfigurationSpec{Mode: kpov1.ModeNFTables, NodeSelector: map[string]string{NodeLabel: "true"}},
	}
	pc.Spec.Agent.UpdateStrategy.MaxUnavailable = &cfg.MaxUnavailable
	if err := c.Create(ctx, pc); err != nil {
		return nil, err
	}

	outcomes := h.initialOutcomes()
	acfg := &kpov1.AgentConfiguration{ConfigurationName: pc.Name, ConfigurationGeneration: pc.Generation, Mode: pc.Spec.Mode}
	for i := range cfg.Nodes {
		a := &agent{index: i, name: nodeName(i), uid: types.UID(uids[i])}
		a.outcome.Store(outcomes[i])
		if outcomes[i] == Healthy {
			h.healthyN++
		}
		a.start(c, acfg, cfg.Heartbeat, 0)
		h.fleet.agents = append(h.fleet.agents, a)
	}
	agents := h.fleet.agents
	h.leases.mu.Lock()
	h.leases.dead = func(i int) bool { return agents[i].getOutcome() == Dead }
	h.leases.mu.Unlock()
	go h.fleet.run(h.ctx)

	want := int32(h.healthyN)
	if _, err := h.waitStatus(10*time.Minute, func(st *kpov1.ProxyConfigurationStatus) error {
		if st.DesiredNodes != int32(cfg.Nodes) || st.ReadyNodes != want {
			return fmt.Errorf("desired %d ready %d, want %d and %d", st.DesiredNodes, st.ReadyNodes, cfg.Nodes, want)
		}
		return nil
	}); err != nil {
		return h, err
	}
	h.Result.SetupSeconds = time.Since(started).Seconds()
	logf("all %d healthy nodes ready after %v", want, time.Since(started).Round(time.Second))
	return h, nil
}

// baseline starts the kubelets' Lease renewals and measures the API
// server's CPU with them alone, before kpo runs: the steady state's excess
// over it is kpo's.
func (h *Harness) baseline() error {
	go h.leases.run(h.ctx)
	if h.apiPID == 0 || h.cfg.Baseline == 0 {
		return nil
	}
	// A renewal period first, for the API server's caches to settle.
	time.Sleep(h.cfg.LeaseRenew)
	before, err := readProc(h.apiPID)
	if err != nil {
		return err
	}
	start := time.Now()
	time.Sleep(h.cfg.Baseline)
	after, err := readProc(h.apiPID)
	if err != nil {
		return err
	}
	h.Result.APIServerCPUBaselinePercent = 100 * (after.cpu - before.cpu).Seconds() / time.Since(start).Seconds()
	return nil
}

// initialOutcomes gives the last nodes the special outcomes.
func (h *Harness) initialOutcomes() []Outcome {
	out := make([]Outcome, h.cfg.Nodes)
	for i := range out {
		out[i] = Healthy
	}
	i := h.cfg.Nodes - 1
	for _, o := range []Outcome{Failing, Slow, Flapping, Dead} {
		for range h.cfg.Special[o] {
			out[i] = o
			i--
		}
	}
	return out
}

// Stop stops the simulated nodes and the operator.
func (h *Harness) Stop() {
	h.cancel()
	if h.op != nil {
		h.op.stop()
	}
}

// OperatorLogs is the operator's output.
func (h *Harness) OperatorLogs() string {
	if h.op == nil {
		return ""
	}
	return h.op.logs.String()
}

func (h *Harness) status() (*kpov1.ProxyConfiguration, error) {
	pc := &kpov1.ProxyConfiguration{}
	err := h.client.Get(h.ctx, types.NamespacedName{Name: h.pcName}, pc)
	return pc, err
}

// waitStatus polls the configuration every 50 ms until check accepts its
// status (of the current generation) and returns when it did.
func (h *Harness) waitStatus(timeout time.Duration, check func(*kpov1.ProxyConfigurationStatus) error) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		pc, err := h.status()
		switch {
		case err != nil:
			last = err
		case pc.Status.ObservedGeneration != pc.Generation:
			last = fmt.Errorf("status of generation %d, spec %d", pc.Status.ObservedGeneration, pc.Generation)
		default:
			if last = check(&pc.Status); last == nil {
				return time.Now(), nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("not within %v: %w", timeout, last)
}

func statusBytes(st *kpov1.ProxyConfigurationStatus) int {
	b, _ := json.Marshal(st)
	return len(b)
}

// snapshot is the counters the steady state is measured from.
type snapshot struct {
	at                    time.Time
	writes                int64
	op, api               procStat
	opMetrics, apiMetrics promSample
	leaseRenewed          int
}

func (h *Harness) snap() (snapshot, error) {
	s := snapshot{at: time.Now(), writes: h.fleet.written.Load()}
	var err error
	if s.op, err = readProc(h.op.cmd.Process.Pid); err != nil {
		return s, err
	}
	if h.apiPID != 0 {
		s.api, _ = readProc(h.apiPID)
	}
	if s.opMetrics, err = h.op.metrics(); err != nil {
		return s, err
	}
	if s.apiMetrics, err = apiServerMetrics(h.restCfg); err != nil {
		return s, err
	}
	h.leases.mu.Lock()
	s.leaseRenewed = h.leases.renewed
	h.leases.mu.Unlock()
	return s, nil
}

// Steady measures the steady state over cfg.Steady: the agents' status
// writes, kpo's requests, the CPU of the operator and the API server.
func (h *Harness) Steady() error {
	before, err := h.snap()
	if err != nil {
		return err
	}
	select {
	case <-time.After(h.cfg.Steady):
	case <-h.ctx.Done():
		return h.ctx.Err()
	}
	after, err := h.snap()
	if err != nil {
		return err
	}
	secs := after.at.Sub(before.at).Seconds()
	r := &h.Result
	r.SteadySeconds = secs
	r.StatusWritesPerSecond = float64(after.writes-before.writes) / secs
	kpo := func(s promSample) float64 { return s.sum("apiserver_request_total", `group="proxy.kpo.dev"`) }
	r.KpoRequestsPerSecond = (kpo(after.apiMetrics) - kpo(before.apiMetrics)) / secs
	r.CRStatusWritesPerSecond = (after.apiMetrics.sum("apiserver_request_total", `resource="proxyconfigurations"`, `subresource="status"`, `verb="PUT"`) -
		before.apiMetrics.sum("apiserver_request_total", `resource="proxyconfigurations"`, `subresource="status"`, `verb="PUT"`)) / secs
	r.OperatorRequestsPerSec = (after.opMetrics.sum("rest_client_requests_total") - before.opMetrics.sum("rest_client_requests_total")) / secs
	r.LeaseUpdatesPerSecond = float64(after.leaseRenewed-before.leaseRenewed) / secs
	r.OperatorCPUPercent = 100 * (after.op.cpu - before.op.cpu).Seconds() / secs
	if h.apiPID != 0 {
		r.APIServerCPUPercent = 100 * (after.api.cpu - before.api.cpu).Seconds() / secs
	}
	r.OperatorRSSMiB = float64(after.op.rss) / (1 << 20)
	r.OperatorHeapMiB = after.opMetrics.sum("go_memstats_heap_inuse_bytes") / (1 << 20)
	if pc, err := h.status(); err == nil {
		r.StatusBytesSteady = statusBytes(&pc.Status)
	}
	return nil
}

func failingNamed(st *kpov1.ProxyConfigurationStatus, node, reason string) bool {
	if !meta.IsStatusConditionTrue(st.Conditions, kpov1.ConditionDegraded) {
		return false
	}
	return slices.ContainsFunc(st.FailingNodes, func(f kpov1.NodeFailure) bool { return f.Node == node && f.Reason == reason })
}

// Failures fails cfg.FailureProbes healthy nodes one after the other and
// times how long the configuration takes to say Degraded naming each, and
// to count it ready again after it recovers.
func (h *Harness) Failures() error {
	for k := range h.cfg.FailureProbes {
		a := h.fleet.agents[k]
		failed := time.Now()
		a.outcome.Store(Failing)
		at, err := h.waitStatus(time.Minute, func(st *kpov1.ProxyConfigurationStatus) error {
			if !failingNamed(st, a.name, kpov1.NodeReasonSyncFailed) {
				return fmt.Errorf("%s not named failing: %+v", a.name, st.FailingNodes)
			}
			return nil
		})
		if err != nil {
			return err
		}
		h.Result.FailureToDegraded = append(h.Result.FailureToDegraded, at.Sub(failed).Seconds())
		recovered := time.Now()
		a.outcome.Store(Healthy)
		// Not named failing any more (it sorts first, so a failing one is
		// named). The ready count is no measure: the flapping nodes move it.
		at, err = h.waitStatus(time.Minute, func(st *kpov1.ProxyConfigurationStatus) error {
			if slices.ContainsFunc(st.FailingNodes, func(f kpov1.NodeFailure) bool { return f.Node == a.name }) {
				return fmt.Errorf("%s still named failing", a.name)
			}
			return nil
		})
		if err != nil {
			return err
		}
		h.Result.RecoveryToUnnamed = append(h.Result.RecoveryToUnnamed, at.Sub(recovered).Seconds())
	}
	return nil
}

// DeadNode stops one healthy node's kubelet and agent and times how long
// the configuration takes to name it NotReporting; then revives it.
func (h *Harness) DeadNode() error {
	a := h.fleet.agents[h.cfg.FailureProbes]
	died := time.Now()
	a.outcome.Store(Dead)
	at, err := h.waitStatus(time.Duration(h.cfg.LeaseDuration)*time.Second+time.Minute, func(st *kpov1.ProxyConfigurationStatus) error {
		if !failingNamed(st, a.name, kpov1.NodeReasonNotReporting) {
			return fmt.Errorf("%s not named NotReporting: %+v", a.name, st.FailingNodes)
		}
		return nil
	})
	if err != nil {
		return err
	}
	h.Result.DeadToNotReporting = at.Sub(died).Seconds()
	a.outcome.Store(Healthy)
	_, err = h.waitStatus(2*time.Minute, func(st *kpov1.ProxyConfigurationStatus) error {
		if slices.ContainsFunc(st.FailingNodes, func(f kpov1.NodeFailure) bool { return f.Node == a.name }) {
			return fmt.Errorf("%s still named failing", a.name)
		}
		return nil
	})
	return err
}

// MassFailure fails every healthy node at once, with a long error each:
// the writes it costs, how long until the configuration counts them all,
// and the status size (bounded whatever fails). They stay failing.
func (h *Harness) MassFailure() error {
	var healthy []*agent
	for _, a := range h.fleet.agents {
		if a.getOutcome() == Healthy {
			healthy = append(healthy, a)
		}
	}
	before := h.fleet.written.Load()
	start := time.Now()
	for _, a := range healthy {
		a.outcome.Store(Failing)
	}
	// Every failing node counted (the flapping and dead ones may add to it).
	want := 0
	for _, a := range h.fleet.agents {
		if a.getOutcome() == Failing {
			want++
		}
	}
	_, err := h.waitStatus(10*time.Minute, func(st *kpov1.ProxyConfigurationStatus) error {
		c := meta.FindStatusCondition(st.Conditions, kpov1.ConditionDegraded)
		failing := 0
		if c != nil {
			_, _ = fmt.Sscanf(c.Message, "%d node(s) failing", &failing)
		}
		if failing < want {
			return fmt.Errorf("condition Degraded %+v, want %d nodes failing", c, want)
		}
		h.Result.StatusBytesMassFailure = statusBytes(st)
		h.Result.MassFailureNamed = len(st.FailingNodes)
		return nil
	})
	if err != nil {
		return err
	}
	h.Result.MassFailureSeconds = time.Since(start).Seconds()
	h.Result.MassFailureWrites = h.fleet.written.Load() - before
	h.Result.FleetErrors = h.fleet.errors.Load()
	return nil
}

// ModeSwitch switches spec.mode and rolls the agents as the DaemonSet
// controller would: maxUnavailable at a time, each batch's pods replaced
// (PodRestart) and ready (their first sync) before the next. Every node is
// healthy first (a DaemonSet's roll waits for unavailable pods). It times
// the whole roll until the status counts every node updated and ready, and
// kpo's share: from the last agent's first sync to that status.
func (h *Harness) ModeSwitch() error {
	for _, a := range h.fleet.agents {
		a.outcome.Store(Healthy)
	}
	n := len(h.fleet.agents)
	if _, err := h.waitStatus(5*time.Minute, func(st *kpov1.ProxyConfigurationStatus) error {
		if st.ReadyNodes != int32(n) {
			return fmt.Errorf("%d ready, want all %d before the switch", st.ReadyNodes, n)
		}
		return nil
	}); err != nil {
		return err
	}
	batch, err := intstr.GetScaledValueFromIntOrPercent(&h.cfg.MaxUnavailable, n, true)
	if err != nil || batch < 1 {
		return fmt.Errorf("maxUnavailable %v: %v", h.cfg.MaxUnavailable, err)
	}
	writesBefore := h.fleet.written.Load()
	start := time.Now()
	pc := &kpov1.ProxyConfiguration{}
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := h.client.Get(h.ctx, types.NamespacedName{Name: h.pcName}, pc); err != nil {
			return err
		}
		pc.Spec.Mode = kpov1.ModeIPTables
		return h.client.Update(h.ctx, pc)
	}); err != nil {
		return err
	}
	acfg := &kpov1.AgentConfiguration{ConfigurationName: pc.Name, ConfigurationGeneration: pc.Generation, Mode: pc.Spec.Mode}
	batches := 0
	for lo := 0; lo < n; lo += batch {
		batches++
		group := h.fleet.agents[lo:min(lo+batch, n)]
		for _, a := range group {
			a.start(h.client, acfg, h.cfg.Heartbeat, h.cfg.PodRestart)
		}
		for !allReady(group) {
			select {
			case <-h.ctx.Done():
				return h.ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	lastReady := time.Now()
	at, err := h.waitStatus(5*time.Minute, func(st *kpov1.ProxyConfigurationStatus) error {
		if st.UpdatedNodes != int32(n) || st.ReadyNodes != int32(n) || st.Mode != string(kpov1.ModeIPTables) ||
			!meta.IsStatusConditionFalse(st.Conditions, kpov1.ConditionProgressing) {
			return fmt.Errorf("updated %d ready %d mode %s, want %d in iptables", st.UpdatedNodes, st.ReadyNodes, st.Mode, n)
		}
		return nil
	})
	if err != nil {
		return err
	}
	r := &h.Result
	r.ModeSwitchSeconds = at.Sub(start).Seconds()
	r.ModeSwitchBatches = batches
	r.ModeSwitchDaemonSetPace = lastReady.Sub(start).Seconds()
	r.ModeSwitchKpoShare = at.Sub(lastReady).Seconds()
	r.ModeSwitchWrites = h.fleet.written.Load() - writesBefore
	return nil
}

func allReady(agents []*agent) bool {
	for _, a := range agents {
		if !a.ready() {
			return false
		}
	}
	return true
}
