package restore_test

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"golang.org/x/sys/unix"
)

// The expected state of a restored tree, written down independently of the
// images (from each fixture's EXPECTED.md, or from what a synthetic test
// built), and checked from outside the tasks.

type wantTask struct {
	pid, ppid, pgid, sid uint32 // image pids; ppid 0 for the root
}

// ref is one fd of one task, by image pid.
type ref struct {
	task uint32
	fd   int
}

func (r ref) String() string { return fmt.Sprintf("task %d fd %d", r.task, r.fd) }

type wantFD struct {
	ref
	status  int    // flags & fdcheck.StatusMask
	cloexec bool   // FD_CLOEXEC
	pos     int64  // file offset; -1: not checked
	desc    string // fds with equal desc share one description (kcmp), others don't
	obj     string // fds with equal obj have the same inode, others don't
	target  string // readlink of /proc/PID/fd/N; a trailing '*' matches a prefix
}

type wantPipe struct {
	obj  string
	read ref // a read side to check size and data on
	size int
	data []byte
	// empty lists other read sides of the same pipe that must show
	// nothing queued once data has been read (no duplicated data).
	empty []ref
}

type wantTree struct {
	tasks []wantTask
	fds   []wantFD
	pipes []wantPipe
}

// checker resolves image pids through the restore's pid map.
type checker struct {
	t    testing.TB
	pids map[uint32]int
}

func (c *checker) pid(image uint32) int {
	c.t.Helper()
	p, ok := c.pids[image]
	if !ok {
		c.t.Fatalf("image pid %d is not in the pid map %v", image, c.pids)
	}
	return p
}

// getfd duplicates a restored fd into the test; closed at clean-up.
func (c *checker) getfd(r ref) int {
	c.t.Helper()
	fd, err := fdcheck.GetFD(c.pid(r.task), r.fd)
	if err != nil {
		c.t.Fatalf("%s: %v", r, err)
	}
	c.t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func (c *checker) info(r ref) fdcheck.FdInfo {
	c.t.Helper()
	fi, err := fdcheck.Info(c.pid(r.task), r.fd)
	if err != nil {
		c.t.Fatalf("%s: %v", r, err)
	}
	return fi
}

func (c *checker) same(a, b ref) bool {
	c.t.Helper()
	eq, err := fdcheck.SameDescription(c.pid(a.task), a.fd, c.pid(b.task), b.fd)
	if err != nil {
		c.t.Fatalf("%v", err)
	}
	return eq
}

// check verifies everything in w that does not change the tasks' state:
// the tree, the exact fd tables, flags, offsets, sharing, inodes, pipe
// sizes and queued byte counts. checkData then reads the queued data.
func (c *checker) check(w *wantTree) {
	t := c.t
	t.Helper()
	if len(c.pids) != len(w.tasks) {
		t.Errorf("pid map has %d tasks, want %d: %v", len(c.pids), len(w.tasks), c.pids)
	}
	self := os.Getpid()
	for _, wt := range w.tasks {
		pid := c.pid(wt.pid)
		st, err := fdcheck.ReadStat(pid)
		if err != nil {
			t.Errorf("task %d (pid %d): %v", wt.pid, pid, err)
			continue
		}
		wantPPid := self // the test process, or the CLI's orphan adopted by it
		if wt.ppid != 0 {
			wantPPid = c.pid(wt.ppid)
		}
		if st.State != 'T' {
			t.Errorf("task %d (pid %d): state %c, want T (stopped)", wt.pid, pid, st.State)
		}
		if st.PPid != wantPPid {
			t.Errorf("task %d (pid %d): ppid %d, want %d", wt.pid, pid, st.PPid, wantPPid)
		}
		if st.Pgrp != c.pid(wt.pgid) {
			t.Errorf("task %d (pid %d): pgid %d, want %d (image pgid %d)", wt.pid, pid, st.Pgrp, c.pid(wt.pgid), wt.pgid)
		}
		if st.Session != c.pid(wt.sid) {
			t.Errorf("task %d (pid %d): sid %d, want %d (image sid %d)", wt.pid, pid, st.Session, c.pid(wt.sid), wt.sid)
		}
		if exe := fdcheck.Exe(pid); exe != fdcheck.HelperExe {
			t.Errorf("task %d (pid %d): exe %q, want the helper memfd", wt.pid, pid, exe)
		}
		// Exactly the image's fds, nothing else.
		var want []int
		for _, f := range w.fds {
			if f.task == wt.pid {
				want = append(want, f.fd)
			}
		}
		slices.Sort(want)
		got, err := fdcheck.FDs(pid)
		if err != nil {
			t.Errorf("task %d: %v", wt.pid, err)
		} else if !slices.Equal(got, want) {
			var desc []string
			for _, fd := range got {
				tg, _ := fdcheck.Target(pid, fd)
				desc = append(desc, fmt.Sprintf("%d=%s", fd, tg))
			}
			t.Errorf("task %d (pid %d): fds %v, want %v (%s)", wt.pid, pid, got, want, strings.Join(desc, " "))
		}
	}
	type ino struct{ dev, ino uint64 }
	inos := make([]ino, len(w.fds))
	for i, f := range w.fds {
		fi := c.info(f.ref)
		if fi.Status() != f.status {
			t.Errorf("%s: flags %#o (masked %#o), want %#o", f.ref, fi.Flags, fi.Status(), f.status)
		}
		if fi.Cloexec() != f.cloexec {
			t.Errorf("%s: FD_CLOEXEC %v, want %v", f.ref, fi.Cloexec(), f.cloexec)
		}
		if f.pos >= 0 && fi.Pos != f.pos {
			t.Errorf("%s: offset %d, want %d", f.ref, fi.Pos, f.pos)
		}
		tg, err := fdcheck.Target(c.pid(f.task), f.fd)
		if err != nil {
			t.Errorf("%s: %v", f.ref, err)
		} else if p, ok := strings.CutSuffix(f.target, "*"); ok && !strings.HasPrefix(tg, p) || !ok && tg != f.target {
			t.Errorf("%s: refers to %q, want %q", f.ref, tg, f.target)
		}
		dev, in, _, err := fdcheck.Inode(c.getfd(f.ref))
		if err != nil {
			t.Fatalf("%s: fstat: %v", f.ref, err)
		}
		inos[i] = ino{dev, in}
	}
	// Sharing and identity, pair by pair.
	for i := range w.fds {
		for j := i + 1; j < len(w.fds); j++ {
			a, b := w.fds[i], w.fds[j]
			if same := c.same(a.ref, b.ref); same != (a.desc == b.desc) {
				t.Errorf("kcmp(KCMP_FILE) %s vs %s: same description %v, want %v (%s vs %s)", a.ref, b.ref, same, !same, a.desc, b.desc)
			}
			if same := inos[i] == inos[j]; same != (a.obj == b.obj) {
				t.Errorf("inode of %s (%v) vs %s (%v): same %v, want %v (%s vs %s)", a.ref, inos[i], b.ref, inos[j], same, !same, a.obj, b.obj)
			}
		}
	}
	for _, p := range w.pipes {
		fd := c.getfd(p.read)
		if sz, err := fdcheck.PipeSize(fd); err != nil || sz != p.size {
			t.Errorf("pipe %s (%s): F_GETPIPE_SZ %d (%v), want %d", p.obj, p.read, sz, err, p.size)
		}
		if n, err := fdcheck.Queued(fd); err != nil || n != len(p.data) {
			t.Errorf("pipe %s (%s): FIONREAD %d (%v), want %d", p.obj, p.read, n, err, len(p.data))
		}
	}
}

// checkData reads every pipe's queued bytes (consuming them) and compares
// them with the expected ones.
func (c *checker) checkData(w *wantTree) {
	t := c.t
	t.Helper()
	for _, p := range w.pipes {
		fd := c.getfd(p.read)
		got, err := fdcheck.ReadQueued(fd, len(p.data))
		if err != nil {
			t.Errorf("pipe %s (%s): read queued data: %v", p.obj, p.read, err)
		}
		if !bytes.Equal(got, p.data) {
			t.Errorf("pipe %s (%s): queued %q, want %q", p.obj, p.read, trunc(got), trunc(p.data))
		}
		if n, err := fdcheck.Queued(fd); err != nil || n != 0 {
			t.Errorf("pipe %s (%s): %d bytes (%v) left after the expected data", p.obj, p.read, n, err)
		}
		for _, r := range p.empty {
			if n, err := fdcheck.Queued(c.getfd(r)); err != nil || n != 0 {
				t.Errorf("pipe %s (%s): %d bytes (%v) queued after reading %s: data duplicated", p.obj, r, n, err, p.read)
			}
		}
	}
}

func trunc(b []byte) []byte {
	if len(b) > 64 {
		return append(b[:64:64], "..."...)
	}
	return b
}

// getfl and setfl act on a restored fd's description through a duplicate.
func (c *checker) getfl(r ref) int {
	c.t.Helper()
	fl, err := unix.FcntlInt(uintptr(c.getfd(r)), unix.F_GETFL, 0)
	if err != nil {
		c.t.Fatalf("%s: F_GETFL: %v", r, err)
	}
	return fl
}

func (c *checker) setfl(r ref, fl int) {
	c.t.Helper()
	if _, err := unix.FcntlInt(uintptr(c.getfd(r)), unix.F_SETFL, fl); err != nil {
		c.t.Fatalf("%s: F_SETFL: %v", r, err)
	}
}

func (c *checker) write(r ref, data string) {
	c.t.Helper()
	if n, err := unix.Write(c.getfd(r), []byte(data)); err != nil || n != len(data) {
		c.t.Fatalf("%s: write %q: %d, %v", r, data, n, err)
	}
}

func (c *checker) queued(r ref) int {
	c.t.Helper()
	n, err := fdcheck.Queued(c.getfd(r))
	if err != nil {
		c.t.Fatalf("%s: FIONREAD: %v", r, err)
	}
	return n
}

func (c *checker) read(r ref, n int) string {
	c.t.Helper()
	b := make([]byte, n)
	got, err := unix.Read(c.getfd(r), b)
	if err != nil {
		c.t.Fatalf("%s: read: %v", r, err)
	}
	return string(b[:got])
}
