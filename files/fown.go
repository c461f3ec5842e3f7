package files

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Fown is the F_SETOWN/F_SETSIG state of a description. (The planner
// fills it from an image's fown_entry: restore's fownFrom.)
type Fown struct {
	PidType uint32 // F_OWNER_TID, F_OWNER_PID or F_OWNER_PGRP
	Pid     uint32 // image pid (or pgid); 0 when no owner is set
	Signum  uint32
}

// Apply sets the owner and signal of fd, translating the owner's pid
// through the context's pid map.
func (f Fown) Apply(c *Context, fd int) error {
	if f.Signum != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETSIG, int(f.Signum)); err != nil {
			return fmt.Errorf("F_SETSIG %d: %w", f.Signum, err)
		}
	}
	if f.Pid == 0 {
		return nil
	}
	pid := c.MapPid(f.Pid)
	if pid == 0 {
		return fmt.Errorf("fown: owner pid %d is not a task of the restored tree", f.Pid)
	}
	// struct f_owner_ex { int type; pid_t pid; }: x/sys/unix has no
	// wrapper for F_SETOWN_EX.
	ex := [2]int32{int32(f.PidType), int32(pid)}
	_, _, errno := unix.Syscall(unix.SYS_FCNTL, uintptr(fd), unix.F_SETOWN_EX, uintptr(unsafe.Pointer(&ex)))
	runtime.KeepAlive(&ex)
	if errno != 0 {
		return fmt.Errorf("F_SETOWN_EX type %d pid %d (image pid %d): %w", f.PidType, pid, f.Pid, errno)
	}
	return nil
}
