// The sandbox ("pause") process of every pod that hack/node.sh runs: it holds the pod's namespaces, reaps orphans,
// and exits on SIGINT/SIGTERM. Built static (CGO_ENABLED=0) by build.sh node; the image is this binary alone.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
