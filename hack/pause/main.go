// Command pause is the local nodes' sandbox ("pause") image: the first
// process of every pod, holding its namespaces. Like Kubernetes' pause, it
// waits for SIGINT or SIGTERM and, as PID 1 of the pod's PID namespace when
// one is shared, reaps the children that are re-parented to it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
