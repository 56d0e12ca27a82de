// Command vmnic is the vmnic CNI plugin (type "vmnic"). Chained after a
// plugin that makes a veth (bridge, ptp, …), it turns that interface into a
// TAP for a microVM: the TAP is joined to the veth by tc redirect in the
// sandbox netns (or is a port of a host bridge), recorded in the sandbox's
// NetSetup state file, and hot-added into the sandbox's running VMM.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

func init() {
	// Netns changes are per thread: keep main on one thread.
	runtime.LockOSThread()
}

// buildVersion is set with -ldflags "-X main.buildVersion=…".
var buildVersion = "dev"

func main() {
	funcs := skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus}
	about := fmt.Sprintf("CNI plugin vmnic %s (TAP devices for microVMs; CNI %s)", buildVersion, strings.Join(SupportedVersions, ", "))
	if e := skel.PluginMainFuncsWithError(funcs, version.PluginSupports(SupportedVersions...), about); e != nil {
		if e.Code == types.ErrIncompatibleCNIVersion && e.Msg == "incompatible CNI versions" {
			e.Msg = fmt.Sprintf("incompatible CNI versions: vmnic supports %s", strings.Join(SupportedVersions, ", "))
		}
		if err := e.Print(); err != nil {
			fmt.Fprintln(os.Stderr, "vmnic: write the error to stdout:", err)
		}
		os.Exit(1)
	}
}
