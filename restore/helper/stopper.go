package helper

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/fdrestore/fdrestore/files"
	"golang.org/x/sys/unix"
)

// StopperArg is argv[1] of the stopper: what a helper execs to leave its
// task stopped. A stopped Go helper would keep the runtime's own fds (the
// netpoller's epoll and eventfd); the freshly exec'd stopper does nothing
// that creates one. It is the helper's own executable again (the lean
// helper binary, or the program that embeds restore in the fallback), run
// from the coordinator's memfd copy, so that no package initialiser opens
// the executable either and a stopped task pins no file on disk. Its
// arguments: the control socket, the fds to make close-on-exec again (exec
// would have closed them), and how many fds the task has.
const StopperArg = "__fdrestore-stop"

// execStopper replaces the helper with the stopper.
func (h *helper) execStopper() error {
	cloexec, err := h.carryCloexec()
	if err != nil {
		return err
	}
	if _, err := unix.FcntlInt(uintptr(h.ctl), unix.F_SETFD, 0); err != nil {
		return fmt.Errorf("carry control socket across exec: %w", err)
	}
	argv := []string{"fdrestore-stop", StopperArg, strconv.Itoa(h.ctl), encodeRanges(cloexec), strconv.Itoa(len(h.plan.Fles)), fdList012(h.plan)}
	err = unix.Exec(helperExe, argv, Env())
	return fmt.Errorf("exec stopper: %w", err)
}

// fdList012 says which of fds 0-2 the task has ("012", "0", "", ...): the
// Go runtime opens /dev/null on the others at start and the stopper closes
// them.
func fdList012(p *files.TaskPlan) string {
	var b strings.Builder
	for _, fl := range p.Fles {
		if fl.Fd <= 2 {
			b.WriteByte(byte('0' + fl.Fd))
		}
	}
	return "fds:" + b.String()
}

func stopperMain(args []string) int {
	if len(args) != 4 {
		return 125
	}
	ctl, err := strconv.Atoi(args[0])
	if err != nil {
		return 125
	}
	fail := func(err error) int {
		Send(ctl, &Msg{Op: OpErr, Err: "stopper: " + err.Error()})
		return 1
	}
	cloexec, err := decodeRanges(args[1])
	if err != nil {
		return fail(err)
	}
	want, err := strconv.Atoi(args[2])
	if err != nil {
		return fail(err)
	}
	has := strings.TrimPrefix(args[3], "fds:")
	for fd := 0; fd <= 2; fd++ {
		if !strings.ContainsRune(has, rune('0'+fd)) {
			unix.Close(fd)
		}
	}
	for _, fd := range cloexec {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
			return fail(fmt.Errorf("fd %d: set FD_CLOEXEC: %w", fd, err))
		}
	}
	if _, err := unix.FcntlInt(uintptr(ctl), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return fail(err)
	}
	n, extra, err := countFDs(ctl, want)
	if err != nil {
		return fail(err)
	}
	if n != want {
		return fail(fmt.Errorf("%d fds open, want %d (unexpected: %s)", n, want, extra))
	}
	if err := Send(ctl, &Msg{Op: OpOK}); err != nil {
		return 1
	}
	unix.Close(ctl)
	// SIGSTOP sent to the process may be taken by another thread while
	// this one returns and exits first; sent to this thread, it stops the
	// process before the call returns.
	runtime.LockOSThread()
	unix.Tgkill(os.Getpid(), unix.Gettid(), unix.SIGSTOP)
	return 0
}

// countFDs counts the open fds other than skip; only when the count is off
// are the unexpected ones (runtime anon inodes) named, for the error.
func countFDs(skip, want int) (int, string, error) {
	// The kernel's count (Linux 6.2+) costs one stat, however many fds
	// the task has; listing /proc/self/fd costs about 1µs per fd.
	if n, ok := files.CountFDs(); ok && n == want+1 {
		return want, "", nil // skip is open: it is the control socket
	}
	fds, err := files.ListFDs()
	if err != nil {
		return 0, "", err
	}
	n := 0
	for _, fd := range fds {
		if fd != skip {
			n++
		}
	}
	if n == want {
		return n, "", nil
	}
	var names []string
	for _, fd := range fds {
		if t, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); err == nil && strings.HasPrefix(t, "anon_inode:") {
			names = append(names, fmt.Sprintf("%d=%s", fd, t))
		}
	}
	return n, strings.Join(names, " "), nil
}

// encodeRanges writes sorted ints as "3-7,12".
func encodeRanges(v []int) string {
	var b strings.Builder
	for i := 0; i < len(v); {
		j := i
		for j+1 < len(v) && v[j+1] == v[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(v[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(v[j]))
		}
		i = j + 1
	}
	return "r:" + b.String()
}

func decodeRanges(s string) ([]int, error) {
	s = strings.TrimPrefix(s, "r:")
	if s == "" {
		return nil, nil
	}
	var out []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("fd list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a || b-a > 1<<20 {
				return nil, fmt.Errorf("fd list %q: bad range %q", s, part)
			}
		}
		for fd := a; fd <= b; fd++ {
			out = append(out, fd)
		}
	}
	return out, nil
}
