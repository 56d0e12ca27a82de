package sandbox

import (
	"errors"

	"github.com/vmnic/vmnic/netsetup"
)

// Resolve finds the sandbox of a CNI call, as DESIGN.md says: the explicit
// id (CNI_ARGS VMNIC_SANDBOX_ID) if given; else the sandbox whose recorded
// netns is the namespace at netnsPath (device and inode compared); else the
// sandbox the container id was recorded under (the container index, kept by
// netsetup for a container whose NICs live in a sandbox of another id: it
// lets a DEL without the netns still find the sandbox); else the container
// id.
func (m *Manager) Resolve(explicit, netnsPath, containerID string) (string, error) {
	var nsid *netsetup.NetnsID
	if explicit == "" && netnsPath != "" {
		if id, err := netsetup.IdentifyNetns(netnsPath); err == nil {
			nsid = &id
		}
	}
	return m.ResolveIdentified(explicit, netnsPath, nsid, containerID)
}

// ResolveIdentified is Resolve for a caller that has already identified
// the netns at netnsPath as nsid (nil: none, or not a netns).
func (m *Manager) ResolveIdentified(explicit, netnsPath string, nsid *netsetup.NetnsID, containerID string) (string, error) {
	if explicit != "" {
		if err := netsetup.ValidateSandboxID(explicit); err != nil {
			return "", coded(CodeInvalidEnv, err, "CNI_ARGS VMNIC_SANDBOX_ID")
		}
		return explicit, nil
	}
	if nsid != nil {
		id, err := m.Store.FindByNetns(*nsid)
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, netsetup.ErrNotFound) {
			return "", coded(CodeIOFailure, err, "find the sandbox of netns %s", netnsPath)
		}
	}
	if id := m.containerSandbox(containerID); id != "" {
		return id, nil
	}
	if err := netsetup.ValidateSandboxID(containerID); err != nil {
		return "", coded(CodeInvalidEnv, err, "CNI_CONTAINERID")
	}
	return containerID, nil
}

// containerSandbox reads the container index ("" when none or invalid).
func (m *Manager) containerSandbox(containerID string) string {
	return m.Store.ContainerSandbox(containerID)
}

// indexContainer records that containerID's NICs live in sandbox id (no-op
// when the ids are equal or the entry exists).
func (m *Manager) indexContainer(containerID, id string) error {
	return m.Store.IndexContainer(containerID, id)
}

// unindexContainers drops the index entries of the container ids that no
// NIC of rec uses any more (rec nil: the sandbox is gone).
func (m *Manager) unindexContainers(id string, rec *netsetup.NetSetup, containerIDs ...string) {
	m.Store.UnindexContainers(id, rec, containerIDs...)
}
