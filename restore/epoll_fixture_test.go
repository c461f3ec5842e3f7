package restore_test

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/files/epoll"
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
)

// planFixture plans a CRIU fixture and returns the plan, even when it
// lists unsupported objects.
func planFixture(t *testing.T, name string) *restore.Plan {
	t.Helper()
	set, err := images.Load(fixtureDir(t, name))
	if err != nil {
		t.Fatal(err)
	}
	p, err := restore.NewPlan(set, restore.PlanOptions{})
	if err != nil {
		t.Fatalf("plan %s: %v", name, err)
	}
	return p
}

// skipUnlessSupported skips the restore half of a fixture test while the
// plan lists objects of types other branches restore (unix sockets,
// ttys); anything else unsupported fails the test.
func skipUnlessSupported(t *testing.T, p *restore.Plan) {
	t.Helper()
	if len(p.Unsupported) == 0 {
		return
	}
	for _, u := range p.Unsupported {
		if !strings.Contains(u, "type UNIXSK is not supported") && !strings.Contains(u, "type TTY is not supported") {
			t.Fatalf("unsupported: %v", p.Unsupported)
		}
	}
	t.Skipf("the restore needs unix sockets or ttys, not restored on this branch yet: %v", p.Unsupported)
}

// regsOf returns the registrations the plan gives to epoll file id, and
// the task that makes them.
func regsOf(t *testing.T, p *restore.Plan, id uint32) (epoll.RegParams, int) {
	t.Helper()
	for _, o := range p.Objects {
		if o.Spec.Type != epoll.RegType {
			continue
		}
		var rp epoll.RegParams
		if err := files.DecodeData(o.Spec.Data, &rp); err != nil {
			t.Fatal(err)
		}
		if rp.Epoll == id {
			return rp, o.Creator
		}
	}
	t.Fatalf("no registrations planned for epoll file id %d", id)
	return epoll.RegParams{}, 0
}

// kcmpEpollTarget reports whether the file at fd of pid is the target of
// registration (efd, tfd, toff 0) in pid (kcmp KCMP_EPOLL_TFD).
func kcmpEpollTarget(t *testing.T, pid, fd, efd, tfd int) bool {
	t.Helper()
	slot := [3]uint32{uint32(efd), uint32(tfd), 0}
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(pid), 7, uintptr(fd), uintptr(unsafe.Pointer(&slot)), 0)
	runtime.KeepAlive(&slot)
	if e != 0 {
		t.Errorf("kcmp(KCMP_EPOLL_TFD) pid %d fd %d, epoll %d tfd %d: %v", pid, fd, efd, tfd, e)
		return false
	}
	return r == 0
}

// TestEpollFixture restores CRIU's epoll fixture and checks every fact of
// its EXPECTED.md from outside the stopped task: the fd table, the
// registrations in fdinfo (and with kcmp, that each one is the file at its
// tfd), what epoll_wait reports on both sets, and the eventfd counter.
// The plan half runs everywhere; the restore half needs unix sockets.
func TestEpollFixture(t *testing.T) {
	p := planFixture(t, "epoll")
	// Files: 6 = E1 (fd 3), 7/11 = pipe (4, 8), 8/12 = socketpair (5, 9),
	// 9 = eventfd (6), 10 = E2 (fd 7).
	rp, c := regsOf(t, p, 6)
	want := []epoll.Reg{
		{Target: 7, Tfd: 4, Events: 0x19, Data: 0x1111, Mode: epoll.ModeAt},
		{Target: 8, Tfd: 5, Events: 0x8000001d, Data: 0x2222, Mode: epoll.ModeAt},
		{Target: 9, Tfd: 6, Events: 0x19, Data: 0x3333, Mode: epoll.ModeAt},
	}
	// CRIU writes them in the kernel's order (by file, then fd).
	slices.SortFunc(rp.Regs, func(a, b epoll.Reg) int { return int(a.Tfd) - int(b.Tfd) })
	if c != 0 || len(rp.Regs) != len(want) {
		t.Fatalf("E1 registrations %+v by task index %d, want %+v by task 0", rp.Regs, c, want)
	}
	for i := range want {
		if rp.Regs[i] != want[i] {
			t.Errorf("E1 registration %d: %+v, want %+v", i, rp.Regs[i], want[i])
		}
	}
	if rp, _ := regsOf(t, p, 10); len(rp.Regs) != 1 || rp.Regs[0] != (epoll.Reg{Target: 6, Tfd: 3, Events: 0x19, Data: 0x4444, Mode: epoll.ModeAt}) {
		t.Errorf("E2 registrations %+v, want E1 at tfd 3, events 0x19, data 0x4444", rp.Regs)
	}

	needRoot(t)
	skipUnlessSupported(t, p)
	res := runStop(t, fixtureDir(t, "epoll"))
	pid := res.PidMap[2]
	fds, err := fdcheck.FDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(fds) != 10 {
		t.Errorf("fds %v, want 0-9", fds)
	}
	for fd, tw := range map[int][2]any{
		0: {"/dev/null", rdonly}, 1: {"/dev/null", wronly}, 2: {"/dev/null", wronly},
		3: {"anon_inode:[eventpoll]", rdwr}, 4: {"pipe:[", rdonly}, 5: {"socket:[", rdwr},
		6: {"anon_inode:[eventfd]", rdwr}, 7: {"anon_inode:[eventpoll]", rdwr}, 8: {"pipe:[", wronly}, 9: {"socket:[", rdwr},
	} {
		target, err := fdcheck.Target(pid, fd)
		if err != nil || !strings.HasPrefix(target, tw[0].(string)) {
			t.Errorf("fd %d is %q (%v), want %s", fd, target, err, tw[0])
			continue
		}
		fi, err := fdcheck.Info(pid, fd)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Cloexec() || fi.Flags&(unix.O_ACCMODE|unix.O_NONBLOCK) != tw[1].(int) {
			t.Errorf("fd %d flags %#o, want %#o without FD_CLOEXEC", fd, fi.Flags, tw[1])
		}
	}
	if v := fdinfoField(t, pid, 6, "eventfd-semaphore"); v != "0" {
		t.Errorf("eventfd semaphore %s, want 0", v)
	}
	// fdinfo: exactly these registrations.
	if got, want := epollRegs(t, pid, 3), []epReg{{4, 0x19, 0x1111}, {5, 0x8000001d, 0x2222}, {6, 0x19, 0x3333}}; !equalRegs(got, want) {
		t.Errorf("fdinfo 3: %+v, want %+v", got, want)
	}
	if got, want := epollRegs(t, pid, 7), []epReg{{3, 0x19, 0x4444}}; !equalRegs(got, want) {
		t.Errorf("fdinfo 7: %+v, want %+v", got, want)
	}
	for _, r := range [][3]int{{4, 3, 4}, {5, 3, 5}, {6, 3, 6}, {3, 7, 3}} {
		if !kcmpEpollTarget(t, pid, r[0], r[1], r[2]) {
			t.Errorf("the registration of tfd %d in epoll fd %d is not the file at fd %d", r[2], r[1], r[0])
		}
	}
	get := func(fd int) int {
		d, err := fdcheck.GetFD(pid, fd)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(d) })
		return d
	}
	if got := readyData(t, get(7)); len(got) != 1 || got[0x4444] != unix.EPOLLIN {
		t.Errorf("epoll_wait(7): %#x, want 0x4444 EPOLLIN", got)
	}
	if got := readyData(t, get(3)); len(got) != 2 || got[0x2222] != unix.EPOLLOUT || got[0x3333] != unix.EPOLLIN {
		t.Errorf("epoll_wait(3): %#x, want 0x2222 EPOLLOUT and 0x3333 EPOLLIN, not 0x1111", got)
	}
	var b [8]byte
	if n, err := unix.Read(get(6), b[:]); n != 8 || err != nil || b != [8]byte{5} {
		t.Errorf("read(6): %d bytes %v (%v), want the counter 5", n, b, err)
	}
}

func equalRegs(a, b []epReg) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestEpollFixtureMixed checks the epoll part of CRIU's mixed fixture: pid
// 5's epoll (fd 6, FD_CLOEXEC) registers the socket at fd 5 with events
// 0x2019 and data 0xc3c3, and epoll_wait reports 0xc3c3 EPOLLIN (the
// socket holds "req:1"). The plan half runs everywhere; the restore half
// needs unix sockets and ttys.
func TestEpollFixtureMixed(t *testing.T) {
	p := planFixture(t, "mixed")
	var id uint32
	for _, fd := range p.Set.TaskByPid[5].Fds.Fds {
		if fd.Num == 6 {
			id = fd.File.ID
		}
	}
	rp, c := regsOf(t, p, id)
	if p.Set.Tasks[c].Pid != 5 || len(rp.Regs) != 1 || rp.Regs[0].Tfd != 5 || rp.Regs[0].Events != 0x2019 || rp.Regs[0].Data != 0xc3c3 || rp.Regs[0].Mode != epoll.ModeAt ||
		rp.Regs[0].Target != p.Set.TaskByPid[5].Fds.Lookup(5).File.ID {
		t.Errorf("registrations %+v by pid %d, want the socket at fd 5, events 0x2019, data 0xc3c3, by pid 5", rp.Regs, p.Set.Tasks[c].Pid)
	}

	needRoot(t)
	skipUnlessSupported(t, p)
	unlock, err := fdcheck.LockFixtures(filepath.Dir(fixtureDir(t, "mixed")), 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	dir := mkFixtureDir(t, "mixed")
	if err := os.WriteFile(filepath.Join(dir, "shared.log"), []byte("mixed:root\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// mixed holds pty 0: restore it with a devpts of its own, never at
	// the host's index 0.
	pids := runCLIStopPts(t, fixtureDir(t, "mixed"))
	pid := pids[5]
	if fi, err := fdcheck.Info(pid, 6); err != nil || !fi.Cloexec() {
		t.Errorf("pid 5 fd 6: FD_CLOEXEC not set (%v)", err)
	}
	if got, want := epollRegs(t, pid, 6), []epReg{{5, 0x2019, 0xc3c3}}; !equalRegs(got, want) {
		t.Errorf("pid 5 fdinfo 6: %+v, want %+v", got, want)
	}
	if !kcmpEpollTarget(t, pid, 5, 6, 5) {
		t.Errorf("pid 5: the registration is not the socket at fd 5")
	}
	d, err := fdcheck.GetFD(pid, 6)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(d)
	if got := readyData(t, d); len(got) != 1 || got[0xc3c3] != unix.EPOLLIN {
		t.Errorf("epoll_wait on pid 5 fd 6: %#x, want 0xc3c3 EPOLLIN", got)
	}
}
