package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
)

// expectServer polls until a request from `from` to addr is answered (by want,
// unless want is empty) and returns the reply.
func expectServer(t *testing.T, from *netns.NS, network, addr, want string) netns.Reply {
	t.Helper()
	return expectServerFrom(t, from, network, "", addr, want)
}

func expectServerFrom(t *testing.T, from *netns.NS, network, local, addr, want string) netns.Reply {
	t.Helper()
	var r netns.Reply
	apiserver.Eventually(t, settle, func() error {
		var err error
		r, err = from.DialFrom(network, local, addr, dialTimeout)
		if err != nil {
			return fmt.Errorf("%s %s from %s: %w", network, addr, from.Name, err)
		}
		if want != "" && r.Server != want {
			return fmt.Errorf("%s %s from %s answered by %s, want %s", network, addr, from.Name, r.Server, want)
		}
		return nil
	})
	return r
}

// expectSpread polls until every server in want has answered, and fails if
// another one answers.
func expectSpread(t *testing.T, from *netns.NS, network, addr string, want ...string) {
	t.Helper()
	allowed := map[string]bool{}
	for _, w := range want {
		allowed[w] = true
	}
	seen := map[string]bool{}
	apiserver.Eventually(t, settle, func() error {
		r, err := from.Dial(network, addr, dialTimeout)
		if err != nil {
			return fmt.Errorf("%s %s from %s: %w", network, addr, from.Name, err)
		}
		if !allowed[r.Server] {
			t.Fatalf("%s %s from %s answered by %s, not one of %v", network, addr, from.Name, r.Server, want)
		}
		seen[r.Server] = true
		if len(seen) < len(want) {
			return fmt.Errorf("only %v answered so far, want all of %v", seen, want)
		}
		return nil
	})
}

// expectUnanswered polls until TCP to addr times out (dropped, not refused):
// what a packet that no rule translates, or a firewall drop, looks like here.
func expectUnanswered(t *testing.T, from *netns.NS, addr string) {
	t.Helper()
	apiserver.Eventually(t, settle, func() error {
		r, err := from.Dial("tcp", addr, 500*time.Millisecond)
		if err == nil {
			return fmt.Errorf("%s answered by %s, want no answer", addr, r.Server)
		}
		if !errors.Is(err, netns.ErrTimeout) {
			return fmt.Errorf("%s: %v, want a timeout", addr, err)
		}
		return nil
	})
}

// expectHTTP polls until GET http://addr/ from `from` returns code.
func expectHTTP(t *testing.T, from *netns.NS, addr string, code int) {
	t.Helper()
	apiserver.Eventually(t, settle, func() error {
		var got int
		// A hand-written request: http.Client dials on another goroutine, which
		// would not be inside the namespace.
		err := from.Do(func() error {
			c, err := net.DialTimeout("tcp", addr, dialTimeout)
			if err != nil {
				return err
			}
			defer func() { _ = c.Close() }()
			_ = c.SetDeadline(time.Now().Add(dialTimeout))
			if _, err := fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", addr); err != nil {
				return err
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				return err
			}
			got = resp.StatusCode
			return resp.Body.Close()
		})
		if err != nil {
			return err
		}
		if got != code {
			return fmt.Errorf("GET %s = %d, want %d", addr, got, code)
		}
		return nil
	})
}
