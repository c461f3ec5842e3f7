package features

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kcmp(2) types; x/sys/unix has SYS_KCMP but neither a wrapper nor these.
const (
	kcmpFile     = 0
	kcmpEpollTfd = 7
	kcmpResultEq = 0
)

// kcmpEpollSlot is struct kcmp_epoll_slot from <linux/kcmp.h>.
type kcmpEpollSlot struct {
	efd  uint32
	tfd  uint32
	toff uint32
}

func isPerm(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)
}

// kcmp calls kcmp(2) and returns its result (0 equal, 1 less, 2 greater,
// 3 not equal but unordered).
func kcmp(pid1, pid2, typ int, idx1, idx2 uintptr) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid1), uintptr(pid2), uintptr(typ), idx1, idx2, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// closeAll closes every fd >= 0 in fds.
func closeAll(fds ...int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// sameFile reports whether fds a and b refer to the same inode.
func sameFile(a, b int) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Fstat(a, &sa); err != nil {
		return false, opErr(fmt.Sprintf("fstat(%d)", a), err)
	}
	if err := unix.Fstat(b, &sb); err != nil {
		return false, opErr(fmt.Sprintf("fstat(%d)", b), err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}

func openSelfPidfd() (int, error) {
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return -1, opErr("pidfd_open(self)", fmt.Errorf("%w (needs Linux >= 5.3)", err))
		}
		return -1, opErr("pidfd_open(self)", err)
	}
	return fd, nil
}

func probePidfdOpen() (string, error) {
	fd, err := openSelfPidfd()
	if err != nil {
		return "", err
	}
	closeAll(fd)
	return "", nil
}

func probePidfdGetfd() (string, error) {
	pidfd, err := openSelfPidfd()
	if err != nil {
		return "", fmt.Errorf("prerequisite failed: %w", err)
	}
	defer closeAll(pidfd)

	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return "", opErr("pipe2", err)
	}
	defer closeAll(p[0], p[1])

	fd, err := unix.PidfdGetfd(pidfd, p[0], 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOSYS):
			return "", opErr("pidfd_getfd(self)", fmt.Errorf("%w (needs Linux >= 5.6)", err))
		case isPerm(err):
			return "", permErr("pidfd_getfd(self)", err, "needs PTRACE_MODE_ATTACH_REALCREDS on the target; check Yama ptrace_scope and LSMs")
		}
		return "", opErr("pidfd_getfd(self)", err)
	}
	defer closeAll(fd)
	same, err := sameFile(fd, p[0])
	if err != nil {
		return "", err
	}
	if !same {
		return "", fmt.Errorf("pidfd_getfd(self, %d) returned fd %d for a different file", p[0], fd)
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		return "", opErr("fcntl(F_GETFD) on the taken fd", err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		return "", fmt.Errorf("pidfd_getfd returned fd %d without FD_CLOEXEC", fd)
	}
	return "", nil
}

func probePidfdSendSignal() (string, error) {
	pidfd, err := openSelfPidfd()
	if err != nil {
		return "", fmt.Errorf("prerequisite failed: %w", err)
	}
	defer closeAll(pidfd)
	// Signal 0 checks that the task exists and may be signalled without
	// delivering anything.
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return "", opErr("pidfd_send_signal(self, 0)", fmt.Errorf("%w (needs Linux >= 5.1)", err))
		}
		return "", opErr("pidfd_send_signal(self, 0)", err)
	}
	return "", nil
}

func kcmpErr(op string, err error) error {
	switch {
	case errors.Is(err, unix.ENOSYS):
		return opErr(op, fmt.Errorf("%w (kernel built without CONFIG_KCMP/CONFIG_CHECKPOINT_RESTORE)", err))
	case isPerm(err):
		return permErr(op, err, "needs PTRACE_MODE_READ_REALCREDS on both tasks")
	}
	return opErr(op, err)
}

func probeKcmpFile() (string, error) {
	fa, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", opErr("open /dev/null", err)
	}
	defer closeAll(fa)
	fb, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", opErr("open /dev/null", err)
	}
	defer closeAll(fb)
	dup, err := unix.FcntlInt(uintptr(fa), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return "", opErr("fcntl(F_DUPFD_CLOEXEC)", err)
	}
	defer closeAll(dup)

	pid := os.Getpid()
	r, err := kcmp(pid, pid, kcmpFile, uintptr(fa), uintptr(dup))
	if err != nil {
		return "", kcmpErr("kcmp(KCMP_FILE) on a dup'ed fd", err)
	}
	if r != kcmpResultEq {
		return "", fmt.Errorf("kcmp(KCMP_FILE) says fd %d and its dup %d differ (result %d)", fa, dup, r)
	}
	r, err = kcmp(pid, pid, kcmpFile, uintptr(fa), uintptr(fb))
	if err != nil {
		return "", kcmpErr("kcmp(KCMP_FILE) on two opens of /dev/null", err)
	}
	if r == kcmpResultEq {
		return "", fmt.Errorf("kcmp(KCMP_FILE) says two separate opens of /dev/null (fds %d, %d) are the same file", fa, fb)
	}
	return "", nil
}

func probeKcmpEpollTfd() (string, error) {
	efd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return "", opErr("epoll_create1", err)
	}
	defer closeAll(efd)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return "", opErr("pipe2", err)
	}
	defer closeAll(p[0], p[1])
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(p[0])}
	if err := unix.EpollCtl(efd, unix.EPOLL_CTL_ADD, p[0], &ev); err != nil {
		return "", opErr("epoll_ctl(EPOLL_CTL_ADD)", err)
	}
	pid := os.Getpid()
	slot := kcmpEpollSlot{efd: uint32(efd), tfd: uint32(p[0])}
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(pid), kcmpEpollTfd,
		uintptr(p[0]), uintptr(unsafe.Pointer(&slot)), 0)
	if e != 0 {
		if errors.Is(e, unix.EINVAL) {
			return "", opErr("kcmp(KCMP_EPOLL_TFD)", fmt.Errorf("%w (needs Linux >= 4.13 with CONFIG_EPOLL)", e))
		}
		return "", kcmpErr("kcmp(KCMP_EPOLL_TFD)", e)
	}
	if r != kcmpResultEq {
		return "", fmt.Errorf("kcmp(KCMP_EPOLL_TFD) says the registered target differs from fd %d (result %d)", p[0], r)
	}
	slot.tfd = uint32(p[1])
	_, _, e = unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(pid), kcmpEpollTfd,
		uintptr(p[0]), uintptr(unsafe.Pointer(&slot)), 0)
	if e == 0 {
		return "", fmt.Errorf("kcmp(KCMP_EPOLL_TFD) succeeded for fd %d, which is not registered in the epoll", p[1])
	}
	if !errors.Is(e, unix.ENOENT) {
		return "", fmt.Errorf("kcmp(KCMP_EPOLL_TFD) for an unregistered fd: want ENOENT, got %w", e)
	}
	return "", nil
}
