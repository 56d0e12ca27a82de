package reliability

import "golang.org/x/sys/unix"

const (
	msRemount = unix.MS_REMOUNT
	msRdonly  = unix.MS_RDONLY
)

func mount(src, target, fstype string, flags uintptr, data string) error {
	return unix.Mount(src, target, fstype, flags, data)
}

func unmount(target string) { unix.Unmount(target, unix.MNT_DETACH) }
