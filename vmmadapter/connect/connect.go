// Package connect opens the vmmadapter.Adapter for a VMM kind. It is the one
// place that imports every per-VMM package.
package connect

import (
	"fmt"
	"strings"

	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/cloudhypervisor"
	"github.com/vmnic/vmnic/vmmadapter/firecracker"
	"github.com/vmnic/vmnic/vmmadapter/qemu"
)

// Open returns the adapter for kind talking to socket (Cloud Hypervisor's
// --api-socket, Firecracker's --api-sock, QEMU's QMP socket). It does not
// connect: an absent VMM shows up as vmmadapter.ErrUnavailable on the first
// call.
func Open(kind vmmadapter.Kind, socket string, opts vmmadapter.Options) (vmmadapter.Adapter, error) {
	if socket == "" {
		return nil, fmt.Errorf("open %s adapter: no API socket given", kind)
	}
	switch kind {
	case vmmadapter.CloudHypervisor:
		a, err := cloudhypervisor.New(socket, opts)
		if err != nil {
			return nil, err
		}
		return a, nil
	case vmmadapter.Firecracker:
		a, err := firecracker.New(socket, opts)
		if err != nil {
			return nil, err
		}
		return a, nil
	case vmmadapter.QEMU:
		a, err := qemu.New(socket, opts)
		if err != nil {
			return nil, err
		}
		return a, nil
	}
	return nil, fmt.Errorf("open adapter: unknown VMM kind %q (known: %s)", kind, kindList())
}

// ParseKind reads a kind as users type it: the stored names
// ("cloud-hypervisor", "firecracker", "qemu") and the short forms "ch",
// "clh", "fc".
func ParseKind(s string) (vmmadapter.Kind, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "cloud-hypervisor", "cloudhypervisor", "ch", "clh":
		return vmmadapter.CloudHypervisor, nil
	case "firecracker", "fc":
		return vmmadapter.Firecracker, nil
	case "qemu":
		return vmmadapter.QEMU, nil
	}
	return "", fmt.Errorf("unknown VMM kind %q (known: %s)", s, kindList())
}

func kindList() string {
	names := make([]string, len(vmmadapter.Kinds))
	for i, k := range vmmadapter.Kinds {
		names[i] = string(k)
	}
	return strings.Join(names, ", ")
}
