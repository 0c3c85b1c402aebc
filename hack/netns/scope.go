package netns

import (
	"fmt"
	"sync"
)

// Scope is a T for programs (the local cluster under hack/): it collects
// teardown functions, Fatalf aborts the function run by Build, and Close runs
// every cleanup in reverse order, as a test's end does.
type Scope struct {
	mu  sync.Mutex
	fns []func()
}

type fatal struct{ err error }

// Helper is a no-op (netns.T).
func (s *Scope) Helper() {}

// Fatalf aborts the function run by Build with the formatted error.
func (s *Scope) Fatalf(format string, args ...any) {
	panic(fatal{fmt.Errorf(format, args...)})
}

// Cleanup registers fn to run at Close.
func (s *Scope) Cleanup(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fns = append(s.fns, fn)
}

// Close runs the registered cleanups, last first. It may be called again.
func (s *Scope) Close() {
	for {
		s.mu.Lock()
		if len(s.fns) == 0 {
			s.mu.Unlock()
			return
		}
		fn := s.fns[len(s.fns)-1]
		s.fns = s.fns[:len(s.fns)-1]
		s.mu.Unlock()
		fn()
	}
}

// Build runs fn, turning a Fatalf inside it into the returned error.
func Build(s *Scope, fn func(s *Scope)) (err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			err = f.err
		}
	}()
	fn(s)
	return nil
}
