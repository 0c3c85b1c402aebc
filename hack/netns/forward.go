package netns

import (
	"io"
	"net"
)

// Forward listens on listenAddr inside from and relays every connection to
// dialAddr, dialed inside to; a nil namespace is this process's own. It is how
// a process in one namespace reaches a server in another without any route
// between them (the API server from node namespaces in tests, the local
// cluster's API server from the host's kubectl). Close the listener to stop.
func Forward(from *NS, listenAddr string, to *NS, dialAddr string) (net.Listener, error) {
	var l net.Listener
	listen := func() error {
		var err error
		l, err = net.Listen("tcp", listenAddr)
		return err
	}
	if err := in(from, listen); err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go relay(c, to, dialAddr)
		}
	}()
	return l, nil
}

func relay(c net.Conn, to *NS, dialAddr string) {
	defer func() { _ = c.Close() }()
	var up net.Conn
	if err := in(to, func() error {
		var err error
		up, err = net.Dial("tcp", dialAddr)
		return err
	}); err != nil {
		return // the client sees the connection close
	}
	defer func() { _ = up.Close() }()
	go func() { _, _ = io.Copy(up, c); _ = up.(*net.TCPConn).CloseWrite() }()
	_, _ = io.Copy(c, up)
}

// in runs fn inside ns, or right here when ns is nil.
func in(ns *NS, fn func() error) error {
	if ns == nil {
		return fn()
	}
	return ns.Do(fn)
}
