package ipvs

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// FakeIPSet is an in-memory IPSet that refuses what ipset 7.17 refuses for
// the commands the companion rules use (TestIPSetFakeParity holds it to the
// real one): create (an existing name only with -exist and the same type,
// names up to 31 characters), flush, add and del (elements parsed by the
// set's type and family; adding a present element or deleting a missing one
// only with -exist), swap (same type and family) and destroy, of sets that
// exist.
//
// Not modelled: ipset refuses to destroy a set an iptables rule uses
// (EBUSY); and after a refused script the fake keeps the commands before
// the failing one, where ipset may also have lost the additions it had
// batched for the same set. What a refused script leaves is not held to
// ipset's: the companion rules rebuild every set after a failure.
type FakeIPSet struct {
	mu   sync.Mutex
	sets map[string]*fakeSet
	// Scripts logs every script Restore was given.
	Scripts []string
}

type fakeSet struct {
	typ, family string
	lo, hi      int // bitmap:port range
	elems       map[string]bool
}

// NewFakeIPSet returns a fake without sets.
func NewFakeIPSet() *FakeIPSet { return &FakeIPSet{sets: map[string]*fakeSet{}} }

// Restore implements IPSet.
func (f *FakeIPSet) Restore(script string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Scripts = append(f.Scripts, script)
	for i, line := range strings.Split(script, "\n") {
		args := strings.Fields(line)
		if len(args) == 0 {
			continue
		}
		if err := f.command(args); err != nil {
			return fmt.Errorf("ipset restore: line %d: %w", i+1, err)
		}
	}
	return nil
}

// Names implements IPSet.
func (f *FakeIPSet) Names() ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.sets)), nil
}

// Has reports whether a set exists (for iptables.Fake.SetExists).
func (f *FakeIPSet) Has(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sets[name] != nil
}

// Members implements IPSet.
func (f *FakeIPSet) Members(name string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sets[name]
	if s == nil {
		return nil, fmt.Errorf("ipset save %s: the set with the given name does not exist", name)
	}
	return slices.Sorted(maps.Keys(s.elems)), nil
}

var errNoSet = errors.New("the set with the given name does not exist")

func (f *FakeIPSet) command(args []string) error {
	exist := slices.Contains(args, "-exist")
	args = slices.DeleteFunc(slices.Clone(args), func(a string) bool { return a == "-exist" })
	if len(args) < 2 {
		return fmt.Errorf("syntax error: %q", strings.Join(args, " "))
	}
	op, name := args[0], args[1]
	if op == "create" {
		return f.create(name, args[2:], exist)
	}
	s := f.sets[name]
	if s == nil {
		return fmt.Errorf("%s: %w", name, errNoSet)
	}
	switch {
	case op == "flush" && len(args) == 2:
		s.elems = map[string]bool{}
	case op == "destroy" && len(args) == 2:
		delete(f.sets, name)
	case op == "swap" && len(args) == 3:
		o := f.sets[args[2]]
		if o == nil {
			return fmt.Errorf("%s: %w", args[2], errNoSet)
		}
		if o.typ != s.typ || o.family != s.family {
			return errors.New("the sets cannot be swapped: their type does not match")
		}
		f.sets[name], f.sets[args[2]] = o, s
	case (op == "add" || op == "del") && len(args) == 3:
		e, err := s.parse(args[2])
		if err != nil {
			return err
		}
		switch {
		case op == "add" && s.elems[e] && !exist:
			return errors.New("element cannot be added to the set: it's already added")
		case op == "del" && !s.elems[e] && !exist:
			return errors.New("element cannot be deleted from the set: it's not added")
		case op == "add":
			s.elems[e] = true
		default:
			delete(s.elems, e)
		}
	default:
		return fmt.Errorf("syntax error: %q", strings.Join(args, " "))
	}
	return nil
}

func (f *FakeIPSet) create(name string, spec []string, exist bool) error {
	if len(name) > 31 {
		return fmt.Errorf("setname %q is longer than 31 characters", name)
	}
	if len(spec) == 0 {
		return errors.New("syntax error: no set type")
	}
	s := &fakeSet{typ: spec[0], family: "inet", elems: map[string]bool{}}
	switch s.typ {
	case "hash:ip", "hash:ip,port", "hash:ip,port,ip", "hash:ip,port,net", "bitmap:port":
	default:
		return fmt.Errorf("unknown set type %q", s.typ)
	}
	for i := 1; i < len(spec); i += 2 {
		if i+1 >= len(spec) {
			return fmt.Errorf("syntax error: %q needs a value", spec[i])
		}
		switch v := spec[i+1]; {
		case spec[i] == "family" && (v == "inet" || v == "inet6") && s.typ != "bitmap:port":
			s.family = v
		case spec[i] == "range" && s.typ == "bitmap:port":
			lo, hi, ok := strings.Cut(v, "-")
			var err1, err2 error
			s.lo, err1 = strconv.Atoi(lo)
			s.hi, err2 = strconv.Atoi(hi)
			if !ok || err1 != nil || err2 != nil || s.lo < 0 || s.hi > 65535 || s.lo > s.hi {
				return fmt.Errorf("syntax error: range %q", v)
			}
		default:
			return fmt.Errorf("syntax error: %q %q", spec[i], v)
		}
	}
	if s.typ == "bitmap:port" && s.hi == 0 {
		return errors.New("syntax error: bitmap:port needs a range")
	}
	if old := f.sets[name]; old != nil {
		if !exist || old.typ != s.typ || old.family != s.family || old.lo != s.lo || old.hi != s.hi {
			return errors.New("set cannot be created: set with the same name already exists")
		}
		return nil
	}
	f.sets[name] = s
	return nil
}

// parse checks an element against the set's type and family and returns
// it as ipset save prints it.
func (s *fakeSet) parse(e string) (string, error) {
	bad := func(why string) (string, error) { return "", fmt.Errorf("syntax error: %q: %s", e, why) }
	parts := strings.Split(e, ",")
	if s.typ == "bitmap:port" {
		p, err := strconv.Atoi(e)
		if err != nil || p < s.lo || p > s.hi {
			return bad("not a port of the range")
		}
		return strconv.Itoa(p), nil
	}
	want := map[string]int{"hash:ip": 1, "hash:ip,port": 2, "hash:ip,port,ip": 3, "hash:ip,port,net": 3}[s.typ]
	if len(parts) != want {
		return bad("wrong number of parts")
	}
	out := make([]string, len(parts))
	for i, p := range parts {
		switch {
		case i == 1:
			proto, port, ok := strings.Cut(p, ":")
			if !ok {
				proto, port = "tcp", p
			}
			n, err := strconv.Atoi(port)
			if (proto != "tcp" && proto != "udp" && proto != "sctp") || err != nil || n < 0 || n > 65535 {
				return bad("protocol and port")
			}
			out[i] = proto + ":" + strconv.Itoa(n)
		case i == 2 && s.typ == "hash:ip,port,net" && strings.Contains(p, "/"):
			pfx, err := netip.ParsePrefix(p)
			if err != nil || pfx.Bits() == 0 || !s.inFamily(pfx.Addr()) {
				return bad("network")
			}
			pfx = pfx.Masked()
			out[i] = pfx.String()
			if pfx.IsSingleIP() {
				out[i] = pfx.Addr().String()
			}
		default:
			a, err := netip.ParseAddr(p)
			if err != nil || !s.inFamily(a) {
				return bad("address of the set's family")
			}
			out[i] = a.String()
		}
	}
	return strings.Join(out, ","), nil
}

func (s *fakeSet) inFamily(a netip.Addr) bool {
	return a.Is4() == (s.family == "inet") && !a.Is4In6()
}
