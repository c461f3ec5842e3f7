package dump

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// freezer freezes a process tree with the cgroup v2 freezer: the tree is
// moved into a fresh child cgroup of the cgroup2 mount whose cgroup.freeze
// is already 1, so each task stops as soon as it arrives and whatever it
// forks afterwards is born frozen in the same cgroup. On thaw every task
// goes back to the cgroup it came from and the temporary cgroup is removed.
type freezer struct {
	mnt      string
	dir      string         // the temporary cgroup
	orig     map[int]string // pid -> its original cgroup directory
	order    []int          // pids in the order they were moved
	deadline time.Time
}

func newFreezer(deadline time.Time) (*freezer, error) {
	mnt, err := cgroup2Mount()
	if err != nil {
		return nil, fmt.Errorf("freeze: read mountinfo: %w", err)
	}
	if mnt == "" {
		return nil, errors.New("freeze: no cgroup2 filesystem is mounted (the cgroup v2 freezer is needed)")
	}
	dir := filepath.Join(mnt, fmt.Sprintf("fdrestore-dump-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("freeze: create cgroup %s: %w", dir, err)
	}
	fz := &freezer{mnt: mnt, dir: dir, orig: map[int]string{}, deadline: deadline}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("1"), 0); err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("freeze: write 1 to %s/cgroup.freeze (needs Linux >= 5.2): %w", dir, err)
	}
	return fz, nil
}

// add moves pid (the whole thread group) into the frozen cgroup. It
// returns false when the process no longer exists.
func (fz *freezer) add(pid int) (bool, error) {
	if _, ok := fz.orig[pid]; ok {
		return true, nil
	}
	orig, err := cgroup2Of(pid, fz.mnt)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("freeze pid %d: %w", pid, err)
	}
	err = os.WriteFile(filepath.Join(fz.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
	if errors.Is(err, unix.ESRCH) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("freeze pid %d: move into %s: %w", pid, fz.dir, err)
	}
	fz.orig[pid] = orig
	fz.order = append(fz.order, pid)
	return true, nil
}

// frozen reports whether a task moved in was a member already.
func (fz *freezer) has(pid int) bool { _, ok := fz.orig[pid]; return ok }

// wait waits until cgroup.events says the cgroup is frozen.
func (fz *freezer) wait() error {
	ev := filepath.Join(fz.dir, "cgroup.events")
	for sleep := 20 * time.Microsecond; ; sleep = min(2*sleep, 5*time.Millisecond) {
		b, err := os.ReadFile(ev)
		if err != nil {
			return fmt.Errorf("freeze: read %s: %w", ev, err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if line == "frozen 1" {
				return nil
			}
		}
		if time.Now().After(fz.deadline) {
			return fmt.Errorf("freeze: %s did not report frozen before the deadline (tasks %v)", fz.dir, fz.order)
		}
		time.Sleep(sleep)
	}
}

// thaw moves every task back to its original cgroup (a task thaws as it
// leaves the frozen cgroup) and removes the temporary cgroup.
func (fz *freezer) thaw() error {
	var errs []error
	for _, pid := range fz.order {
		err := os.WriteFile(filepath.Join(fz.orig[pid], "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
		if err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("thaw pid %d: move back to %s: %w", pid, fz.orig[pid], err))
		}
	}
	if len(errs) > 0 {
		// Thaw in place rather than leave anything frozen.
		if err := os.WriteFile(filepath.Join(fz.dir, "cgroup.freeze"), []byte("0"), 0); err != nil {
			errs = append(errs, fmt.Errorf("thaw %s: %w", fz.dir, err))
		}
		return errors.Join(errs...)
	}
	return fz.remove()
}

// kill sends SIGKILL to every frozen task (a fatal signal wakes a task
// frozen by the v2 freezer), calls killed, and removes the cgroup once it
// is empty.
func (fz *freezer) kill(killed func()) error {
	var errs []error
	for _, pid := range fz.order {
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("kill pid %d: %w", pid, err))
		}
	}
	killed()
	if err := os.WriteFile(filepath.Join(fz.dir, "cgroup.freeze"), []byte("0"), 0); err != nil {
		errs = append(errs, fmt.Errorf("thaw %s: %w", fz.dir, err))
	}
	if err := fz.remove(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// remove deletes the temporary cgroup, retrying while exiting tasks still
// populate it, until the deadline (at least a second from now).
func (fz *freezer) remove() error {
	deadline := fz.deadline
	if d := time.Now().Add(time.Second); d.After(deadline) {
		deadline = d
	}
	for sleep := 20 * time.Microsecond; ; sleep = min(2*sleep, 5*time.Millisecond) {
		err := unix.Rmdir(fz.dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", fz.dir, err)
		}
		time.Sleep(sleep)
	}
}
