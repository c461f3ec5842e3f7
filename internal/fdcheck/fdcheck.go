// Package fdcheck inspects the fd tables of other processes from outside,
// for tests of restores: which fds a task has, their flags and offsets
// (/proc/PID/fdinfo), whether two fds share one open file description
// (kcmp), and — through a duplicate taken with pidfd_getfd — inodes, pipe
// buffer sizes and queued bytes. It also finds and kills the processes a
// test left behind.
//
// Everything here works on stopped tasks and needs the privileges of a
// ptrace attach (root in practice).
package fdcheck

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Stat is the part of /proc/PID/stat a tree check needs.
type Stat struct {
	Pid     int
	Comm    string
	State   byte
	PPid    int
	Pgrp    int
	Session int
}

// ReadStat parses /proc/PID/stat.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, err
	}
	open, close := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || close < open {
		return Stat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[close+1:]))
	if len(f) < 4 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	st := Stat{Pid: pid, Comm: string(b[open+1 : close]), State: f[0][0]}
	for i, p := range []*int{&st.PPid, &st.Pgrp, &st.Session} {
		if *p, err = strconv.Atoi(f[i+1]); err != nil {
			return Stat{}, fmt.Errorf("/proc/%d/stat field %d: %w", pid, i+4, err)
		}
	}
	return st, nil
}

// FDs returns the open fd numbers of pid, sorted.
func FDs(pid int) ([]int, error) {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return nil, err
	}
	out := make([]int, 0, len(ents))
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			return nil, fmt.Errorf("/proc/%d/fd: unexpected entry %q", pid, e.Name())
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return out, nil
}

// Target returns the readlink of /proc/PID/fd/FD ("pipe:[123]", a path,
// ...).
func Target(pid, fd int) (string, error) {
	return os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
}

// FdInfo is /proc/PID/fdinfo/FD.
type FdInfo struct {
	Pos   int64
	Flags int // open(2) flags in the kernel's view, O_CLOEXEC included
	MntID int
	Ino   uint64
}

// Cloexec reports FD_CLOEXEC, which fdinfo shows as O_CLOEXEC in flags.
func (i FdInfo) Cloexec() bool { return i.Flags&unix.O_CLOEXEC != 0 }

// StatusMask is what tests compare of the flags: the access mode and the
// status flags that matter for the restored objects. O_LARGEFILE is left
// out: whether the kernel shows it depends on how the file was opened.
const StatusMask = unix.O_ACCMODE | unix.O_NONBLOCK | unix.O_APPEND

// Status returns Flags & StatusMask.
func (i FdInfo) Status() int { return i.Flags & StatusMask }

// Info parses /proc/PID/fdinfo/FD.
func Info(pid, fd int) (FdInfo, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		return FdInfo{}, err
	}
	var fi FdInfo
	seen := 0
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "pos":
			fi.Pos, err = strconv.ParseInt(v, 10, 64)
			seen++
		case "flags":
			var f int64
			f, err = strconv.ParseInt(v, 8, 64)
			fi.Flags = int(f)
			seen++
		case "mnt_id":
			fi.MntID, err = strconv.Atoi(v)
		case "ino":
			fi.Ino, err = strconv.ParseUint(v, 10, 64)
		}
		if err != nil {
			return FdInfo{}, fmt.Errorf("/proc/%d/fdinfo/%d: %s: %w", pid, fd, k, err)
		}
	}
	if seen != 2 {
		return FdInfo{}, fmt.Errorf("/proc/%d/fdinfo/%d: no pos or flags line", pid, fd)
	}
	return fi, nil
}

// GetFD returns a duplicate of pid's fd, made with pidfd_getfd: the same
// open file description, in this process, CLOEXEC. The caller closes it.
func GetFD(pid, fd int) (int, error) {
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pfd)
	nfd, err := unix.PidfdGetfd(pfd, fd, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_getfd pid %d fd %d: %w", pid, fd, err)
	}
	return nfd, nil
}

// kcmpFile is KCMP_FILE of <linux/kcmp.h>.
const kcmpFile = 0

// Kcmp compares two fds' descriptions with kcmp(KCMP_FILE): 0 means the
// same open file description.
func Kcmp(pid1, fd1, pid2, fd2 int) (int, error) {
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(pid1), uintptr(pid2), kcmpFile, uintptr(fd1), uintptr(fd2), 0)
	if errno != 0 {
		return -1, fmt.Errorf("kcmp(KCMP_FILE, %d:%d, %d:%d): %w", pid1, fd1, pid2, fd2, errno)
	}
	return int(r), nil
}

// SameDescription reports whether pid1's fd1 and pid2's fd2 share one open
// file description.
func SameDescription(pid1, fd1, pid2, fd2 int) (bool, error) {
	r, err := Kcmp(pid1, fd1, pid2, fd2)
	return r == 0, err
}

// Inode returns the device, inode and mode of fd (fstat).
func Inode(fd int) (dev, ino uint64, mode uint32, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, 0, 0, err
	}
	return st.Dev, st.Ino, st.Mode, nil
}

// PipeSize returns F_GETPIPE_SZ of a pipe or FIFO fd.
func PipeSize(fd int) (int, error) {
	return unix.FcntlInt(uintptr(fd), unix.F_GETPIPE_SZ, 0)
}

// Queued returns the bytes queued for reading on fd (FIONREAD).
func Queued(fd int) (int, error) {
	return unix.IoctlGetInt(fd, unix.TIOCINQ) // FIONREAD
}

// ReadQueued reads exactly n queued bytes from fd without ever blocking,
// whatever O_NONBLOCK says (the description may be a restored task's). It
// consumes them.
func ReadQueued(fd, n int) ([]byte, error) {
	out := make([]byte, 0, n)
	buf := make([]byte, 64<<10)
	for len(out) < n {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		r, err := unix.Poll(pfd, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, err
		}
		if r == 0 || pfd[0].Revents&unix.POLLIN == 0 {
			return out, fmt.Errorf("only %d of %d bytes queued", len(out), n)
		}
		want := min(n-len(out), len(buf))
		got, err := unix.Read(fd, buf[:want])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, err
		}
		if got == 0 {
			return out, fmt.Errorf("EOF after %d of %d bytes", len(out), n)
		}
		out = append(out, buf[:got]...)
	}
	return out, nil
}

// Exe returns the readlink of /proc/PID/exe ("" when it cannot be read).
func Exe(pid int) string {
	s, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return s
}

// HelperExe is what /proc/PID/exe shows for fdrestore's restore helpers
// and stopped tasks: they run from a memfd copy of the binary.
const HelperExe = "/memfd:fdrestore (deleted)"

// Pids lists every pid in /proc.
func Pids() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// Descendants returns every process whose parent chain leads to root
// (root excluded), zombies included.
func Descendants(root int) []int {
	parent := map[int]int{}
	for _, pid := range Pids() {
		if st, err := ReadStat(pid); err == nil {
			parent[pid] = st.PPid
		}
	}
	var out []int
	for pid := range parent {
		for p, n := parent[pid], 0; p > 0 && n < 1<<16; p, n = parent[p], n+1 {
			if p == root {
				out = append(out, pid)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// Exists reports whether pid is in /proc (alive or a zombie).
func Exists(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

// KillAndReap SIGKILLs pids and waits until every one of them is gone from
// /proc, reaping those that are (or become) children of the calling
// process. Processes whose parent never reaps them stay as zombies: make
// the caller a child subreaper (PR_SET_CHILD_SUBREAPER) so that orphans
// come to it. It returns an error naming the pids still present at the
// deadline.
func KillAndReap(pids []int, timeout time.Duration) error {
	for _, pid := range pids {
		if pid > 0 {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
	deadline := time.Now().Add(timeout)
	left := slices.Clone(pids)
	for {
		next := left[:0]
		for _, pid := range left {
			if pid <= 0 {
				continue
			}
			var ws unix.WaitStatus
			if wpid, _ := unix.Wait4(pid, &ws, unix.WNOHANG, nil); wpid == pid {
				continue
			}
			if Exists(pid) {
				next = append(next, pid)
			}
		}
		left = next
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			var desc []string
			for _, pid := range left {
				st, _ := ReadStat(pid)
				desc = append(desc, fmt.Sprintf("%d (state %c, ppid %d)", pid, st.State, st.PPid))
			}
			return fmt.Errorf("still present after %v: %s", timeout, strings.Join(desc, ", "))
		}
		time.Sleep(time.Millisecond)
	}
}

// ErrNotStopped is returned by WaitStopped for a task that is not in
// state T.
var ErrNotStopped = errors.New("task is not stopped")

// WaitStopped waits until pid is in stopped state (T) or timeout passes.
func WaitStopped(pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := ReadStat(pid)
		if err != nil {
			return err
		}
		if st.State == 'T' {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d: state %c: %w", pid, st.State, ErrNotStopped)
		}
		time.Sleep(time.Millisecond)
	}
}

// LockFixtures serialises the tests (of any package or process) that set
// up or restore the shared fixtures' environment in /tmp/fdr-fixtures — a
// FIFO's data or a regular file's size is shared by every restore of that
// fixture — with an advisory lock (flock) on the fixtures directory
// itself, so that nothing is left behind. It waits up to timeout and
// returns the function that releases the lock.
func LockFixtures(fixtures string, timeout time.Duration) (unlock func(), err error) {
	fd, err := unix.Open(fixtures, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", fixtures, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Flock(fd, unix.LOCK_UN); unix.Close(fd) }, nil
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			unix.Close(fd)
			return nil, fmt.Errorf("flock %s: %w", fixtures, err)
		}
		if time.Now().After(deadline) {
			unix.Close(fd)
			return nil, fmt.Errorf("flock %s: held by another process for %v", fixtures, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
