package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Netdev features by their ethtool names ("rx-gro",
// "rx-udp-gro-forwarding", ...), read and set through the SIOCETHTOOL
// ioctl (include/uapi/linux/ethtool.h: ETHTOOL_GSSET_INFO and
// ETHTOOL_GSTRINGS for the names of the ETH_SS_FEATURES string set,
// ETHTOOL_GFEATURES, ETHTOOL_SFEATURES; net/ethtool/ioctl.c), in the
// calling thread's netns.

const (
	ethSSFeatures  = 4 // ETH_SS_FEATURES
	ethGStringLen  = 32
	ethtoolFeature = 32 // bits per ethtool_get_features_block / ethtool_set_features_block
)

// ifreqPtr is struct ifreq with ifr_data: the interface name, then a
// pointer, padded to the union's 24 bytes.
type ifreqPtr struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

func ethtoolIoctl(fd int, ifname string, data unsafe.Pointer) error {
	var ifr ifreqPtr
	if len(ifname) >= unix.IFNAMSIZ {
		return fmt.Errorf("interface name %q too long", ifname)
	}
	copy(ifr.name[:], ifname)
	ifr.data = data
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(data)
	if errno != 0 {
		return errno
	}
	return nil
}

// featureNames are the names of dev's feature bits, by bit.
func featureNames(fd int, ifname string) ([]string, error) {
	// struct ethtool_sset_info: cmd, reserved, sset_mask (u64), data[].
	var info struct {
		cmd      uint32
		reserved uint32
		mask     uint64
		data     [1]uint32
	}
	info.cmd = unix.ETHTOOL_GSSET_INFO
	info.mask = 1 << ethSSFeatures
	if err := ethtoolIoctl(fd, ifname, unsafe.Pointer(&info)); err != nil {
		return nil, fmt.Errorf("ETHTOOL_GSSET_INFO on %s: %w", ifname, err)
	}
	if info.mask&(1<<ethSSFeatures) == 0 || info.data[0] == 0 || info.data[0] > 1024 {
		return nil, fmt.Errorf("ETHTOOL_GSSET_INFO on %s: no feature names", ifname)
	}
	n := int(info.data[0])
	// struct ethtool_gstrings: cmd, string_set, len, data[len * 32].
	buf := make([]byte, 12+n*ethGStringLen)
	binary.NativeEndian.PutUint32(buf[0:], unix.ETHTOOL_GSTRINGS)
	binary.NativeEndian.PutUint32(buf[4:], ethSSFeatures)
	binary.NativeEndian.PutUint32(buf[8:], uint32(n))
	if err := ethtoolIoctl(fd, ifname, unsafe.Pointer(&buf[0])); err != nil {
		return nil, fmt.Errorf("ETHTOOL_GSTRINGS on %s: %w", ifname, err)
	}
	names := make([]string, n)
	for i := range names {
		s := buf[12+i*ethGStringLen : 12+(i+1)*ethGStringLen]
		if j := bytes.IndexByte(s, 0); j >= 0 {
			s = s[:j]
		}
		names[i] = string(s)
	}
	return names, nil
}

// features is a device's feature state by ethtool name.
type features struct {
	// Active: on now. Changeable: the driver lets userspace switch it.
	Active, Changeable map[string]bool
}

// getFeatures reads ifname's features (in the calling thread's netns).
func getFeatures(ifname string) (features, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return features{}, fmt.Errorf("ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	names, err := featureNames(fd, ifname)
	if err != nil {
		return features{}, err
	}
	blocks := (len(names) + ethtoolFeature - 1) / ethtoolFeature
	// struct ethtool_gfeatures: cmd, size, then per block available,
	// requested, active, never_changed.
	buf := make([]byte, 8+blocks*16)
	binary.NativeEndian.PutUint32(buf[0:], unix.ETHTOOL_GFEATURES)
	binary.NativeEndian.PutUint32(buf[4:], uint32(blocks))
	if err := ethtoolIoctl(fd, ifname, unsafe.Pointer(&buf[0])); err != nil {
		return features{}, fmt.Errorf("ETHTOOL_GFEATURES on %s: %w", ifname, err)
	}
	f := features{Active: map[string]bool{}, Changeable: map[string]bool{}}
	for i, name := range names {
		b := buf[8+(i/ethtoolFeature)*16:]
		bit := uint32(1) << (i % ethtoolFeature)
		avail := binary.NativeEndian.Uint32(b[0:])
		active := binary.NativeEndian.Uint32(b[8:])
		never := binary.NativeEndian.Uint32(b[12:])
		f.Active[name] = active&bit != 0
		f.Changeable[name] = avail&bit != 0 && never&bit == 0
	}
	return f, nil
}

// setFeatures switches ifname's named features on (true) or off (false),
// in the calling thread's netns. A name the device does not know is an
// error; the kernel may refuse a change the driver does not allow
// (ETHTOOL_SFEATURES then answers with ETHTOOL_F_UNSUPPORTED, reported as
// an error naming the feature).
func setFeatures(ifname string, want map[string]bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	names, err := featureNames(fd, ifname)
	if err != nil {
		return err
	}
	blocks := (len(names) + ethtoolFeature - 1) / ethtoolFeature
	// struct ethtool_sfeatures: cmd, size, then per block valid, requested.
	buf := make([]byte, 8+blocks*8)
	binary.NativeEndian.PutUint32(buf[0:], unix.ETHTOOL_SFEATURES)
	binary.NativeEndian.PutUint32(buf[4:], uint32(blocks))
	for name, on := range want {
		i := -1
		for k, n := range names {
			if n == name {
				i = k
				break
			}
		}
		if i < 0 {
			return fmt.Errorf("%s has no feature %q", ifname, name)
		}
		b := buf[8+(i/ethtoolFeature)*8:]
		bit := uint32(1) << (i % ethtoolFeature)
		binary.NativeEndian.PutUint32(b[0:], binary.NativeEndian.Uint32(b[0:])|bit)
		if on {
			binary.NativeEndian.PutUint32(b[4:], binary.NativeEndian.Uint32(b[4:])|bit)
		}
	}
	if err := ethtoolIoctl(fd, ifname, unsafe.Pointer(&buf[0])); err != nil {
		return fmt.Errorf("ETHTOOL_SFEATURES on %s: %w", ifname, err)
	}
	// A positive return (ETHTOOL_F_WISH, ETHTOOL_F_UNSUPPORTED) is not an
	// errno: read back what took.
	got, err := getFeatures(ifname)
	if err != nil {
		return err
	}
	for name, on := range want {
		if got.Active[name] != on {
			return fmt.Errorf("%s: feature %s stays %s (the driver refuses the change)", ifname, name, onOff(got.Active[name]))
		}
	}
	return nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
