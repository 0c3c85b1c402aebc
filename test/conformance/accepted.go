package conformance

// Acceptance is a difference from kube-proxy that kpo makes on purpose. Each
// is listed, with the same ID and its reason, in docs/conformance.md; the
// default is to match kube-proxy, and a difference not listed fails the run.
type Acceptance struct {
	ID  string
	Why string
	// Match says whether a confirmed difference is this one.
	Match func(d Diff) bool
}

// acceptances is the list docs/conformance.md explains.
var acceptances = []Acceptance{}

func accepted(d Diff) *Acceptance {
	for i := range acceptances {
		if acceptances[i].Match(d) {
			return &acceptances[i]
		}
	}
	return nil
}
