package features

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// trueBinary is the program started in new namespaces. It must exist and
// exit immediately.
const trueBinary = "/bin/true"

// childTimeout bounds how long a namespace probe waits for its child.
const childTimeout = 2 * time.Second

// nsFlags maps namespace feature names to clone flags.
var nsFlags = map[string]struct {
	flag uintptr
	name string
}{
	NSPid: {unix.CLONE_NEWPID, "CLONE_NEWPID"},
	NSNet: {unix.CLONE_NEWNET, "CLONE_NEWNET"},
	NSMnt: {unix.CLONE_NEWNS, "CLONE_NEWNS"},
	NSIpc: {unix.CLONE_NEWIPC, "CLONE_NEWIPC"},
	NSUts: {unix.CLONE_NEWUTS, "CLONE_NEWUTS"},
}

// nsProbe returns a probe that starts /bin/true in a new namespace of the
// given kind. A Go program cannot unshare most namespaces for itself (it is
// multithreaded), so the kernel is asked to clone a child with the flag; the
// child is always waited for, within childTimeout.
func nsProbe(feature string) func() (string, error) {
	return func() (string, error) {
		ns := nsFlags[feature]
		return "", runInNewNS(ns.flag, ns.name)
	}
}

func runInNewNS(flag uintptr, flagName string) error {
	if _, err := os.Stat(trueBinary); err != nil {
		return fmt.Errorf("cannot probe %s: %s is not available: %w", flagName, trueBinary, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, trueBinary)
	cmd.Env = []string{}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flag}
	cmd.WaitDelay = childTimeout
	op := fmt.Sprintf("clone(%s) running %s", flagName, trueBinary)
	if err := cmd.Start(); err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return permErr(op, errno, "needs CAP_SYS_ADMIN")
		}
		return opErr(op, err)
	}
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: child did not exit within %v (killed)", op, childTimeout)
		}
		return opErr(op, err)
	}
	return nil
}

// hasFilesystem reports whether /proc/filesystems lists fstype.
func hasFilesystem(fstype string) (bool, error) {
	f, err := os.Open("/proc/filesystems")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 0 && fields[len(fields)-1] == fstype {
			return true, nil
		}
	}
	return false, sc.Err()
}

// probeDevptsNewinstance mounts a new devpts instance and opens its ptmx.
//
// The mount happens in a private mount namespace that only one OS thread
// ever sees: a goroutine locks its thread, unshares CLONE_NEWNS (which also
// unshares the thread's fs_struct), makes every mount private so nothing
// propagates back, mounts devpts, and exits without unlocking, so that the
// Go runtime terminates the thread and with it the namespace (see
// onThrowawayThread). The rest of the process never sees the namespace.
func probeDevptsNewinstance() (string, error) {
	ok, err := hasFilesystem("devpts")
	if err != nil {
		return "", opErr("read /proc/filesystems", err)
	}
	if !ok {
		return "", errors.New("devpts is not listed in /proc/filesystems (kernel built without CONFIG_UNIX98_PTYS)")
	}
	dir, err := os.MkdirTemp("", "fdrestore-devpts-")
	if err != nil {
		return "", opErr("create a mount point", err)
	}
	type result struct {
		detail string
		err    error
	}
	ch := make(chan result, 1)
	go onThrowawayThread(func() {
		d, err := devptsInPrivateNS(dir)
		ch <- result{d, err}
	})
	select {
	case r := <-ch:
		if rerr := os.Remove(dir); rerr != nil && r.err == nil {
			r.err = opErr("remove mount point "+dir, rerr)
		}
		return r.detail, r.err
	case <-time.After(childTimeout):
		// The goroutine owns dir now: it is still mounted in its namespace.
		return "", fmt.Errorf("mounting devpts in a private mount namespace did not finish within %v", childTimeout)
	}
}

// onThrowawayThread runs f on a locked OS thread that the Go runtime
// terminates when f returns, so f may change per-thread kernel state (such
// as the mount namespace) for good. It must be called in its own goroutine.
//
// The process's main thread is never terminated: the runtime parks it
// forever instead, which would leave the thread-group leader (the one
// /proc/self refers to) in f's namespace. If this goroutine landed on the
// main thread, it keeps that thread locked, and thus unavailable to other
// goroutines, while a second goroutine, necessarily on another thread, runs
// f.
func onThrowawayThread(f func()) {
	runtime.LockOSThread()
	if unix.Gettid() != unix.Getpid() {
		// No UnlockOSThread: the thread exits with this goroutine.
		f()
		return
	}
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer close(done)
		f()
	}()
	<-done
	runtime.UnlockOSThread()
}

// devptsInPrivateNS must run on a locked OS thread that is thrown away
// afterwards.
func devptsInPrivateNS(dir string) (string, error) {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return "", permErr("unshare(CLONE_NEWNS)", err, "needs CAP_SYS_ADMIN")
	}
	if err := unix.Mount("none", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return "", opErr("make mounts private in the new mount namespace", err)
	}
	const opts = "newinstance,ptmxmode=0666,mode=0620"
	if err := unix.Mount("devpts", dir, "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, opts); err != nil {
		return "", permErr("mount -t devpts -o "+opts, err, "needs CAP_SYS_ADMIN")
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)

	fd, err := openPtmx(filepath.Join(dir, "ptmx"))
	if err != nil {
		return "", err
	}
	defer closeAll(fd)
	idx, err := ptyIndex(fd)
	if err != nil {
		return "", err
	}
	var inst, host unix.Stat_t
	if err := unix.Stat(dir, &inst); err != nil {
		return "", opErr("stat "+dir, err)
	}
	if err := unix.Stat("/dev/pts", &host); err == nil && host.Dev == inst.Dev {
		return "", errors.New("devpts newinstance was ignored: the mount is the host's /dev/pts instance")
	}
	if idx != 0 {
		return "", fmt.Errorf("first pty of a new devpts instance has index %d, want 0", idx)
	}
	return "private instance, first pty index 0", nil
}
