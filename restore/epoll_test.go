package restore_test

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

func (b *imgBuilder) newFile(typ criupb.FdTypes, fill func(id uint32, fe *criupb.FileEntry)) uint32 {
	id := b.nextID
	b.nextID++
	fe := &criupb.FileEntry{Type: typ.Enum(), Id: proto.Uint32(id)}
	fill(id, fe)
	b.files = append(b.files, fe)
	b.types[id] = typ
	return id
}

func (b *imgBuilder) eventfd(counter uint64, flags uint32, sem bool) uint32 {
	return b.newFile(criupb.FdTypes_EVENTFD, func(id uint32, fe *criupb.FileEntry) {
		fe.Efd = &criupb.EventfdFileEntry{Id: proto.Uint32(id), Flags: proto.Uint32(unix.O_RDWR | flags), Fown: noFown(), Counter: proto.Uint64(counter)}
		if sem {
			fe.Efd.Semaphore = proto.Bool(true)
		}
	})
}

func (b *imgBuilder) signalfd(mask uint64, flags uint32) uint32 {
	return b.newFile(criupb.FdTypes_SIGNALFD, func(id uint32, fe *criupb.FileEntry) {
		fe.Sgfd = &criupb.SignalfdEntry{Id: proto.Uint32(id), Flags: proto.Uint32(unix.O_RDWR | flags), Fown: noFown(), Sigmask: proto.Uint64(mask)}
	})
}

type tfdTimes struct {
	clock, sflags uint32
	ticks         uint64
	vsec, vnsec   uint64
	isec, insec   uint64
	flags         uint32
}

func (b *imgBuilder) timerfd(tt tfdTimes) uint32 {
	return b.newFile(criupb.FdTypes_TIMERFD, func(id uint32, fe *criupb.FileEntry) {
		fe.Tfd = &criupb.TimerfdEntry{Id: proto.Uint32(id), Flags: proto.Uint32(unix.O_RDWR | tt.flags), Fown: noFown(),
			Clockid: proto.Uint32(tt.clock), Ticks: proto.Uint64(tt.ticks), SettimeFlags: proto.Uint32(tt.sflags),
			Vsec: proto.Uint64(tt.vsec), Vnsec: proto.Uint64(tt.vnsec), Isec: proto.Uint64(tt.isec), Insec: proto.Uint64(tt.insec)}
	})
}

// epReg is one registration: as written in the images and as
// /proc/PID/fdinfo shows it.
type epReg struct {
	tfd    uint32
	events uint32
	data   uint64
}

func (b *imgBuilder) epoll(flags uint32, regs ...epReg) uint32 {
	return b.newFile(criupb.FdTypes_EVENTPOLL, func(id uint32, fe *criupb.FileEntry) {
		fe.Epfd = &criupb.EventpollFileEntry{Id: proto.Uint32(id), Flags: proto.Uint32(unix.O_RDWR | flags), Fown: noFown()}
		for _, r := range regs {
			fe.Epfd.Tfd = append(fe.Epfd.Tfd, &criupb.EventpollTfdEntry{Id: proto.Uint32(id), Tfd: proto.Uint32(r.tfd), Events: proto.Uint32(r.events), Data: proto.Uint64(r.data)})
		}
	})
}

var tfdLine = regexp.MustCompile(`^tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)`)

// epollRegs parses the registrations of an epoll fd from fdinfo, sorted by
// data.
func epollRegs(t testing.TB, pid, fd int) []epReg {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	var out []epReg
	for _, line := range strings.Split(string(b), "\n") {
		m := tfdLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n, _ := strconv.ParseUint(m[1], 10, 32)
		ev, _ := strconv.ParseUint(m[2], 16, 32)
		d, _ := strconv.ParseUint(m[3], 16, 64)
		out = append(out, epReg{uint32(n), uint32(ev), d})
	}
	slices.SortFunc(out, func(a, b epReg) int { return int(a.data) - int(b.data) })
	return out
}

// fdinfoField returns the value of one "key:" line of pid's fdinfo of fd.
func fdinfoField(t testing.TB, pid, fd int, key string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("/proc/%d/fdinfo/%d has no %q line:\n%s", pid, fd, key, b)
	return ""
}

// readyData returns the data of the ready registrations of epoll fd (a
// duplicate in this process), sorted, with their events.
func readyData(t testing.TB, fd int) map[uint64]uint32 {
	t.Helper()
	evs := make([]unix.EpollEvent, 16)
	n, err := unix.EpollWait(fd, evs, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]uint32{}
	for _, e := range evs[:n] {
		out[uint64(uint32(e.Fd))|uint64(uint32(e.Pad))<<32] = e.Events
	}
	return out
}

// timespecField parses "(sec, nsec)" from a timerfd fdinfo line.
func timespecField(t testing.TB, s string) time.Duration {
	t.Helper()
	var sec, nsec int64
	if _, err := fmt.Sscanf(s, "(%d, %d)", &sec, &nsec); err != nil {
		t.Fatalf("timespec %q: %v", s, err)
	}
	return time.Duration(sec)*time.Second + time.Duration(nsec)
}

const (
	epIn      = unix.EPOLLIN
	epOut     = unix.EPOLLOUT
	epErrHup  = unix.EPOLLERR | unix.EPOLLHUP
	epET      = 1 << 31
	epOneShot = unix.EPOLLONESHOT
)

func sigBit(s unix.Signal) uint64 { return 1 << (uint(s) - 1) }

func mustInfo(t testing.TB, pid, fd int) fdcheck.FdInfo {
	t.Helper()
	fi, err := fdcheck.Info(pid, fd)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// TestEpollEventfdSignalfdTimerfd restores two tasks holding every kind
// of epoll registration, eventfds, a signalfd and timerfds, and checks
// them from outside: fdinfo of every fd, epoll_wait and read on
// duplicates taken with pidfd_getfd.
func TestEpollEventfdSignalfdTimerfd(t *testing.T) {
	needRoot(t)
	b := newImgBuilder()
	// Root pid 20 dumped everything; child pid 10 shares epoll E3 and,
	// having the lower pid, creates it.
	a := b.task(20, 0, 20, 20)
	c := b.task(10, 20, 20, 20)
	r1, w1 := b.pipe([]byte("x"), 0, 0, 0)
	_, w2 := b.pipe(nil, 0, 0, 0)
	ev := b.eventfd(7, unix.O_NONBLOCK, true)
	ev2 := b.eventfd(1<<40, 0, false)
	sg := b.signalfd(sigBit(unix.SIGUSR1)|sigBit(unix.SIGUSR2), unix.O_NONBLOCK)
	tRel := b.timerfd(tfdTimes{clock: unix.CLOCK_MONOTONIC, vsec: 100})
	tAbs := b.timerfd(tfdTimes{clock: unix.CLOCK_REALTIME, sflags: unix.TFD_TIMER_ABSTIME | unix.TFD_TIMER_CANCEL_ON_SET, vsec: 50, vnsec: 5})
	tPer := b.timerfd(tfdTimes{clock: unix.CLOCK_BOOTTIME, ticks: 3, isec: 2, insec: 500, flags: unix.O_NONBLOCK})
	tAlarm := b.timerfd(tfdTimes{clock: unix.CLOCK_REALTIME_ALARM, sflags: unix.TFD_TIMER_ABSTIME, vsec: 70})
	e1 := b.epoll(0,
		epReg{3, epIn | epErrHup, 0x1111},
		epReg{5, epIn | epErrHup | epET, 0x2222},
		epReg{7, epIn | epErrHup, 0x3333},
		epReg{8, epIn | epErrHup, 0x6666},
		epReg{13, epIn | epErrHup | unix.EPOLLEXCLUSIVE, 0x7777},
	)
	e2 := b.epoll(unix.O_NONBLOCK,
		epReg{11, epIn | epErrHup, 0x4444},
		epReg{4, epOut | epErrHup | epOneShot, 0x5555},
	)
	e3 := b.epoll(0,
		epReg{5, epIn | epErrHup, 0x8888},
		epReg{3, epIn | epErrHup, 0x9999},
	)
	// E4's targets are found by inode (pipe 900001, of which the root
	// holds only the write end, at 13): tfd 30 is not open in the root,
	// tfd 4 holds another pipe there.
	e4 := b.epoll(0,
		epReg{30, epOut | epErrHup, 0xaaaa},
		epReg{4, epOut | epErrHup, 0xbbbb},
	)
	for _, r := range b.files[len(b.files)-1].Epfd.Tfd {
		r.Inode = proto.Uint64(900001)
	}
	a.fd(3, r1, false).fd(4, w1, false).fd(5, ev, false).fd(6, ev2, true).fd(7, sg, false).
		fd(8, tRel, false).fd(9, tAbs, false).fd(10, tPer, false).fd(11, e1, true).fd(12, e2, false).
		fd(13, w2, false).fd(14, e3, false).fd(15, e4, false).fd(16, tAlarm, false)
	// The child creates E3 (lower pid) and holds other files at 3 and
	// 30; the root, which dumped E3, registers its targets.
	c.fd(3, w2, false).fd(14, e3, false).fd(15, e4, false).fd(30, w2, false)
	dir := b.write(t)

	p := loadPlan(t, dir)
	for _, want := range []string{"was registered as fd 4, which holds", "was registered as fd 30, above task 20's highest fd"} {
		warned := false
		for _, w := range p.Warnings {
			warned = warned || strings.Contains(w, want)
		}
		if !warned {
			t.Errorf("no plan warning %q: %q", want, p.Warnings)
		}
	}
	start := time.Now()
	res := runStop(t, dir)
	elapsed := time.Since(start)
	pa, pc := res.PidMap[20], res.PidMap[10]
	get := func(pid, fd int) int {
		t.Helper()
		d, err := fdcheck.GetFD(pid, fd)
		if err != nil {
			t.Fatalf("pidfd_getfd pid %d fd %d: %v", pid, fd, err)
		}
		t.Cleanup(func() { unix.Close(d) })
		return d
	}

	// Registrations as fdinfo shows them.
	wantRegs := func(name string, pid, fd int, want []epReg) {
		t.Helper()
		if got := epollRegs(t, pid, fd); !slices.Equal(got, want) {
			t.Errorf("%s (pid %d fd %d) registrations %+v, want %+v", name, pid, fd, got, want)
		}
	}
	wantRegs("E1", pa, 11, []epReg{
		{3, epIn | epErrHup, 0x1111}, {5, epIn | epErrHup | epET, 0x2222}, {7, epIn | epErrHup, 0x3333},
		{8, epIn | epErrHup, 0x6666}, {13, epIn | epErrHup | unix.EPOLLEXCLUSIVE, 0x7777},
	})
	wantRegs("E2", pa, 12, []epReg{{11, epIn | epErrHup, 0x4444}, {4, epOut | epErrHup | epOneShot, 0x5555}})
	wantRegs("E3", pc, 14, []epReg{{5, epIn | epErrHup, 0x8888}, {3, epIn | epErrHup, 0x9999}})
	wantRegs("E3", pa, 14, []epReg{{5, epIn | epErrHup, 0x8888}, {3, epIn | epErrHup, 0x9999}})
	// E4: through a temporary duplicate at the free 30, and through 13
	// where 4 holds another file.
	wantRegs("E4", pa, 15, []epReg{{30, epOut | epErrHup, 0xaaaa}, {13, epOut | epErrHup, 0xbbbb}})
	if _, err := fdcheck.Target(pa, 30); err == nil {
		t.Errorf("pid 20 fd 30 is open: the temporary duplicate stayed")
	}
	if same, err := fdcheck.SameDescription(pa, 14, pc, 14); err != nil || !same {
		t.Errorf("E3: pid 20 fd 14 and pid 10 fd 14 are not one description (%v)", err)
	}
	// fd flags and status flags.
	if fi := mustInfo(t, pa, 11); !fi.Cloexec() || fi.Flags&unix.O_NONBLOCK != 0 {
		t.Errorf("E1 flags %#o, want FD_CLOEXEC and no status flag", fi.Flags)
	}
	if fi := mustInfo(t, pa, 12); fi.Cloexec() || fi.Flags&unix.O_NONBLOCK == 0 {
		t.Errorf("E2 flags %#o, want O_NONBLOCK, no FD_CLOEXEC", fi.Flags)
	}

	// What is ready: the pipe holds a byte, the eventfd counts, the
	// write end of a pipe no one reads reports EPOLLERR, E1 is ready (so
	// E2 reports it), the pipe is writable; the signalfd and the timers
	// are not.
	if got := readyData(t, get(pa, 11)); !(len(got) == 3 && got[0x1111] == epIn && got[0x2222] == epIn && got[0x7777] == unix.EPOLLERR) {
		t.Errorf("epoll_wait on E1: %#x, want 0x1111 and 0x2222 with EPOLLIN, 0x7777 with EPOLLERR", got)
	}
	if got := readyData(t, get(pa, 12)); !(len(got) == 2 && got[0x4444] == epIn && got[0x5555] == epOut) {
		t.Errorf("epoll_wait on E2: %#x, want 0x4444 EPOLLIN and 0x5555 EPOLLOUT", got)
	}
	// EPOLLONESHOT: reported once, then disarmed.
	if got := readyData(t, get(pa, 12)); got[0x5555] != 0 {
		t.Errorf("EPOLLONESHOT registration 0x5555 reported twice")
	}

	// eventfds.
	// fdinfo shows the count in hex.
	if v := fdinfoField(t, pa, 5, "eventfd-count"); v != "7" {
		t.Errorf("eventfd fd 5 count %s, want 7", v)
	}
	if v := fdinfoField(t, pa, 5, "eventfd-semaphore"); v != "1" {
		t.Errorf("eventfd fd 5 semaphore %s, want 1", v)
	}
	if fi := mustInfo(t, pa, 5); fi.Flags&unix.O_NONBLOCK == 0 {
		t.Errorf("eventfd fd 5 flags %#o, want O_NONBLOCK", fi.Flags)
	}
	if v := fdinfoField(t, pa, 6, "eventfd-count"); v != strconv.FormatUint(1<<40, 16) {
		t.Errorf("eventfd fd 6 count %s, want %d", v, uint64(1)<<40)
	}
	if v := fdinfoField(t, pa, 6, "eventfd-semaphore"); v != "0" {
		t.Errorf("eventfd fd 6 semaphore %s, want 0", v)
	}
	var buf [8]byte
	if n, err := unix.Read(get(pa, 5), buf[:]); n != 8 || err != nil || buf[0] != 1 {
		t.Errorf("read eventfd fd 5 (semaphore): %v %v %v, want 1", n, err, buf)
	} else if v := fdinfoField(t, pa, 5, "eventfd-count"); v != "6" {
		t.Errorf("eventfd fd 5 count %s after one read, want 6", v)
	}

	// signalfd.
	if v := fdinfoField(t, pa, 7, "sigmask"); v != fmt.Sprintf("%016x", sigBit(unix.SIGUSR1)|sigBit(unix.SIGUSR2)) {
		t.Errorf("signalfd sigmask %s", v)
	}
	if fi := mustInfo(t, pa, 7); fi.Flags&unix.O_NONBLOCK == 0 {
		t.Errorf("signalfd flags %#o, want O_NONBLOCK", fi.Flags)
	}

	// timerfds: the time left counts from the restore, it is not reset.
	since := time.Since(start)
	checkTimer := func(fd int, clock, sflags string, value, interval time.Duration, ticks string) {
		t.Helper()
		if v := fdinfoField(t, pa, fd, "clockid"); v != clock {
			t.Errorf("timerfd fd %d clockid %s, want %s", fd, v, clock)
		}
		if v := fdinfoField(t, pa, fd, "settime flags"); v != sflags {
			t.Errorf("timerfd fd %d settime flags %s, want %s", fd, v, sflags)
		}
		if v := fdinfoField(t, pa, fd, "ticks"); v != ticks {
			t.Errorf("timerfd fd %d ticks %s, want %s", fd, v, ticks)
		}
		left := timespecField(t, fdinfoField(t, pa, fd, "it_value"))
		if left > value || left < value-since-time.Second {
			t.Errorf("timerfd fd %d: %v left, want %v less the %v since the restore started", fd, left, value, since)
		}
		if iv := timespecField(t, fdinfoField(t, pa, fd, "it_interval")); iv != interval {
			t.Errorf("timerfd fd %d interval %v, want %v", fd, iv, interval)
		}
	}
	checkTimer(8, "1", "00", 100*time.Second, 0, "0")
	checkTimer(9, "0", "03", 50*time.Second+5, 0, "0")
	checkTimer(10, "7", "00", 2*time.Second+500, 2*time.Second+500, "3")
	checkTimer(16, "8", "01", 70*time.Second, 0, "0") // needs CAP_WAKE_ALARM
	if n, err := unix.Read(get(pa, 10), buf[:]); n != 8 || err != nil || buf[0] != 3 {
		t.Errorf("read periodic timerfd: %v %v %v, want 3 expirations", n, err, buf)
	}
	t.Logf("restore took %v", elapsed)
}

// TestEpollTargetByInode plans epolls whose recorded tfd holds another
// file than the registration's inode: the target is found by inode, or
// the plan fails naming the entry when it cannot be.
func TestEpollTargetByInode(t *testing.T) {
	build := func(inode uint64, extra bool) string {
		b := newImgBuilder()
		a := b.task(1, 0, 1, 1)
		r1, w1 := b.pipe(nil, 0, 0, 0)
		r2, w2 := b.pipe(nil, 0, 0, 0) // pipe_id 900001
		ep := b.epoll(0, epReg{3, epIn, 0xabc})
		b.files[len(b.files)-1].Epfd.Tfd[0].Inode = proto.Uint64(inode)
		a.fd(3, r1, false).fd(4, w1, false).fd(6, r2, false).fd(7, ep, false)
		if extra {
			a.fd(8, w2, false) // a second file of inode 900001
		}
		return b.write(t)
	}
	// Inode 900001 is the pipe at fd 6, not the one at fd 3.
	p := loadPlan(t, build(900001, false))
	found := false
	for _, o := range p.Objects {
		if o.Spec.Type == "epoll-reg" {
			found = slices.Contains(o.Spec.Needs, 3) // file id of r2
		}
	}
	if !found {
		t.Errorf("registration does not wait for the pipe of inode 900001 (file id 3)")
	}
	// No fd refers to inode 12345: a plan error naming the field.
	set := loadSet(t, build(12345, false))
	if _, err := restore.NewPlan(set, restore.PlanOptions{}); err == nil || !strings.Contains(err.Error(), "epfd.tfd[0]") || !strings.Contains(err.Error(), "inode 12345") {
		t.Errorf("plan with an unknown target inode: %v", err)
	}
	// Both ends of pipe 900001 are open: the target is ambiguous.
	set = loadSet(t, build(900001, true))
	if _, err := restore.NewPlan(set, restore.PlanOptions{}); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("plan with an ambiguous target inode: %v", err)
	}
	// The inode recorded matches the file at the number: no search.
	p = loadPlan(t, build(900000, true))
	for _, o := range p.Objects {
		if o.Spec.Type == "epoll-reg" && !slices.Contains(o.Spec.Needs, 1) {
			t.Errorf("registration does not wait for the pipe at fd 3: needs %v", o.Spec.Needs)
		}
	}
}

func loadSet(t testing.TB, dir string) *images.Set {
	t.Helper()
	set, err := images.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// TestEpollManyTargets restores an epoll set with 3,000 registrations of
// eventfds: the child (lower pid) creates the set and half of the
// eventfds, the root, which dumped the set, registers them all. fdinfo
// shows every one.
func TestEpollManyTargets(t *testing.T) {
	needRoot(t)
	const n = 3000
	b := newImgBuilder()
	a := b.task(20, 0, 20, 20)
	c := b.task(10, 20, 20, 20)
	var regs []epReg
	ids := make([]uint32, n)
	for i := range ids {
		ids[i] = b.eventfd(uint64(i), 0, false)
		regs = append(regs, epReg{uint32(10 + i), epIn | epErrHup, uint64(i)})
	}
	ep := b.epoll(0, regs...)
	for i, id := range ids {
		a.fd(uint32(10+i), id, false)
		if i%2 == 0 {
			c.fd(uint32(10+i), id, false)
		}
	}
	a.fd(5, ep, false)
	c.fd(5, ep, false)
	dir := b.write(t)
	start := time.Now()
	res := runStop(t, dir)
	t.Logf("restored %d registrations in %v", n, time.Since(start))
	got := epollRegs(t, res.PidMap[10], 5)
	if !slices.Equal(got, epollRegs(t, res.PidMap[20], 5)) {
		t.Errorf("the root and the child show different registrations")
	}
	if len(got) != n {
		t.Fatalf("%d registrations, want %d", len(got), n)
	}
	for i, r := range got {
		if r != regs[i] {
			t.Fatalf("registration %d: %+v, want %+v", i, r, regs[i])
		}
	}
}

// TestEpollTargetMissingInDumper plans an epoll shared by two tasks whose
// tfd is open only in the second: the number means nothing in the first
// holder (the task that dumped the epoll), so the target is found there by
// inode, or the plan fails naming the field.
func TestEpollTargetMissingInDumper(t *testing.T) {
	build := func(rootHolds bool, inode uint64) string {
		b := newImgBuilder()
		a := b.task(1, 0, 1, 1)
		c := b.task(2, 1, 1, 1)
		r, w := b.pipe(nil, 0, 0, 0) // pipe_id 900000
		ep := b.epoll(0, epReg{9, epIn, 0x9})
		b.files[len(b.files)-1].Epfd.Tfd[0].Inode = proto.Uint64(inode)
		a.fd(3, ep, false)
		c.fd(3, ep, false).fd(9, r, false).fd(10, w, false)
		if rootHolds {
			a.fd(5, r, false)
		}
		return b.write(t)
	}
	p := loadPlan(t, build(true, 900000))
	var regs int
	for _, o := range p.Objects {
		if o.Spec.Type == "epoll-reg" {
			regs++
			if !slices.Contains(o.Spec.Needs, 1) {
				t.Errorf("registration does not wait for the pipe's read end (file id 1): %v", o.Spec.Needs)
			}
		}
	}
	if regs != 1 {
		t.Errorf("%d registration objects, want 1", regs)
	}
	for _, tc := range []struct {
		rootHolds bool
		inode     uint64
		want      string
	}{
		{false, 900000, "no fd there refers to inode 900000"},
		{true, 0, "no inode is recorded"},
	} {
		_, err := restore.NewPlan(loadSet(t, build(tc.rootHolds, tc.inode)), restore.PlanOptions{})
		if err == nil || !strings.Contains(err.Error(), "epfd.tfd[0]") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("root holds the pipe %v, inode %d: %v, want an error with %q", tc.rootHolds, tc.inode, err, tc.want)
		}
	}
}
