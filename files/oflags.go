package files

import "golang.org/x/sys/unix"

// OLargefile is the kernel's O_LARGEFILE bit as it shows in recorded file
// flags. golang.org/x/sys/unix defines O_LARGEFILE as 0 on 64-bit
// platforms (open(2) implies it there), but the kernel still reports the
// bit in F_GETFL and /proc/PID/fdinfo, and CRIU records it.
const OLargefile = oLargefile

// OTmpfileOnly is the bit that makes open(2) create an unnamed file
// (__O_TMPFILE), without the O_DIRECTORY that unix.O_TMPFILE includes.
const OTmpfileOnly = unix.O_TMPFILE &^ unix.O_DIRECTORY

// StatusFlagsMask holds the status flags F_SETFL can change on an open
// file description; the access mode and creation flags are fixed at open.
const StatusFlagsMask = unix.O_APPEND | unix.O_ASYNC | unix.O_DIRECT | unix.O_NOATIME | unix.O_NONBLOCK

// SetStatusFlags gives the description behind fd the status flags of
// flags (only those of StatusFlagsMask), leaving the others as they are;
// it does nothing when they already match.
func SetStatusFlags(fd int, flags uint32) error {
	cur, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	want := cur&^StatusFlagsMask | int(flags)&StatusFlagsMask
	if want == cur {
		return nil
	}
	_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, want)
	return err
}
