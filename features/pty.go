package features

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ptyOpenFlags are used for both the master and the slave.
const ptyOpenFlags = unix.O_RDWR | unix.O_NOCTTY | unix.O_CLOEXEC

// openPtmx opens path (a ptmx device) and unlocks the slave.
func openPtmx(path string) (int, error) {
	fd, err := unix.Open(path, ptyOpenFlags, 0)
	if err != nil {
		return -1, opErr("open "+path, err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return -1, opErr("ioctl(TIOCSPTLCK, 0) (unlockpt) on "+path, err)
	}
	return fd, nil
}

// ptyIndex returns the pty index of a master fd.
func ptyIndex(fd int) (uint32, error) {
	idx, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		return 0, opErr("ioctl(TIOCGPTN)", err)
	}
	return idx, nil
}

func probePtmx() (string, error) {
	fd, err := openPtmx("/dev/ptmx")
	if err != nil {
		return "", err
	}
	closeAll(fd)
	return "", nil
}

func probePtmxIndex() (string, error) {
	fd, err := openPtmx("/dev/ptmx")
	if err != nil {
		return "", fmt.Errorf("prerequisite failed: %w", err)
	}
	defer closeAll(fd)
	idx, err := ptyIndex(fd)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("got /dev/pts/%d", idx), nil
}

// ptsIndexOf returns the pty index of a devpts slave device number.
// Slaves use majors 136-143 (UNIX98_PTY_SLAVE_MAJOR); Linux allocates them
// as MKDEV(136, index) with a 20-bit minor.
func ptsIndexOf(rdev uint64) (uint32, bool) {
	maj, mnr := unix.Major(rdev), unix.Minor(rdev)
	if maj < 136 || maj > 143 {
		return 0, false
	}
	return (maj-136)<<8 + mnr, true
}

func probePtmxPeer() (string, error) {
	fd, err := openPtmx("/dev/ptmx")
	if err != nil {
		return "", fmt.Errorf("prerequisite failed: %w", err)
	}
	defer closeAll(fd)
	idx, err := ptyIndex(fd)
	if err != nil {
		return "", fmt.Errorf("prerequisite failed: %w", err)
	}
	// IoctlRetInt would pass 0 (O_RDONLY) as the flags; pass ours.
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCGPTPEER, ptyOpenFlags)
	if e != 0 {
		if errors.Is(e, unix.EINVAL) || errors.Is(e, unix.ENOTTY) {
			return "", opErr("ioctl(TIOCGPTPEER)", fmt.Errorf("%w (needs Linux >= 4.13)", e))
		}
		return "", opErr("ioctl(TIOCGPTPEER)", e)
	}
	slave := int(r)
	defer closeAll(slave)
	var st unix.Stat_t
	if err := unix.Fstat(slave, &st); err != nil {
		return "", opErr("fstat on the TIOCGPTPEER slave", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return "", fmt.Errorf("TIOCGPTPEER returned a non-character-device fd (mode %#o)", st.Mode)
	}
	got, ok := ptsIndexOf(st.Rdev)
	if !ok {
		return "", fmt.Errorf("TIOCGPTPEER returned device %d:%d, not a devpts slave", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if got != idx {
		return "", fmt.Errorf("TIOCGPTPEER returned pty %d, master says %d", got, idx)
	}
	if _, err := unix.IoctlGetTermios(slave, unix.TCGETS); err != nil {
		return "", opErr("ioctl(TCGETS) on the TIOCGPTPEER slave", err)
	}
	return "", nil
}
