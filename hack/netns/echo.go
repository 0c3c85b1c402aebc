package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// ServeEcho runs an echo server inside the namespace on network ("tcp" or
// "udp") and addr. Each TCP connection and each UDP datagram is answered with
// one line: "<name> <client address as the server saw it>". It stops when the
// test ends.
func (n *NS) ServeEcho(t T, network, addr, name string) {
	t.Helper()
	var closer func() error
	err := n.Do(func() error {
		switch network {
		case "tcp", "tcp4", "tcp6":
			l, err := net.Listen(network, addr)
			if err != nil {
				return err
			}
			closer = l.Close
			go ServeTCP(l, name)
		case "udp", "udp4", "udp6":
			c, err := net.ListenPacket(network, addr)
			if err != nil {
				return err
			}
			closer = c.Close
			go ServeUDP(c, name)
		default:
			return fmt.Errorf("network %q", network)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("echo server %s %s in %s: %v", network, addr, n.Name, err)
	}
	t.Cleanup(func() { _ = closer() })
}

// ServeTCP answers each connection accepted on l with one line, "<name>
// <client address>", until l is closed.
func ServeTCP(l net.Listener, name string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer func() { _ = c.Close() }()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
		}()
	}
}

// ServeUDP answers each datagram read from c with one line, "<name> <client
// address>", until c is closed.
func ServeUDP(c net.PacketConn, name string) {
	buf := make([]byte, 1500)
	for {
		_, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = c.WriteTo(fmt.Appendf(nil, "%s %s\n", name, from), from)
	}
}

// Reply is an echo server's answer.
type Reply struct {
	// Server is the name of the echo server that answered.
	Server string
	// Client is the client address the server saw (ip:port).
	Client string
}

// ClientIP is the IP part of Client.
func (r Reply) ClientIP() string {
	host, _, _ := net.SplitHostPort(r.Client)
	return host
}

// ErrRefused is returned by Dial when the connection was actively refused (a
// TCP RST or an ICMP port/admin-prohibited error), as opposed to a timeout.
var ErrRefused = errors.New("connection refused")

// ErrTimeout is returned by Dial when nothing answered in time.
var ErrTimeout = errors.New("timeout")

// Dial connects from inside the namespace to an echo server and returns its reply.
// A refused connection returns ErrRefused, no answer ErrTimeout.
func (n *NS) Dial(network, addr string, timeout time.Duration) (Reply, error) {
	return n.DialFrom(network, "", addr, timeout)
}

// DialFrom is Dial from a fixed local address (ip:port, either may be empty), so
// that consecutive UDP exchanges share one conntrack entry.
func (n *NS) DialFrom(network, local, addr string, timeout time.Duration) (Reply, error) {
	var line string
	err := n.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		d := net.Dialer{}
		if local != "" {
			var err error
			if strings.HasPrefix(network, "udp") {
				d.LocalAddr, err = net.ResolveUDPAddr(network, local)
			} else {
				d.LocalAddr, err = net.ResolveTCPAddr(network, local)
			}
			if err != nil {
				return err
			}
		}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return classify(err)
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(timeout))
		if strings.HasPrefix(network, "udp") {
			if _, err := c.Write([]byte("ping\n")); err != nil {
				return classify(err)
			}
		}
		line, err = bufio.NewReader(c).ReadString('\n')
		return classify(err)
	})
	if err != nil {
		return Reply{}, err
	}
	server, client, _ := strings.Cut(strings.TrimSpace(line), " ")
	return Reply{Server: server, Client: client}, nil
}

func classify(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "connection refused"), strings.Contains(msg, "no route to host"),
		strings.Contains(msg, "permission denied"), strings.Contains(msg, "network is unreachable"):
		return fmt.Errorf("%w: %v", ErrRefused, err)
	case errors.Is(err, context.DeadlineExceeded), strings.Contains(msg, "timeout"), strings.Contains(msg, "i/o timeout"):
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	}
	return err
}
