// Command vmnic-guest-agent is the guest side of the tests' and the demo's
// QEMU guest: it polls a guest config file (the json format of `vmnicctl
// guest-config`, or the NetSetup record's live copy shared into the guest)
// and applies each attached NIC as it appears, printing one line per NIC
// it configured.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/guestagent"
)

func main() {
	path := flag.String("config", "", "guest config file to apply (json document or the record's live copy)")
	interval := flag.Duration("interval", 200*time.Millisecond, "how often the file is read again")
	once := flag.Bool("once", false, "apply once and exit")
	flag.Parse()
	if *path == "" {
		fmt.Fprintln(os.Stderr, "vmnic-guest-agent: -config is required")
		os.Exit(2)
	}
	a := guestagent.New()
	var last string
	for {
		msg := step(a, *path)
		if msg != "" && msg != last {
			fmt.Fprintln(os.Stderr, "vmnic-guest-agent: "+msg)
		}
		last = msg
		if *once {
			if msg != "" {
				os.Exit(1)
			}
			return
		}
		time.Sleep(*interval)
	}
}

// step applies the file once; it returns a problem to report ("" if none).
func step(a *guestagent.Agent, path string) string {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	if err != nil {
		return err.Error()
	}
	gc, err := guestagent.Parse(data)
	if err != nil {
		return err.Error()
	}
	done, err := a.Apply(gc)
	for _, d := range done {
		fmt.Printf("vmnic-guest-agent: %s is %s: %s\n", d.Name, d.Dev, d.Summary)
	}
	if err != nil {
		return err.Error()
	}
	return ""
}
