package dump

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kcmp(2) types (include/uapi/linux/kcmp.h); x/sys has only SYS_KCMP.
const (
	kcmpFile    = 0
	kcmpVM      = 1
	kcmpFiles   = 2
	kcmpFS      = 3
	kcmpSighand = 4
)

// kcmp compares two kernel objects: 0 equal, 1 the first is less, 2 the
// first is greater (an order that is consistent for one boot).
func kcmp(pid1, pid2, typ int, idx1, idx2 int) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid1), uintptr(pid2), uintptr(typ), uintptr(idx1), uintptr(idx2), 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// groupByKcmp sorts n items with cmp (a kcmp-style three-way comparison) and
// returns for each item the index of the first item (in the original order)
// equal to it. O(n log n) comparisons.
func groupByKcmp(n int, cmp func(i, j int) (int, error)) ([]int, error) {
	rep := make([]int, n)
	for i := range rep {
		rep[i] = i
	}
	if n < 2 {
		return rep, nil
	}
	idx := make([]int, n)
	copy(idx, rep)
	var err error
	sort.SliceStable(idx, func(a, b int) bool {
		if err != nil {
			return false
		}
		var r int
		r, err = cmp(idx[a], idx[b])
		return r == 1
	})
	if err != nil {
		return nil, err
	}
	for s := 0; s < n; {
		e := s + 1
		for e < n {
			r, err := cmp(idx[s], idx[e])
			if err != nil {
				return nil, err
			}
			if r != 0 {
				break
			}
			e++
		}
		first := idx[s]
		for _, i := range idx[s:e] {
			first = min(first, i)
		}
		for _, i := range idx[s:e] {
			rep[i] = first
		}
		s = e
	}
	return rep, nil
}

// fdKind is what fdrestore makes of an fd.
type fdKind int

const (
	kindReg fdKind = iota + 1
	kindPipe
	kindFifo
	kindTTY // ptys and /dev/tty (tty.go)
	kindUnix
	kindInet
)

// Terminal-ish character device majors: tty/ttyS (4), tty/console/ptmx
// (5), pty slaves (136-143).
func ttyMajor(major uint32) bool {
	return major == 4 || major == 5 || (major >= 136 && major <= 143)
}

// unsupportedByLink says what a /proc/PID/fd/N target is when fdrestore
// cannot dump it, or "" when it may be supported.
func unsupportedByLink(link string) string {
	switch {
	case strings.HasPrefix(link, "socket:"):
		return "socket"
	case anonKinds[link] != 0:
		return "" // event.go
	case strings.HasPrefix(link, "anon_inode:"):
		t := strings.TrimPrefix(link, "anon_inode:")
		t = strings.TrimSuffix(strings.TrimPrefix(t, "["), "]")
		if t == "" {
			t = "anon inode"
		}
		return t
	case strings.HasPrefix(link, "/memfd:"):
		return "memfd"
	case strings.HasPrefix(link, "pipe:"):
		return ""
	case link == "/dev/ptmx" || strings.HasSuffix(link, "/ptmx"),
		strings.HasPrefix(link, "/dev/pts/"), link == "/dev/tty":
		return "" // ptys and /dev/tty: judged by device number (tty.go)
	case link == "/dev/console", strings.HasPrefix(link, "/dev/tty"):
		return "tty"
	case link == "/dev/net/tun":
		return "tun"
	case isDeletedLink(link):
		return "" // judged by what it is (ghost.go)
	case !strings.HasPrefix(link, "/"):
		// nsfs ("net:[...]"), pidfs, bpf objects, ...
		if i := strings.IndexByte(link, ':'); i > 0 {
			return link[:i]
		}
		return "special file"
	}
	return ""
}

// takeFd duplicates fd of task pid into the dumper with pidfd_getfd (the
// copy is close-on-exec); the caller closes it. Errors do not name pid and
// fd: the caller does.
func takeFd(pid, fd int) (int, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(pidfd)
	local, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_getfd: %w", err)
	}
	return local, nil
}

// fown reads a description's owner (F_SETOWN) settings the way CRIU records
// them in fown_entry.
func readFown(fd int) (fown [5]uint32, err error) {
	var own struct {
		Type int32
		Pid  int32
	}
	if _, _, e := unix.Syscall(unix.SYS_FCNTL, uintptr(fd), unix.F_GETOWN_EX, uintptr(unsafe.Pointer(&own))); e != 0 {
		return fown, fmt.Errorf("F_GETOWN_EX: %w", e)
	}
	sig, err := unix.FcntlInt(uintptr(fd), unix.F_GETSIG, 0)
	if err != nil {
		return fown, fmt.Errorf("F_GETSIG: %w", err)
	}
	if own.Pid != 0 {
		// F_GETOWNER_UIDS (17): the owner's uid and euid, with
		// CONFIG_CHECKPOINT_RESTORE.
		var uids [2]uint32
		if _, _, e := unix.Syscall(unix.SYS_FCNTL, uintptr(fd), 17, uintptr(unsafe.Pointer(&uids))); e == 0 {
			fown[0], fown[1] = uids[0], uids[1]
		}
	}
	fown[2] = uint32(sig)
	if own.Pid != 0 { // no owner: CRIU records pid_type 0 as well
		fown[3], fown[4] = uint32(own.Type), uint32(own.Pid)
	}
	return fown, nil
}

// peeker copies queued pipe data without consuming it: tee(2) into a
// scratch pipe at least as large as the source, then read the copy.
type peeker struct {
	p    [2]int
	size int
}

func (pk *peeker) close() {
	if pk.size > 0 {
		unix.Close(pk.p[0])
		unix.Close(pk.p[1])
		pk.size = 0
	}
}

// peek returns the bytes queued in the pipe whose read side rfd is, and
// the pipe's buffer size.
func (pk *peeker) peek(rfd int) ([]byte, int, error) {
	size, err := unix.FcntlInt(uintptr(rfd), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("F_GETPIPE_SZ: %w", err)
	}
	if pk.size == 0 {
		if err := unix.Pipe2(pk.p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
			return nil, 0, fmt.Errorf("scratch pipe: %w", err)
		}
		pk.size, err = unix.FcntlInt(uintptr(pk.p[1]), unix.F_GETPIPE_SZ, 0)
		if err != nil {
			pk.close()
			return nil, 0, fmt.Errorf("scratch pipe F_GETPIPE_SZ: %w", err)
		}
	}
	if pk.size < size {
		n, err := unix.FcntlInt(uintptr(pk.p[1]), unix.F_SETPIPE_SZ, size)
		if err != nil {
			return nil, 0, fmt.Errorf("scratch pipe F_SETPIPE_SZ %d: %w", size, err)
		}
		pk.size = n
	}
	// One tee only: tee does not advance the source, so a second call
	// would copy the same bytes again. The scratch pipe has at least as
	// many slots as the source, so one call copies everything.
	n, err := unix.Tee(rfd, pk.p[1], size, unix.SPLICE_F_NONBLOCK)
	if errors.Is(err, unix.EAGAIN) {
		return nil, size, nil // empty
	}
	if err != nil {
		return nil, 0, fmt.Errorf("tee: %w", err)
	}
	data := make([]byte, n)
	for off := 0; off < int(n); {
		m, err := unix.Read(pk.p[0], data[off:])
		if err != nil {
			return nil, 0, fmt.Errorf("read scratch pipe: %w", err)
		}
		if m == 0 {
			return nil, 0, fmt.Errorf("scratch pipe: short read %d of %d", off, n)
		}
		off += m
	}
	return data, size, nil
}

// readLinkStat reads a /proc symlink (cwd, root, exe) and stats its target.
func readLinkStat(p string) (string, *unix.Stat_t, error) {
	link, err := os.Readlink(p)
	if err != nil {
		return "", nil, err
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return "", nil, fmt.Errorf("stat %s: %w", p, err)
	}
	return link, &st, nil
}
