package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/netsetup"
)

// containerIndexDir holds one file per CNI container id whose NICs live in a
// sandbox of another id (found through VMNIC_SANDBOX_ID or the netns): it
// lets a DEL without the netns still find the sandbox.
const containerIndexDir = "cni-containers"

// Resolve finds the sandbox of a CNI call, as DESIGN.md says: the explicit
// id (CNI_ARGS VMNIC_SANDBOX_ID) if given; else the sandbox whose recorded
// netns is the namespace at netnsPath (device and inode compared); else the
// sandbox the container id was recorded under; else the container id.
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

func (m *Manager) containerIndexPath(containerID string) string {
	return filepath.Join(m.Store.Dir(), containerIndexDir, containerID)
}

// containerSandbox reads the container index ("" when none or invalid).
func (m *Manager) containerSandbox(containerID string) string {
	if netsetup.ValidateSandboxID(containerID) != nil {
		return ""
	}
	f, err := os.OpenFile(m.containerIndexPath(containerID), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return ""
	}
	defer f.Close()
	buf := make([]byte, netsetup.MaxSandboxIDLen+2)
	n, _ := f.Read(buf)
	id := strings.TrimSpace(string(buf[:n]))
	if netsetup.ValidateSandboxID(id) != nil {
		return ""
	}
	return id
}

// indexContainer records that containerID's NICs live in sandbox id (no-op
// when the ids are equal or the entry exists).
func (m *Manager) indexContainer(containerID, id string) error {
	if containerID == "" || containerID == id || netsetup.ValidateSandboxID(containerID) != nil {
		return nil
	}
	if m.containerSandbox(containerID) == id {
		return nil
	}
	dir := filepath.Join(m.Store.Dir(), containerIndexDir)
	var tmp *os.File
	for attempt := 0; ; attempt++ {
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("container index: %w", err)
		}
		f, err := os.CreateTemp(dir, ".tmp-*")
		if errors.Is(err, fs.ErrNotExist) && attempt < 10 {
			continue // removed as empty meanwhile
		}
		if err != nil {
			return fmt.Errorf("container index: %w", err)
		}
		tmp = f
		break
	}
	_, werr := tmp.WriteString(id + "\n")
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("container index: %w", err)
	}
	if err := os.Rename(tmp.Name(), m.containerIndexPath(containerID)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("container index: %w", err)
	}
	return nil
}

// unindexContainers drops the index entries of the container ids that no
// NIC of rec uses any more (rec nil: the sandbox is gone).
func (m *Manager) unindexContainers(id string, rec *netsetup.NetSetup, containerIDs ...string) {
	for _, cid := range containerIDs {
		if cid == "" || cid == id || m.containerSandbox(cid) != id {
			continue
		}
		used := false
		if rec != nil {
			for _, n := range rec.NetworkConfigs {
				if n.ContainerID == cid {
					used = true
					break
				}
			}
		}
		if !used {
			os.Remove(m.containerIndexPath(cid))
			os.Remove(filepath.Join(m.Store.Dir(), containerIndexDir)) // only when empty
		}
	}
}
