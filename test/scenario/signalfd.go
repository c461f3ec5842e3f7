package main

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Signals of signalfd00 (none the suite or the Go runtime uses).
const (
	sigfdA = unix.SIGWINCH
	sigfdB = unix.Signal(40) // a real-time signal
)

func sigBit(s unix.Signal) uint64 { return 1 << (uint(s) - 1) }

// checkSigfdA blocks sigfdA on this thread, sends it to this thread (it
// stays pending for the signalfd) and checks that signalfd fd reads it;
// what names the signalfd in messages. False: the signal could not be
// sent.
func (t *T) checkSigfdA(fd int, what string) bool {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var set, old unix.Sigset_t
	set.Val[0] = sigBit(sigfdA)
	if !t.Check(unix.PthreadSigmask(unix.SIG_BLOCK, &set, &old), "block SIGWINCH") {
		return false
	}
	defer unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
	if !t.Check(unix.Tgkill(unix.Getpid(), unix.Gettid(), sigfdA), "tgkill SIGWINCH") {
		return false
	}
	var si unix.SignalfdSiginfo
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&si)), unsafe.Sizeof(si))
	n, err := unix.Read(fd, buf)
	if t.Check(err, "read the "+what) && (n != len(buf) || si.Signo != uint32(sigfdA)) {
		t.Fail("%s read %d bytes, signal %d, want %d", what, n, si.Signo, sigfdA)
	}
	return true
}

// signalfd00: fd 3 is a signalfd for SIGWINCH and signal 40 with
// O_NONBLOCK, fd 4 one for SIGTTIN. After restore: fdinfo shows the
// masks; with SIGWINCH blocked and raised on the task's thread, fd 3
// reads it, then EAGAIN.
func init() {
	register("signalfd00", map[string]*Role{
		"root": {
			Fds: std(3, 4),
			Setup: func(t *T) error {
				var set unix.Sigset_t
				set.Val[0] = sigBit(sigfdA) | sigBit(sigfdB)
				fd, err := unix.Signalfd(-1, &set, unix.SFD_NONBLOCK|unix.SFD_CLOEXEC)
				if err := t.placeNew(fd, err, 3); err != nil {
					return err
				}
				set.Val[0] = sigBit(unix.SIGTTIN)
				fd, err = unix.Signalfd(-1, &set, unix.SFD_CLOEXEC)
				return t.placeNew(fd, err, 4)
			},
			Verify: func(t *T) {
				t.CheckType(3, "anon_inode:[signalfd]")
				t.CheckType(4, "anon_inode:[signalfd]")
				t.CheckFlags(3, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDWR|unix.O_NONBLOCK)
				t.CheckFlags(4, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDWR)
				t.checkFdinfo(3, "sigmask", fmt.Sprintf("%016x", sigBit(sigfdA)|sigBit(sigfdB)))
				t.checkFdinfo(4, "sigmask", fmt.Sprintf("%016x", sigBit(unix.SIGTTIN)))
				if !t.checkSigfdA(3, "signalfd") {
					return
				}
				if _, err := unix.Read(3, make([]byte, unsafe.Sizeof(unix.SignalfdSiginfo{}))); err != unix.EAGAIN {
					t.Fail("second read of the signalfd: %v, want EAGAIN", err)
				}
			},
		},
	})
}
