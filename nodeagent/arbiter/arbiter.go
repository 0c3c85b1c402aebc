// Package arbiter decides which Service gets an address and port that several
// Services claim. The kernel holds a (VIP, protocol, port) or a (protocol,
// NodePort) once: two claims would put the same key twice into one nftables
// map (the kernel refuses the whole transaction, "File exists", and every
// later one) or two rules of which iptables obeys whichever comes first.
// Upstream kube-proxy (v1.37) decides nothing: in both modes the winner is
// whichever Service its map iteration meets last (nftables, ensureElem) or
// first (iptables, KUBE-SERVICES), anew on each sync. Here the winner is
// fixed (docs/robustness.md, "Bad and conflicting objects"):
//
//  1. A ClusterIP wins over a load-balancer IP, which wins over an externalIP:
//     ClusterIPs come from the API server's allocator, load-balancer IPs from
//     a controller with access to Service status, externalIPs from whoever
//     may write the Service (the claim CVE-2020-8554 is about).
//  2. Among claims of the same kind, the oldest Service wins
//     (creationTimestamp, then namespace/name, then port name).
//
// A ServicePort whose ClusterIP claim loses is not programmed at all; one that
// loses an external or load-balancer IP or its NodePort keeps the rest.
//
// Arbitration is incremental: Set and Remove mark the keys a ServicePort
// claims (or claimed); Resolve recomputes the outcome of those keys only.
package arbiter

import (
	"cmp"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	"kpo.dev/kpo/nodeagent/model"
)

// Source is how a ServicePort claims a key; lower wins.
type Source int

const (
	ClusterIP Source = iota
	LoadBalancerIP
	ExternalIP
	NodePort
)

func (s Source) String() string {
	return [...]string{"clusterIP", "load-balancer IP", "externalIP", "nodePort"}[s]
}

// reason is the Rejection reason of a ServicePort that lost a claim of this source.
func (s Source) reason() string {
	return [...]string{model.ReasonClusterIPConflict, model.ReasonLoadBalancerIPConflict,
		model.ReasonExternalIPConflict, model.ReasonNodePortConflict}[s]
}

// Key is what the kernel can hold once: an address, protocol and port, or a
// NodePort (Addr unset) of a protocol in a family.
type Key struct {
	Addr     netip.Addr
	Family   model.Family // NodePorts only: each family has its own tables
	Protocol corev1.Protocol
	Port     int32
}

func (k Key) String() string {
	if !k.Addr.IsValid() {
		return fmt.Sprintf("%d/%s", k.Port, k.Protocol)
	}
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.Addr, uint16(k.Port)), k.Protocol)
}

// claim is one ServicePort's claim on a key.
type claim struct {
	port   model.ServicePortKey
	source Source
}

// keyClaim is a key a ServicePort claims, and how.
type keyClaim struct {
	key    Key
	source Source
}

type entry struct {
	created time.Time
	claims  []keyClaim
}

// Conflict is one claim a ServicePort lost, and to whom.
type Conflict struct {
	Key          Key
	Source       Source
	Winner       model.ServicePortKey
	WinnerSource Source
	// Why says why the winner won.
	Why string
}

// Loss is what a ServicePort lost.
type Loss struct {
	// Dropped is set when its ClusterIP claim lost: the ServicePort is not
	// programmed at all (and its other claims count for nothing).
	Dropped *Conflict
	// Lost are the external and load-balancer IPs and the NodePort it lost.
	Lost []Conflict
}

// Apply is sp without what it lost; nil when it is dropped.
func (l *Loss) Apply(sp *model.ServicePort) *model.ServicePort {
	if l == nil {
		return sp
	}
	if l.Dropped != nil {
		return nil
	}
	var ext, lb []netip.Addr
	nodePort := false
	for _, c := range l.Lost {
		switch c.Source {
		case ExternalIP:
			ext = append(ext, c.Key.Addr)
		case LoadBalancerIP:
			lb = append(lb, c.Key.Addr)
		case NodePort:
			nodePort = true
		}
	}
	return sp.Without(ext, lb, nodePort)
}

// Rejections are the loss as rejections of the loser's Service.
func (l *Loss) Rejections(loser model.ServicePortKey) []model.Rejection {
	if l == nil {
		return nil
	}
	one := func(c *Conflict) model.Rejection {
		winner := fmt.Sprintf("the %s of %s/%s", c.WinnerSource, c.Winner.Namespace, c.Winner.Name)
		if c.Winner.Namespace == loser.Namespace && c.Winner.Name == loser.Name {
			winner = "the Service's own " + c.WinnerSource.String()
		}
		what := "not programmed"
		if c.Source == ClusterIP {
			what = fmt.Sprintf("port %q is not programmed", loser.Port)
		}
		return model.Rejection{Kind: model.KindService, Namespace: loser.Namespace, Name: loser.Name,
			Reason: c.Source.reason(),
			Message: fmt.Sprintf("%s %s (%s) is also %s, which wins (%s): %s",
				c.Source, c.Key, loser.Family, winner, c.Why, what)}
	}
	if l.Dropped != nil {
		return []model.Rejection{one(l.Dropped)}
	}
	out := make([]model.Rejection, 0, len(l.Lost))
	for i := range l.Lost {
		out = append(out, one(&l.Lost[i]))
	}
	return out
}

// Arbiter holds every claim and the current outcome. It is not safe for
// concurrent use (the tracker calls it under its lock).
type Arbiter struct {
	entries map[model.ServicePortKey]*entry
	claims  map[Key][]claim
	losses  map[model.ServicePortKey]*Loss
	touched map[Key]bool
}

// New returns an arbiter without claims.
func New() *Arbiter {
	return &Arbiter{
		entries: map[model.ServicePortKey]*entry{},
		claims:  map[Key][]claim{},
		losses:  map[model.ServicePortKey]*Loss{},
		touched: map[Key]bool{},
	}
}

// claimsOf lists what sp claims: its ClusterIP, load-balancer and external
// IPs with its port, and its NodePort.
func claimsOf(sp *model.ServicePort) []keyClaim {
	out := make([]keyClaim, 0, 2+len(sp.LoadBalancerIPs)+len(sp.ExternalIPs))
	forEachClaim(sp, func(kc keyClaim) { out = append(out, kc) })
	return out
}

func forEachClaim(sp *model.ServicePort, f func(keyClaim)) {
	vip := func(a netip.Addr, s Source) keyClaim {
		return keyClaim{Key{Addr: a, Protocol: sp.Protocol, Port: sp.Port}, s}
	}
	f(vip(sp.ClusterIP, ClusterIP))
	for _, a := range sp.LoadBalancerIPs {
		f(vip(a, LoadBalancerIP))
	}
	for _, a := range sp.ExternalIPs {
		f(vip(a, ExternalIP))
	}
	if sp.NodePort != 0 {
		f(keyClaim{Key{Family: sp.Key.Family, Protocol: sp.Protocol, Port: sp.NodePort}, NodePort})
	}
}

// claims reports whether sp claims exactly cs (without allocating: Set
// asks this of every rebuilt port).
func claims(sp *model.ServicePort, cs []keyClaim) bool {
	i, same := 0, true
	forEachClaim(sp, func(kc keyClaim) {
		same = same && i < len(cs) && cs[i] == kc
		i++
	})
	return same && i == len(cs)
}

// Set records sp's claims (new, or replacing its previous ones); created is
// its Service's creationTimestamp. Claims equal to the previous ones change
// nothing, so an endpoint change costs no arbitration.
func (a *Arbiter) Set(sp *model.ServicePort, created time.Time) {
	e := a.entries[sp.Key]
	if e != nil && e.created.Equal(created) && claims(sp, e.claims) {
		return
	}
	if e != nil {
		a.drop(sp.Key, e)
	}
	cs := claimsOf(sp)
	a.entries[sp.Key] = &entry{created: created, claims: cs}
	for _, kc := range cs {
		a.claims[kc.key] = append(a.claims[kc.key], claim{port: sp.Key, source: kc.source})
		a.touched[kc.key] = true
	}
}

// Remove forgets a ServicePort's claims.
func (a *Arbiter) Remove(k model.ServicePortKey) {
	if e := a.entries[k]; e != nil {
		a.drop(k, e)
		delete(a.entries, k)
	}
}

func (a *Arbiter) drop(k model.ServicePortKey, e *entry) {
	for _, kc := range e.claims {
		rest := slices.DeleteFunc(a.claims[kc.key], func(c claim) bool { return c.port == k })
		if len(rest) == 0 {
			delete(a.claims, kc.key)
		} else {
			a.claims[kc.key] = rest
		}
		a.touched[kc.key] = true
	}
}

// Loss is what the ServicePort lost at the last Resolve (nil: nothing).
func (a *Arbiter) Loss(k model.ServicePortKey) *Loss { return a.losses[k] }

// Losses calls f for every ServicePort that lost something.
func (a *Arbiter) Losses(f func(model.ServicePortKey, *Loss)) {
	for k, l := range a.losses {
		f(k, l)
	}
}

// Resolve decides the keys changed since the last Resolve and returns the
// ServicePorts whose Loss changed (their Services need a rebuild of what the
// backends see).
func (a *Arbiter) Resolve() []model.ServicePortKey {
	if len(a.touched) == 0 {
		return nil
	}
	r := resolution{a: a, dropped: map[model.ServicePortKey]*Conflict{}, winners: map[Key]*claim{}}
	// Ports whose own ClusterIP claim may have changed outcome: those with a
	// claim on a touched key. Only a dropped port's other claims can change
	// the outcome of keys nobody touched, so those keys are added next.
	ports := map[model.ServicePortKey]bool{}
	for key := range a.touched {
		for _, c := range a.claims[key] {
			ports[c.port] = true
		}
	}
	keys := a.touched
	for p := range ports {
		e := a.entries[p]
		if e == nil {
			continue
		}
		if (r.droppedBy(p) != nil) != (a.losses[p] != nil && a.losses[p].Dropped != nil) {
			for _, kc := range e.claims {
				keys[kc.key] = true
			}
		}
	}
	// Every port with a claim on one of those keys.
	for key := range keys {
		for _, c := range a.claims[key] {
			ports[c.port] = true
		}
	}
	a.touched = map[Key]bool{}

	var affected []model.ServicePortKey
	for p := range ports {
		loss := r.lossOf(p)
		if old := a.losses[p]; reflect.DeepEqual(old, loss) {
			continue
		}
		if loss == nil {
			delete(a.losses, p)
		} else {
			a.losses[p] = loss
		}
		affected = append(affected, p)
	}
	// Ports that went away keep no loss.
	for p := range a.losses {
		if a.entries[p] == nil {
			delete(a.losses, p)
			affected = append(affected, p)
		}
	}
	return affected
}

// resolution memoises one Resolve's decisions.
type resolution struct {
	a       *Arbiter
	dropped map[model.ServicePortKey]*Conflict
	winners map[Key]*claim
}

// better orders claims on one key: source, then the older Service, then
// namespace, name, port name.
func (r *resolution) better(x, y claim) int {
	ex, ey := r.a.entries[x.port], r.a.entries[y.port]
	return cmp.Or(
		cmp.Compare(x.source, y.source),
		ex.created.Compare(ey.created),
		cmp.Compare(x.port.Namespace, y.port.Namespace),
		cmp.Compare(x.port.Name, y.port.Name),
		cmp.Compare(x.port.Port, y.port.Port),
		cmp.Compare(x.port.Protocol, y.port.Protocol),
		cmp.Compare(x.port.Family, y.port.Family),
	)
}

// why says why winner beats loser.
func (r *resolution) why(winner, loser claim) string {
	ew, el := r.a.entries[winner.port], r.a.entries[loser.port]
	switch {
	case winner.source != loser.source:
		return fmt.Sprintf("%ss win over %ss", winner.source, loser.source)
	case ew.created.Before(el.created):
		return "its Service is older"
	case winner.port.Namespace == loser.port.Namespace && winner.port.Name == loser.port.Name:
		return "it comes first by port name"
	default:
		return "its Service is as old, and comes first by namespace/name"
	}
}

// droppedBy is the conflict that drops port p (its ClusterIP claim lost), or nil.
func (r *resolution) droppedBy(p model.ServicePortKey) *Conflict {
	if c, ok := r.dropped[p]; ok {
		return c
	}
	e := r.a.entries[p]
	var conflict *Conflict
	if e != nil {
		own := claim{port: p, source: ClusterIP}
		key := e.claims[0].key // claimsOf puts the ClusterIP first
		var best *claim
		for _, c := range r.a.claims[key] {
			if c.source == ClusterIP && (best == nil || r.better(c, *best) < 0) {
				best = &c
			}
		}
		if best != nil && *best != own {
			conflict = &Conflict{Key: key, Source: ClusterIP, Winner: best.port, WinnerSource: ClusterIP, Why: r.why(*best, own)}
		}
	}
	r.dropped[p] = conflict
	return conflict
}

// winner is the claim that gets key: the best ClusterIP claim if there is
// one (it is never dropped: it won its own key), else the best claim of a
// port that is not dropped.
func (r *resolution) winner(key Key) *claim {
	if w, ok := r.winners[key]; ok {
		return w
	}
	var best *claim
	for _, c := range r.a.claims[key] {
		if c.source != ClusterIP && r.droppedBy(c.port) != nil {
			continue
		}
		if best == nil || r.better(c, *best) < 0 {
			best = &c
		}
	}
	r.winners[key] = best
	return best
}

func (r *resolution) lossOf(p model.ServicePortKey) *Loss {
	e := r.a.entries[p]
	if e == nil {
		return nil
	}
	if c := r.droppedBy(p); c != nil {
		return &Loss{Dropped: c}
	}
	var lost []Conflict
	for _, kc := range e.claims[1:] {
		own := claim{port: p, source: kc.source}
		if w := r.winner(kc.key); w != nil && *w != own {
			lost = append(lost, Conflict{Key: kc.key, Source: kc.source, Winner: w.port, WinnerSource: w.source, Why: r.why(*w, own)})
		}
	}
	if len(lost) == 0 {
		return nil
	}
	return &Loss{Lost: lost}
}
