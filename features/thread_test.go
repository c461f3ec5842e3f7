package features

import (
	"fmt"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// Keep the main goroutine (which runs TestMain) on the main thread, so that
// TestMain can check onThrowawayThread's main-thread path deterministically.
func init() { runtime.LockOSThread() }

// mainThreadErr is the outcome of checkThrowawayOnMain, run by TestMain.
var mainThreadErr error

func TestMain(m *testing.M) {
	mainThreadErr = checkThrowawayOnMain()
	os.Exit(m.Run())
}

// checkThrowawayOnMain calls onThrowawayThread from the main thread and
// checks that f ran on another thread and, when it can unshare the mount
// namespace, that the thread-group leader stays in the original one.
func checkThrowawayOnMain() error {
	if unix.Gettid() != unix.Getpid() {
		return fmt.Errorf("TestMain is not on the main thread")
	}
	before, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	var tid int
	var uerr error
	onThrowawayThread(func() {
		tid = unix.Gettid()
		uerr = unix.Unshare(unix.CLONE_NEWNS)
	})
	if tid == 0 || tid == unix.Getpid() {
		return fmt.Errorf("f ran on thread %d, want a thread other than the main thread %d", tid, unix.Getpid())
	}
	after, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	if after != before {
		return fmt.Errorf("main thread moved from %s to %s (unshare error: %v)", before, after, uerr)
	}
	return nil
}

func TestThrowawayThreadFromMainThread(t *testing.T) {
	if mainThreadErr != nil {
		t.Fatal(mainThreadErr)
	}
}
