// Command echoserver is the demo app of the local cluster: it answers each TCP
// connection and each UDP datagram on --port with one line, "<name> <client
// address>", where name is --name or $POD_NAME or the host name. The name tells
// which pod answered a request sent to a Service.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"kpo.dev/kpo/hack/netns"
)

func main() {
	port := flag.Int("port", 8080, "TCP and UDP port to answer on")
	name := flag.String("name", os.Getenv("POD_NAME"), "name to answer with (default $POD_NAME, else the host name)")
	flag.Parse()
	if *name == "" {
		*name, _ = os.Hostname()
	}
	addr := fmt.Sprintf(":%d", *port)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go netns.ServeTCP(l, *name)
	go netns.ServeUDP(c, *name)
	fmt.Printf("echoserver %s: answering on tcp and udp %s\n", *name, addr)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
