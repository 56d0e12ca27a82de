package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
)

// conflist is a CNI network configuration list.
type conflist struct {
	CNIVersion string           `json:"cniVersion"`
	Name       string           `json:"name"`
	Plugins    []map[string]any `json:"plugins"`
}

// bridgePlugin is the first plugin of every chain: a bridge with host-local
// IPAM whose leases live under the suite's IPAM dir.
func (e *Env) bridgePlugin(bridge, subnet string) map[string]any {
	return map[string]any{
		"type":        "bridge",
		"bridge":      bridge,
		"isGateway":   true,
		"ipMasq":      false,
		"hairpinMode": false,
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  [][]map[string]string{{{"subnet": subnet}}},
			"dataDir": e.IPAMDir,
		},
	}
}

// vmnicPlugin is vmnic's entry in a chain; its state dir is the suite's.
func (e *Env) vmnicPlugin() map[string]any {
	return map[string]any{
		"type":     "vmnic",
		"stateDir": e.VmnicState,
		"logFile":  filepath.Join(e.Dir, "vmnic-cni.log"),
		"logLevel": "debug",
		// The VMM API sockets live in the suite's runtime dirs.
		"vmmSocketDirs": []string{e.VmnicRun},
	}
}

// chain returns a conflist of the bridge network, with vmnic last when wanted
// (and built).
func (e *Env) chain(name, bridge, subnet string, withVmnic bool) conflist {
	c := conflist{CNIVersion: "1.0.0", Name: name, Plugins: []map[string]any{e.bridgePlugin(bridge, subnet)}}
	if withVmnic && e.HasVmnicCNI {
		c.Plugins = append(c.Plugins, e.vmnicPlugin())
	}
	return c
}

// fdChain is chain with vmnic's tapHandoff "fd": the VMM must take the TAP
// fds (an ADD for a VMM that cannot fails).
func (e *Env) fdChain(name, bridge, subnet string) conflist {
	c := e.chain(name, bridge, subnet, true)
	if e.HasVmnicCNI {
		c.Plugins[len(c.Plugins)-1]["tapHandoff"] = "fd"
	}
	return c
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

// writeCNIConfigs writes the conflists: the default handler's plain chain,
// the vm handler's chain with vmnic (and the fd handler's, at tapHandoff
// "fd"), and the second network the tests hot-add (both ways).
// Both chains of the first network share its name, so they share one
// host-local lease pool.
func (e *Env) writeCNIConfigs() error {
	if err := writeJSON(filepath.Join(e.PlainConf, "10-vmne2e.conflist"), e.chain(net0Name, net0Bridge, net0Subnet, false)); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(e.VMConf, "10-vmne2e.conflist"), e.chain(net0Name, net0Bridge, net0Subnet, true)); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(e.FdConf, "10-vmne2e.conflist"), e.fdChain(net0Name, net0Bridge, net0Subnet)); err != nil {
		return err
	}
	if err := writeJSON(e.Net2FdConf, e.fdChain(net1Name, net1Bridge, net1Subnet)); err != nil {
		return err
	}
	return writeJSON(e.Net2Conf, e.chain(net1Name, net1Bridge, net1Subnet, true))
}
