// Command vmmprobe stands in for a VMM in the e2e suite's "VMM container".
//
//	vmmprobe          wait for SIGTERM/SIGINT (the container's main process)
//	vmmprobe report   print, as JSON, what the container sees: /dev/net/tun,
//	                  the VMNIC_* environment of PID 1, the NetSetup file,
//	                  the network namespace, mounts and links.
//	vmmprobe ch       serve Cloud Hypervisor's API (the simulator) on
//	                  $VMNIC_RUNTIME_DIR/ch.sock, with a stand-in guest on
//	                  the TAP fds vmnic hands over (ch.go)
//
// The report reads PID 1's view (/proc/1/...) so that it describes the
// container's main process even when run through CRI ExecSync.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmnic/vmnic/e2e/internal/probe"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "report" {
		r := probe.Collect()
		enc := json.NewEncoder(os.Stdout)
		if err := enc.Encode(r); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "ch" {
		if err := runCH(); err != nil {
			fmt.Fprintln(os.Stderr, "vmmprobe ch:", err)
			os.Exit(1)
		}
		return
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	<-sigs
}
